"""etcdserverpb.Maintenance: Alarm, Status, Defragment, Hash, HashKV, Snapshot, MoveLeader,
each one or more native requests (SPEC sections 3 and 6).

How each maps, where it differs from etcd 3.4:
- ``Alarm``: GET -> ``alarm_list`` (etcd's filter: NONE = every type, else that type);
  ACTIVATE -> ``alarm_activate`` of that member id (any: etcd 3.4 keeps an alarm for
  whatever id it is given, 0 too) and type, through the log; the answer is that alarm,
  also when it was already active (etcd's). etcd also stores a NONE or unknown type (with
  no effect); we refuse those (InvalidArgument "etcdserver: alarm type ... cannot be
  activated"). DEACTIVATE -> ``alarm_disarm`` ``exact`` of that member (0 too) and type
  (type NONE or unknown disarms nothing, an empty answer, as etcd). Under auth ACTIVATE
  and DEACTIVATE are root's (etcd 3.4.42, 3.5.28 and 3.6.9 added that admin check;
  the 3.4.23 we compare with checks nothing).
  The AlarmResponse has no header, for every action: etcd 3.4's applier leaves it nil
  (`etcdctl -w json alarm list` prints no "header"; `-w fields` panics on it, ours too).
- ``Status``: ``status``. ``version`` is ETCD_VERSION, the etcd API version we serve (etcd
  clients parse it: clientv3's RejectOldCluster needs >= 3.2); ``errors`` as etcd's: "etcdserver:
  no leader" without a leader, then one line per alarm.
- ``Hash``: etcd hashes its whole bolt backend; we have no such file, so this is
  ``hash_kv`` at the current revision (every live key and value, the same on every member
  that applied that revision), its low 32 bits, header revision = the hashed revision.
- ``HashKV``: ``hash_kv`` {revision} (a negative one is the current one, as etcd's); the
  hash's low 32 bits, its compact revision (-1 when never compacted, etcd's), and the
  header's revision is the member's current revision, whatever revision was hashed
  (etcd's HashByRev returns its currentRev; for revision 0 that is the hashed one).
- ``Defragment``: ``defragment`` (our member serves meanwhile).
- ``Snapshot``: the chunks of a native ``snapshot`` save (serializable: like etcd, a member
  without a quorum can be backed up), one native request per chunk (SNAPSHOT_CHUNK
  bytes), each sent as a SnapshotResponse with ``remaining_bytes``. The stream is our
  snapshot file (SPEC section 6), which ends with the SHA-256 of every byte before it as
  etcd's stream does, its metadata padded (``EtcdSnapshot``) to the size etcd's client
  checks: ``etcdctl snapshot save`` writes a file ``qkvutl snapshot restore`` takes;
  ``etcdctl snapshot status/restore`` cannot read it (it is not a bolt database).
  Nothing more is read until the client took the last chunk (a client that takes more
  than 10 s over a chunk loses the save: the stream ends with the member's
  InvalidArgument "not being saved here"),
  so a slow reader holds one chunk; a client that goes away stops the save (the member
  drops it 10 s later).
- ``MoveLeader``: ``status`` then ``move_leader`` {target_id}; the member must lead
  ("etcdserver: not leader", checked first as etcd's gRPC layer does); a target that is
  not a voting member: etcd's "etcdserver: bad leader transferee". Its response has no
  header, as etcd's; nor have Snapshot's chunks.
"""
from __future__ import annotations

import hashlib
from typing import Any, AsyncIterator

import grpc
import msgpack

from actors.grpcgw.backend import SERVER_STREAM, Backend, rpc
from protocol import errors
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from protocol.snapshot_file import HASH_LEN, HEADER_MAX, MAGIC

SERVICE = "etcdserverpb.Maintenance"
ETCD_VERSION = "3.4.0"  # the etcd API this gateway serves, as etcd's version string
# Bytes per native snapshot request: the member drops a save not asked for its next chunk
# within 10 s, so a gRPC client must take each chunk within that time (>= 25 KiB/s).
SNAPSHOT_CHUNK = 256 << 10
ALARM_NAMES = {1: "NOSPACE", 2: "CORRUPT"}
ALARM_TYPES = {v: k for k, v in ALARM_NAMES.items()}
BAD_TRANSFEREE = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
U32 = 0xFFFFFFFF


