"""One typed, validating decoder per peer message type (the bodies of messages.py's PEER_*).

Rules:
- No I/O. Whatever a peer sends, only `PeerWireError` (a ValueError) comes out of
  `decode`; the transport drops and counts such a message. A message that decodes is
  handed to the consensus actor whole and typed, and the handler does not guard against
  shapes again: an exception there is a bug and crashes the actor loudly.
- Integers are Python ints, never bools; ids, terms, indexes and request ids fit in int64
  (the Raft wire and our own encodings use int64 in places). A Raft message's term is at
  most MAX_TERM, far below 2^63 - 1, so no term a peer sends can make our next election's
  term unrepresentable (the "term 2^63 - 1" attack; authentication keeps strangers out,
  this keeps a member's bug from wedging the cluster).
- Sizes are bounded: batch lengths, strings, snapshot chunks and offsets.
- Snapshot paths are relative, normalized and inside the transfer's directory
  (snapshot.safe_relpath); snapshot ids are ints.
- A forwarded proposal (PEER_FORWARD) must be an entry of the forwarding member
  (origin == frm) whose op is one the log accepts (`check_forwarded_entry`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.consensus.raft import Message, MessageType
from actors.consensus.snapshot import CHUNK_BYTES, SnapshotError, safe_relpath
from actors.runtime import entry as entry_mod
from actors.runtime.entry import InvalidEntry
from actors.runtime.entry_ops import validate_entry_op
from actors.runtime import messages as M
from protocol import errors
from protocol.requests import MEMBER_CHANGE_OPS, WRITE_OPS, Limits, is_z85_key, normalize_request

INT64_MAX = 2**63 - 1
MAX_TERM = 2**62  # see the module docstring
MAX_BATCH = 100_000  # Raft messages, forwarded proposals or req ids in one frame
MAX_PROPOSAL_BYTES = 64 * 1024 * 1024
MAX_STR = 4096
MAX_URLS = 16
MAX_SNAPSHOT_BYTES = 1 << 50  # offset bound: 1 PiB
SNAP_ACK_STATUSES = ("ok", "done", "failed")
DIGEST_BYTES = 32
_LIMITS = Limits(max_txn_ops=100_000)  # shape only: the leader's own limits ran at the gateway
# Ops of the log a member's gateway proposes (and so may forward): client writes, the
# server-written alarm, and the auth ops of issue 11 (validated by the entry validator
# when it is present, else by name and shape).
_AUTH_LOG_OPS = frozenset((
    "authenticate", "auth_enable", "auth_disable", "user_add", "user_delete", "user_change_password",
    "user_grant_role", "user_revoke_role", "role_add", "role_delete", "role_grant_permission",
    "role_revoke_permission"))
FORWARDABLE_OPS = frozenset(WRITE_OPS) | {"alarm_activate"} | _AUTH_LOG_OPS



class PeerWireError(ValueError):
    """A peer message that is not valid for its type; the message says why."""


# --- typed bodies ------------------------------------------------------------------------
@dataclass(frozen=True)
class RaftBatch:
    messages: list[Message]


@dataclass(frozen=True)
class Forward:
    proposals: list[tuple[int, bytes]]  # (req_id, entry data), every entry checked


@dataclass(frozen=True)
class ForwardReject:
    req_ids: list[int]


@dataclass(frozen=True)
class Hello:
    info: dict[str, Any]  # {name, client_urls, watch_urls, version}


@dataclass(frozen=True)
class SnapChunk:
    snap_id: int
    seq: int
    relpath: str  # "" or a safe relative path
    offset: int
    data: bytes
    final: bool
    digest: bytes | None
    message: Message | None  # the SNAP message, on the final chunk only
    message_wire: list | None


@dataclass(frozen=True)
class SnapAck:
    snap_id: int
    seq: int  # -1 for the install result
    status: str


@dataclass(frozen=True)
class MemberReq:
    ctx: int
    op: dict  # a normalized member_* op


@dataclass(frozen=True)
class MemberResp:
    ctx: int
    result: dict | None
    error: dict | None


@dataclass(frozen=True)
class Join:
    pass


@dataclass(frozen=True)
class Removed:
    pass


@dataclass(frozen=True)
class JoinResp:
    cluster_id: int
    members: list[list]  # [[id, name, peer_urls, is_learner, peer_key], ...]


# --- field checks -------------------------------------------------------------------------
def _int(name: str, v: Any, lo: int = 0, hi: int = INT64_MAX) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise PeerWireError(f"{name} must be an int in [{lo}, {hi}], got {_short(v)}")
    return v


def _id(name: str, v: Any) -> int:
    return _int(name, v, 1)


def _str(name: str, v: Any, max_len: int = MAX_STR, empty: bool = True) -> str:
    if type(v) is not str or len(v) > max_len or (not empty and not v):
        raise PeerWireError(f"{name} must be a string of at most {max_len} characters, got {_short(v)}")
    return v


def _bytes(name: str, v: Any, max_len: int) -> bytes:
    if type(v) is not bytes or len(v) > max_len:
        raise PeerWireError(f"{name} must be bytes of at most {max_len}, got {_short(v)}")
    return v


def _list(name: str, v: Any, max_len: int = MAX_BATCH) -> list:
    if type(v) is not list or len(v) > max_len:
        raise PeerWireError(f"{name} must be an array of at most {max_len} items")
    return v


def _str_list(name: str, v: Any) -> list[str]:
    return [_str(name, u) for u in _list(name, v, MAX_URLS)]


def _fields(name: str, body: list, n: int) -> list:
    if len(body) != n:
        raise PeerWireError(f"{name}: expected {n} fields after the sender, got {len(body)}")
    return body


def _short(v: Any) -> str:
    try:
        s = repr(v)
    except Exception:  # noqa: BLE001 - only for the message
        s = f"<{type(v).__name__}>"
    return s if len(s) <= 60 else s[:57] + "..."


def _raft_message(wire: Any, frm: int, me: int) -> Message:
    try:
        msg = Message.from_wire(wire)
    except ValueError as exc:
        raise PeerWireError(f"raft {exc}") from None
    except Exception as exc:  # noqa: BLE001 - from_wire is the gate; any surprise is garbage
        raise PeerWireError(f"raft message: {type(exc).__name__}") from None
    if msg.frm != frm or msg.to != me:
        raise PeerWireError("raft message with a forged sender or another recipient")
    if msg.term > MAX_TERM or msg.log_term > MAX_TERM:
        raise PeerWireError(f"raft message term above {MAX_TERM}")
    if any(e.term > MAX_TERM for e in msg.entries):
        raise PeerWireError(f"raft entry term above {MAX_TERM}")
    return msg


def _error_wire(v: Any) -> dict | None:
    if v is None:
        return None
    if type(v) is not dict or type(v.get("code")) is not str or type(v.get("message")) is not str:
        raise PeerWireError("error must be None or {code, message, ...}")
    return v


def _member_wire(v: Any) -> dict:
    if type(v) is not dict:
        raise PeerWireError("member must be a map")
    _id("member.id", v.get("id"))
    _str("member.name", v.get("name"))
    for k in ("peer_urls", "client_urls", "watch_urls"):
        _str_list(f"member.{k}", v.get(k))
    if "grpc_urls" in v:  # absent from a member running a version without the gRPC gateway
        _str_list("member.grpc_urls", v["grpc_urls"])
    if type(v.get("is_learner")) is not bool:
        raise PeerWireError("member.is_learner must be a bool")
    key = v.get("peer_key", "")
    if key != "" and not (type(key) is str and is_z85_key(key)):
        raise PeerWireError("member.peer_key must be a Z85 key or empty")
    return v


# --- forwarded entries ----------------------------------------------------------------------
def check_entry_op(op: Any) -> None:
    """The op of a forwarded entry: one the log takes, in its normalized shape."""
    if type(op) is not dict or type(op.get("op")) is not str:
        raise PeerWireError("entry op must be a map with an op name")
    name = op["op"]
    if name not in FORWARDABLE_OPS:
        raise PeerWireError(f"entry op {_short(name)} cannot be proposed by a peer")
    try:
        validate_entry_op(op)
    except (InvalidEntry, errors.QkvError) as exc:
        raise PeerWireError(f"invalid entry op: {exc}") from None


def check_forwarded_entry(data: Any, frm: int) -> None:
    """A proposal a follower forwarded: a valid entry of that follower."""
    _bytes("proposal", data, MAX_PROPOSAL_BYTES)
    try:
        e = entry_mod.decode(data)
    except entry_mod.InvalidEntry as exc:
        raise PeerWireError(f"invalid entry: {exc}") from None
    origin, op = e.origin, e.op
    if origin != frm:
        raise PeerWireError(f"entry of member {_short(origin)} forwarded by member {frm:x}")
    check_entry_op(op)


# --- the decoders -----------------------------------------------------------------------------
def _raft(body: list, frm: int, me: int) -> RaftBatch:
    (wires,) = _fields("PEER_RAFT", body, 1)
    msgs = [_raft_message(w, frm, me) for w in _list("PEER_RAFT messages", wires)]
    if any(m.type == MessageType.SNAP for m in msgs):
        raise PeerWireError("a SNAP message travels only with its snapshot (PEER_SNAP_CHUNK)")
    return RaftBatch(msgs)


def _forward(body: list, frm: int, me: int) -> Forward:
    (batch,) = _fields("PEER_FORWARD", body, 1)
    out = []
    for item in _list("PEER_FORWARD proposals", batch):
        if type(item) is not list or len(item) != 2:
            raise PeerWireError("PEER_FORWARD proposal must be [req_id, data]")
        req_id = _int("PEER_FORWARD req_id", item[0], 0, 2**64 - 1)
        check_forwarded_entry(item[1], frm)
        out.append((req_id, item[1]))
    return Forward(out)


def _forward_reject(body: list, frm: int, me: int) -> ForwardReject:
    (ids,) = _fields("PEER_FORWARD_REJECT", body, 1)
    return ForwardReject([_int("PEER_FORWARD_REJECT req_id", i, 0, 2**64 - 1) for i in _list("req ids", ids)])


def _hello(body: list, frm: int, me: int) -> Hello:
    (info,) = _fields("PEER_HELLO", body, 1)
    if type(info) is not dict:
        raise PeerWireError("PEER_HELLO info must be a map")
    return Hello({"name": _str("hello.name", info.get("name", ""), 256),
                  "client_urls": _str_list("hello.client_urls", info.get("client_urls", [])),
                  "watch_urls": _str_list("hello.watch_urls", info.get("watch_urls", [])),
                  "grpc_urls": _str_list("hello.grpc_urls", info.get("grpc_urls", [])),
                  "version": _str("hello.version", info.get("version", ""), 64)})


def _snap_chunk(body: list, frm: int, me: int) -> SnapChunk:
    snap_id, seq, relpath, offset, data, final, digest, message_wire = _fields("PEER_SNAP_CHUNK", body, 8)
    _int("snap_id", snap_id)
    _int("snapshot chunk seq", seq)
    if relpath != "":
        try:
            relpath = safe_relpath(relpath)
        except SnapshotError as exc:
            raise PeerWireError(str(exc)) from None
        if len(relpath) > MAX_STR:
            raise PeerWireError("snapshot path too long")
    _int("snapshot chunk offset", offset, 0, MAX_SNAPSHOT_BYTES)
    _bytes("snapshot chunk data", data, CHUNK_BYTES)
    if relpath == "" and (offset or data):
        raise PeerWireError("snapshot chunk data without a path")
    if type(final) is not bool:
        raise PeerWireError("snapshot chunk final must be a bool")
    message = None
    if final:
        if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
            raise PeerWireError("the final snapshot chunk needs a 32-byte digest")
        message = _raft_message(message_wire, frm, me)
        if message.type != MessageType.SNAP or message.snapshot is None:
            raise PeerWireError("the final snapshot chunk must carry a SNAP message")
    elif digest is not None or message_wire is not None:
        raise PeerWireError("only the final snapshot chunk carries a digest and a message")
    return SnapChunk(snap_id, seq, relpath, offset, data, final, digest, message, message_wire)


def _snap_ack(body: list, frm: int, me: int) -> SnapAck:
    snap_id, seq, status = _fields("PEER_SNAP_ACK", body, 3)
    _int("snap_id", snap_id)
    _int("snapshot ack seq", seq, -1)
    if status not in SNAP_ACK_STATUSES or type(status) is not str:
        raise PeerWireError(f"snapshot ack status must be one of {SNAP_ACK_STATUSES}")
    return SnapAck(snap_id, seq, status)


def check_member_op(op: Any) -> dict:
    """A member_* op in its normalized shape (protocol/requests.py), or PeerWireError."""
    if type(op) is not dict or op.get("op") not in MEMBER_CHANGE_OPS:
        raise PeerWireError(f"not a member op: {_short(op)}")
    try:
        norm = normalize_request(op, _LIMITS)
    except errors.QkvError as exc:
        raise PeerWireError(f"invalid member op: {exc.message}") from None
    if norm != op:
        raise PeerWireError("member op is not in its normalized shape")
    return norm


def _member(body: list, frm: int, me: int) -> MemberReq:
    ctx, op = _fields("PEER_MEMBER", body, 2)
    return MemberReq(_int("PEER_MEMBER ctx", ctx), check_member_op(op))


def _member_resp(body: list, frm: int, me: int) -> MemberResp:
    ctx, result, error = _fields("PEER_MEMBER_RESP", body, 3)
    _int("PEER_MEMBER_RESP ctx", ctx)
    if result is not None:
        if type(result) is not dict or not set(result) <= {"member", "members"}:
            raise PeerWireError("member result must be {member?, members}")
        for m in _list("members", result.get("members"), 10_000):
            _member_wire(m)
        if "member" in result:
            _member_wire(result["member"])
    return MemberResp(ctx, result, _error_wire(error))


def _join(body: list, frm: int, me: int) -> Join:
    _fields("PEER_JOIN", body, 0)
    return Join()


def _removed(body: list, frm: int, me: int) -> Removed:
    _fields("PEER_REMOVED", body, 0)
    return Removed()


_DECODERS = {
    M.PEER_RAFT: _raft,
    M.PEER_FORWARD: _forward,
    M.PEER_FORWARD_REJECT: _forward_reject,
    M.PEER_HELLO: _hello,
    M.PEER_SNAP_CHUNK: _snap_chunk,
    M.PEER_SNAP_ACK: _snap_ack,
    M.PEER_MEMBER: _member,
    M.PEER_MEMBER_RESP: _member_resp,
    M.PEER_JOIN: _join,
    M.PEER_REMOVED: _removed,
}
PEER_TYPES = frozenset(_DECODERS)


def decode(msg_type: Any, body: Any, me: int) -> tuple[int, Any]:
    """(frm, typed body) of a peer message `pack_msg(msg_type, [frm, ...])` received by
    member `me`; PeerWireError unless it is valid for its type. frm is 0 only on PEER_JOIN."""
    decoder = _DECODERS.get(msg_type) if type(msg_type) is int else None
    if decoder is None:
        raise PeerWireError(f"unknown peer message type {_short(msg_type)}")
    if type(body) is not list or not body:
        raise PeerWireError("peer message body must be a non-empty array")
    frm = body[0]
    if msg_type == M.PEER_JOIN:
        _int("PEER_JOIN sender", frm, 0, 0)
    else:
        _id("sender", frm)
    try:
        return frm, decoder(body[1:], frm, me)
    except PeerWireError:
        raise
    except RecursionError:
        raise PeerWireError("peer message nested too deeply") from None


def decode_join_resp(body: Any) -> JoinResp:
    """PEER_JOIN_RESP [cluster_id, [[id, name, peer_urls, is_learner, peer_key?], ...]]."""
    if type(body) is not list or len(body) != 2:
        raise PeerWireError("PEER_JOIN_RESP must be [cluster_id, members]")
    cluster, members = body
    _id("cluster_id", cluster)
    out = []
    for m in _list("members", members, 10_000):
        if type(m) is not list or len(m) not in (4, 5):
            raise PeerWireError("member must be [id, name, peer_urls, is_learner, peer_key]")
        key = m[4] if len(m) == 5 else ""
        if key != "" and not (type(key) is str and is_z85_key(key)):
            raise PeerWireError("member peer_key must be a Z85 key or empty")
        if type(m[3]) is not bool:
            raise PeerWireError("member is_learner must be a bool")
        out.append([_id("member id", m[0]), _str("member name", m[1], 256), _str_list("peer_urls", m[2]), m[3], key])
    return JoinResp(cluster, out)