# --- conversions ------------------------------------------------------------------------
def alarms_to_pb(alarms: Any, only: int = 0) -> list[rpc_pb2.AlarmMember]:
    """Our AlarmMember maps as etcd's, those of type ``only`` (0 = NONE: every type)."""
    out = []
    for a in alarms or ():
        name = a.get("alarm", "")
        if name in ALARM_TYPES and (not only or ALARM_TYPES[name] == only):
            out.append(rpc_pb2.AlarmMember(memberID=a.get("member_id", 0), alarm=name))
    return out


def activate_fields(r: rpc_pb2.AlarmRequest) -> dict[str, Any] | None:
    """The ``alarm_activate`` for an ACTIVATE, or None for a type we cannot raise."""
    name = ALARM_NAMES.get(r.alarm)
    if name is None:
        return None
    return {"op": "alarm_activate", "member_id": r.memberID, "alarm": name}


def disarm_fields(r: rpc_pb2.AlarmRequest) -> dict[str, Any] | None:
    """The ``alarm_disarm`` for a DEACTIVATE (exactly that member, 0 too, and type, as
    etcd's), or None when etcd would disarm nothing (type NONE or unknown)."""
    name = ALARM_NAMES.get(r.alarm)
    if name is None:
        return None
    return {"op": "alarm_disarm", "member_id": r.memberID, "alarm": name, "exact": True}


def status_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.StatusResponse:
    """etcd's errors: "etcdserver: no leader" without a leader, then each alarm as its
    AlarmMember's text ("memberID:<id> alarm:<type> ", the trailing space included); then
    our other lines (a full disk...)."""
    errs = [] if r.get("leader") else ["etcdserver: no leader"]
    errs += [f"memberID:{a.get('member_id', 0)} alarm:{a.get('alarm', '')} " for a in r.get("alarms") or ()]
    errs += [str(e) for e in r.get("errors") or () if not str(e).startswith("memberID:")]
    return rpc_pb2.StatusResponse(header=header, version=ETCD_VERSION, dbSize=r.get("db_size", 0),
                                  leader=r.get("leader", 0), raftIndex=r.get("raft_index", 0),
                                  raftTerm=r.get("raft_term", 0), raftAppliedIndex=r.get("raft_applied_index", 0),
                                  errors=errs, dbSizeInUse=r.get("db_size_in_use", 0),
                                  isLearner=bool(r.get("is_learner")))


def hash_header(backend: Backend, r: dict[str, Any]) -> rpc_pb2.ResponseHeader:
    """etcd's Hash/HashKV header: its revision is the hashed one."""
    h = backend.header(r)
    h.revision = r.get("hash_revision", h.revision)
    return h


def compact_revision(r: dict[str, Any]) -> int:
    """etcd's HashKV says -1 for a store never compacted (ours: 0)."""
    return int(r.get("compact_revision", 0)) or -1


class SnapshotError(Exception):
    """The native stream is not a snapshot file we can pass on (corrupted or malformed)."""


class EtcdSnapshot:
    """Our snapshot file (SPEC section 6) as ``etcdctl snapshot save`` takes it: etcd's client
    refuses a stream whose size is not 32 more than a multiple of 512 (a bolt file plus
    its SHA-256), so the metadata gets a ``pad`` string of the right length (readers ignore
    unknown keys) and the trailing SHA-256 is computed again over the bytes sent; the
    original SHA-256 is checked on the way. Pure: ``feed`` each native chunk in order, send
    what it returns. Holds the header until it is whole (at most HEADER_MAX bytes)."""

    def __init__(self, total_size: int) -> None:
        if total_size < len(MAGIC) + 4 + HASH_LEN:
            raise SnapshotError(f"a snapshot of {total_size} bytes is too short")
        self.total = total_size  # of the native file
        self.pos = 0  # native bytes fed
        self.head = bytearray()  # until the header is whole
        self.header_done = False
        self.trailer = bytearray()
        self.original = hashlib.sha256()  # of the native bytes before the trailer
        self.ours = hashlib.sha256()  # of the bytes sent
        self.size = 0  # of the file sent, known once the header is whole
        self.sent = 0

    def feed(self, data: bytes) -> bytes:
        if self.pos + len(data) > self.total:
            raise SnapshotError("the snapshot stream is longer than its size")
        body_end = self.total - HASH_LEN
        out = bytearray()
        start, self.pos = self.pos, self.pos + len(data)
        body = data[:max(0, body_end - start)]
        self.trailer += data[len(body):]
        self.original.update(body)
        if not self.header_done:
            self.head += body
            body = self._header()
            if not self.header_done:
                return b""
        out += body
        self.ours.update(body)
        if self.pos == self.total:
            if bytes(self.trailer) != self.original.digest():
                raise SnapshotError("the snapshot's SHA-256 does not match its content")
            out += self.ours.digest()
        self.sent += len(out)
        return bytes(out)

    def _header(self) -> bytes:
        """Once the header is whole: the padded header and the bytes after it."""
        fixed = len(MAGIC) + 4
        if len(self.head) < fixed:
            return b""
        if self.head[:len(MAGIC)] != MAGIC:
            raise SnapshotError("not a quorumkv snapshot file (bad magic)")
        meta_len = int.from_bytes(self.head[len(MAGIC):fixed], "big")
        if meta_len > HEADER_MAX or fixed + meta_len > self.total - HASH_LEN:
            raise SnapshotError(f"snapshot metadata length {meta_len} is corrupt")
        if len(self.head) < fixed + meta_len:
            return b""
        try:
            meta = msgpack.unpackb(bytes(self.head[fixed:fixed + meta_len]), raw=False, strict_map_key=False)
        except Exception:
            raise SnapshotError("snapshot metadata is corrupt") from None
        if not isinstance(meta, dict):
            raise SnapshotError("snapshot metadata is not a map")
        rest = self.total - fixed - meta_len
        for pad in range(2048):  # each step adds a byte, but for msgpack's str length switches
            packed = msgpack.packb({**meta, "pad": " " * pad}, use_bin_type=True)
            if (fixed + len(packed) + rest) % 512 == HASH_LEN:
                break
        self.size = fixed + len(packed) + rest
        self.header_done = True
        after = bytes(self.head[fixed + meta_len:])
        self.head = bytearray()
        return MAGIC + len(packed).to_bytes(4, "big") + packed + after

    def response(self, blob: bytes) -> rpc_pb2.SnapshotResponse:
        return rpc_pb2.SnapshotResponse(remaining_bytes=max(0, self.size - self.sent), blob=blob)


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    @rpc(SERVICE, "Alarm")
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: Any) -> rpc_pb2.AlarmResponse:
        # no header in any answer: etcd 3.4's is nil (module docstring)
        if request.action == rpc_pb2.AlarmRequest.GET:
            reply = await self.b.call(context, {"op": "alarm_list"})
            return rpc_pb2.AlarmResponse(alarms=alarms_to_pb(reply.get("alarms"), request.alarm))
        if request.action == rpc_pb2.AlarmRequest.ACTIVATE:
            req = activate_fields(request)
            if req is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"etcdserver: alarm type {request.alarm} cannot be activated "
                                    f"(NOSPACE or CORRUPT)")
                raise AssertionError("unreachable")  # context.abort raises
            reply = await self.b.call(context, req)
            return rpc_pb2.AlarmResponse(alarms=alarms_to_pb(reply.get("alarms")))
        if request.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            req = disarm_fields(request)
            if req is None:
                return rpc_pb2.AlarmResponse()
            reply = await self.b.call(context, req)
            return rpc_pb2.AlarmResponse(alarms=alarms_to_pb(reply.get("alarms")))
        return rpc_pb2.AlarmResponse()  # etcd: an unknown action does nothing

    @rpc(SERVICE, "Status")
    async def Status(self, request: rpc_pb2.StatusRequest, context: Any) -> rpc_pb2.StatusResponse:
        reply = await self.b.call(context, {"op": "status"})
        return status_response(reply, self.b.header(reply))

    @rpc(SERVICE, "Defragment")
    async def Defragment(self, request: rpc_pb2.DefragmentRequest, context: Any) -> rpc_pb2.DefragmentResponse:
        # the member waits up to 10 minutes for a large store: so does this call, within the client's deadline
        left = context.time_remaining()
        reply = await self.b.call(context, {"op": "defragment"}, timeout=600.0 if left is None else max(0.001, left))
        return rpc_pb2.DefragmentResponse(header=self.b.header(reply))

    @rpc(SERVICE, "Hash")
    async def Hash(self, request: rpc_pb2.HashRequest, context: Any) -> rpc_pb2.HashResponse:
        reply = await self.b.call(context, {"op": "hash_kv", "revision": 0})
        return rpc_pb2.HashResponse(header=hash_header(self.b, reply), hash=int(reply.get("hash", 0)) & U32)

    @rpc(SERVICE, "HashKV")
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: Any) -> rpc_pb2.HashKVResponse:
        reply = await self.b.call(context, {"op": "hash_kv", "revision": max(0, request.revision)})
        header = hash_header(self.b, reply)
        if request.revision > 0:  # etcd's header has its current revision, not the hashed one
            try:
                st = await self.b.member.request({"op": "status"}, timeout=self.b.timeout_of(context))
                header.revision = max(header.revision, int((st.get("header") or {}).get("revision", 0)))
            except errors.QkvError:
                pass  # the hashed revision: the member's revision when it answered
        return rpc_pb2.HashKVResponse(header=header, hash=int(reply.get("hash", 0)) & U32,
                                      compact_revision=compact_revision(reply))

    @rpc(SERVICE, "Snapshot", SERVER_STREAM)
    async def Snapshot(self, request: rpc_pb2.SnapshotRequest,
                       context: Any) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        req: dict[str, Any] = {"op": "snapshot", "snapshot_id": 0, "offset": 0, "max_bytes": SNAPSHOT_CHUNK,
                               "serializable": True}
        file: EtcdSnapshot | None = None
        while True:
            reply = await self.b.call(context, req, timeout=_chunk_timeout(context))
            try:
                if file is None:
                    file = EtcdSnapshot(int(reply.get("total_size", 0)))
                if reply.get("offset", 0) != file.pos:
                    raise SnapshotError(f"a snapshot chunk at offset {reply.get('offset')}, not {file.pos}")
                blob = file.feed(reply.get("data", b""))
                if reply.get("done") and file.pos != file.total:
                    raise SnapshotError("the snapshot stream ended before its size")
            except SnapshotError as exc:
                await context.abort(grpc.StatusCode.DATA_LOSS, f"etcdserver: {exc}")
                return  # abort raises
            if blob:
                yield file.response(blob)
            if reply.get("done"):
                return
            req = {"op": "snapshot", "snapshot_id": reply["snapshot_id"], "offset": file.pos,
                   "max_bytes": SNAPSHOT_CHUNK}

    @rpc(SERVICE, "MoveLeader")
    async def MoveLeader(self, request: rpc_pb2.MoveLeaderRequest, context: Any) -> rpc_pb2.MoveLeaderResponse:
        await self._not_leader_first(context)
        if not request.targetID:
            await context.abort(*BAD_TRANSFEREE)
        try:
            reply = await self.b.client.request({"op": "move_leader", "target_id": request.targetID,
                                                 **self.b.identity(context)}, timeout=self.b.timeout_of(context))
        except errors.QkvError as err:
            if err.code == "invalid_argument":  # a target that is not a voting member
                await context.abort(*BAD_TRANSFEREE)
            await self.b.abort(context, err)
            raise AssertionError("unreachable") from None
        self.b.note_header(reply.get("header"))
        return rpc_pb2.MoveLeaderResponse()  # etcd's has no header

    async def _not_leader_first(self, context: Any) -> None:
        """etcd's gRPC layer answers "not leader" on a follower before looking at the target;
        so do we, at once (our client would retry a native not_leader until the deadline)."""
        reply = await self.b.call(context, {"op": "status"})
        if reply.get("leader") != (reply.get("header") or {}).get("member_id", self.b.member_id):
            await self.b.abort(context, errors.NotLeader())


def _chunk_timeout(context: Any) -> float:
    """A snapshot's first chunk waits for the store's checkpoint: let it take the time the
    client allows (etcd has no deadline of its own), at most 10 minutes per chunk."""
    left = context.time_remaining()
    return 600.0 if left is None else max(0.001, min(float(left), 600.0))


def add(server: Any, backend: Backend) -> None:
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(backend), server)
