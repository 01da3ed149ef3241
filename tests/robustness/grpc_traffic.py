"""The robustness traffic through etcd's gRPC API (the `grpc-*` scenarios): the recording
clients of traffic.py and watch_traffic.py, unchanged, on clients that speak etcd's KV,
Lease and Watch services (protocol/etcdpb stubs) to each member's grpc actor instead of
our native protocol. The history format and the checkers are the same.

- `GrpcKV` offers the part of `protocol.client.Client` that `RecordingClient` calls (put,
  get, delete, txn, lease_grant, lease_revoke, compact), one RPC each with the client's
  deadline, on one channel per member; `_preferred` is the member asked, and it moves on to
  the next member after an error that says nothing about the request (unavailable,
  deadline). No RPC is resent: a refused write is a definite failure, anything else is an
  unknown outcome.
- `GrpcWatchClient.watch` opens one Watch stream (etcd 3.4 semantics: a create request with
  start revision, prev_kv and progress_notify; the created response's header revision + 1
  is where a watch "from now" starts; a compacted start comes back as a response with
  `compact_revision` and `canceled`; a progress notification is a response with no events
  that is neither created nor canceled). A broken stream ends the session (the watcher then
  resumes from its last covered revision + 1 on the next member, as an etcd consumer does);
  there is no fail-over inside a session, so `resumes` stays 0.
- Errors: etcd's status (code, message) -> our exception (`error_of`): the refusals the
  server makes before proposing (caller mistakes, no leader, too many requests, lease not
  found...) keep their meaning; a deadline, a dropped connection, "request timed out" or
  any status not known to be a refusal is `errors.Timeout`, which the recorders take as an
  unknown outcome.

The conversions (native txn fields -> TxnRequest, responses -> the shapes the recorders
read, status -> exception) are pure functions, tested in test_grpc_traffic.py.
"""
from __future__ import annotations

import queue
import threading
from types import SimpleNamespace
from typing import Any

import grpc

from protocol import errors
from protocol.client.txn import txn_fields
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc

SC = grpc.StatusCode
CHANNEL_OPTIONS = [
    # a restarted member is asked again soon (gRPC's default backoff grows to 2 minutes)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Statuses that refuse the request: it did not happen (etcd's rpctypes; our errors.py table).
REFUSING_CODES = frozenset({SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.FAILED_PRECONDITION,
                            SC.OUT_OF_RANGE, SC.PERMISSION_DENIED, SC.UNAUTHENTICATED, SC.UNIMPLEMENTED,
                            SC.RESOURCE_EXHAUSTED})
# Refusals sent as UNAVAILABLE: the request was not proposed.
REFUSING_MESSAGES = {
    "etcdserver: no leader": "no_leader",
    "etcdserver: not leader": "not_leader",
}
# etcd's messages of refusals the recorders tell apart -> our error codes
CODES_BY_MESSAGE = {
    "etcdserver: requested lease not found": "lease_not_found",
    "etcdserver: mvcc: required revision has been compacted": "compacted",
    "etcdserver: mvcc: required revision is a future revision": "future_revision",
    "etcdserver: too many requests": "too_many_requests",
    **REFUSING_MESSAGES,
}
# Statuses after which the next request goes to another member.
FAIL_OVER_CODES = frozenset({SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED, SC.CANCELLED, SC.UNKNOWN, SC.INTERNAL,
                             SC.RESOURCE_EXHAUSTED})
COMPARE_TARGETS = {"VERSION": rpc_pb2.Compare.VERSION, "CREATE": rpc_pb2.Compare.CREATE,
                   "MOD": rpc_pb2.Compare.MOD, "VALUE": rpc_pb2.Compare.VALUE, "LEASE": rpc_pb2.Compare.LEASE}
COMPARE_RESULTS = {"EQUAL": rpc_pb2.Compare.EQUAL, "NOT_EQUAL": rpc_pb2.Compare.NOT_EQUAL,
                   "GREATER": rpc_pb2.Compare.GREATER, "LESS": rpc_pb2.Compare.LESS}
COMPARE_FIELDS = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value",
                  "LEASE": "lease"}


class Refused(errors.QkvError):
    """A definite failure named by an etcd status: `code` is ours when known, else
    ``grpc_<status>``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # per instance: the status it came from


# --- pure conversions ---------------------------------------------------------------------------
def error_of(code: grpc.StatusCode, details: str | None) -> errors.QkvError:
    """The exception the recorders get for an RPC that ended with this status."""
    message = details or ""
    if code in REFUSING_CODES or message in REFUSING_MESSAGES:
        return Refused(CODES_BY_MESSAGE.get(message, f"grpc_{code.name.lower()}"), f"{code.name}: {message}")
    return errors.Timeout(f"{code.name}: {message} (outcome unknown)")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for a prefix (clientv3.GetPrefixRangeEnd)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def compare_pb(c: dict[str, Any]) -> rpc_pb2.Compare:
    """A native txn Compare map (SPEC section 3) as etcd's Compare."""
    target = c["target"]
    out = rpc_pb2.Compare(target=COMPARE_TARGETS[target], result=COMPARE_RESULTS[c["result"]], key=c["key"],
                          range_end=c.get("range_end", b""))
    setattr(out, COMPARE_FIELDS[target], c[COMPARE_FIELDS[target]])
    return out


def request_op_pb(op: dict[str, Any]) -> rpc_pb2.RequestOp:
    """A native txn op map ({"put": {...}} / {"delete_range": ...} / {"range": ...}) as a RequestOp."""
    (name, f), = op.items()
    if name == "put":
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
            key=f["key"], value=f.get("value", b""), lease=f.get("lease", 0), prev_kv=f.get("prev_kv", False)))
    if name == "delete_range":
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(
            key=f["key"], range_end=f.get("range_end", b""), prev_kv=f.get("prev_kv", False)))
    if name == "range":
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(
            key=f["key"], range_end=f.get("range_end", b""), serializable=f.get("serializable", False)))
    raise ValueError(f"no gRPC form here for txn op {name!r}")


def txn_request(fields: dict[str, Any]) -> rpc_pb2.TxnRequest:
    """Native txn fields (protocol.client.txn.txn_fields) as etcd's TxnRequest."""
    return rpc_pb2.TxnRequest(compare=[compare_pb(c) for c in fields["compare"]],
                              success=[request_op_pb(o) for o in fields["success"]],
                              failure=[request_op_pb(o) for o in fields["failure"]])


def txn_result(resp: rpc_pb2.TxnResponse) -> SimpleNamespace:
    """A TxnResponse shaped as the native client's: `responses[i]` is the op's own response
    (`.deleted` of a delete), not the oneof wrapper."""
    return SimpleNamespace(header=resp.header, succeeded=resp.succeeded,
                           responses=[getattr(r, r.WhichOneof("response")) for r in resp.responses])


def is_progress_notify(resp: rpc_pb2.WatchResponse) -> bool:
    """clientv3's WatchResponse.IsProgressNotify."""
    return (not resp.events and not resp.canceled and not resp.created and resp.compact_revision == 0
            and resp.header.revision != 0)


def watch_result(resp: rpc_pb2.WatchResponse) -> SimpleNamespace:
    """A WatchResponse shaped as the native watch's (watch_traffic.py reads `canceled`,
    `compact_revision`, `cancel_reason`, `progress_notify`, `revision`, and each event's
    `type` ("PUT"/"DELETE"), `kv` and `prev_kv` (None when absent))."""
    events = [SimpleNamespace(type="DELETE" if e.type == e.DELETE else "PUT", kv=e.kv,
                              prev_kv=e.prev_kv if e.HasField("prev_kv") else None) for e in resp.events]
    return SimpleNamespace(canceled=resp.canceled, compact_revision=resp.compact_revision,
                           cancel_reason=resp.cancel_reason, progress_notify=is_progress_notify(resp),
                           revision=resp.header.revision, events=events)


# --- the clients ----------------------------------------------------------------------------
class _Channels:
    """One insecure channel per member, made when first used."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = list(endpoints)
        self._channels: dict[int, grpc.Channel] = {}

    def get(self, idx: int) -> grpc.Channel:
        ch = self._channels.get(idx)
        if ch is None:
            ch = self._channels[idx] = grpc.insecure_channel(self.endpoints[idx], options=CHANNEL_OPTIONS)
        return ch

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()


def _no_security(options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"the gRPC traffic runs without security, not with {sorted(options)}")


class GrpcKV:
    """The KV and Lease calls `traffic.RecordingClient` makes, over etcd's gRPC API."""

    def __init__(self, endpoints: list[str], timeout: float = 3.0, **options: Any) -> None:
        _no_security(options)
        self.timeout = timeout
        self._channels = _Channels(endpoints)
        self._preferred = 0  # the member asked (RecordingClient sets it, errors move it on)

    def _call(self, service: str, method: str, request: Any) -> Any:
        idx = self._preferred % len(self._channels.endpoints)
        ch = self._channels.get(idx)
        stub = rpc_pb2_grpc.KVStub(ch) if service == "KV" else rpc_pb2_grpc.LeaseStub(ch)
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else SC.UNKNOWN
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            if code in FAIL_OVER_CODES:
                self._preferred = idx + 1
            raise error_of(code, details) from None

    def put(self, key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.PutResponse:
        return self._call("KV", "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease))

    def get(self, key: bytes, *, serializable: bool = False, prefix: bool = False) -> rpc_pb2.RangeResponse:
        return self._call("KV", "Range", rpc_pb2.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"",
                                                              serializable=serializable))

    def delete(self, key: bytes) -> rpc_pb2.DeleteRangeResponse:
        return self._call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=key))

    def txn(self, compare: Any = (), success: Any = (), failure: Any = ()) -> SimpleNamespace:
        return txn_result(self._call("KV", "Txn", txn_request(txn_fields(compare, success, failure))))

    def compact(self, revision: int) -> rpc_pb2.CompactionResponse:
        return self._call("KV", "Compact", rpc_pb2.CompactionRequest(revision=revision))

    def lease_grant(self, ttl: int) -> SimpleNamespace:
        resp = self._call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl))
        if resp.error:  # etcd 3.4 may say so in the message instead of a status
            raise Refused("lease_grant_error", resp.error)
        return SimpleNamespace(id=resp.ID, ttl=resp.TTL, header=resp.header)

    def lease_revoke(self, lease: int) -> rpc_pb2.LeaseRevokeResponse:
        return self._call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease))

    def close(self) -> None:
        self._channels.close()


class GrpcWatchClient:
    """`watch()` as `watch_traffic.RecordingWatcher` calls it, over etcd's Watch service:
    tries the members from `_preferred` on until one creates the watch."""

    def __init__(self, endpoints: list[str], timeout: float = 3.0, **options: Any) -> None:
        _no_security(options)
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._preferred = 0

    def watch(self, key: bytes, *, prefix: bool = False, start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False, progress_interval_s: float = 0.0) -> "GrpcWatch":
        """`progress_interval_s` is the server's to choose over gRPC (etcd: a flag); ignored."""
        create = rpc_pb2.WatchCreateRequest(key=key, range_end=prefix_end(key) if prefix else b"",
                                            start_revision=start_revision, prev_kv=prev_kv,
                                            progress_notify=progress_notify)
        last: errors.QkvError = errors.Unavailable("no member to watch on")
        for k in range(len(self.endpoints)):
            idx = (self._preferred + k) % len(self.endpoints)
            try:
                return GrpcWatch(self.endpoints, idx, create, self.timeout)
            except errors.QkvError as exc:
                last = exc
        raise last

    def close(self) -> None:
        pass


class _Cancel:
    """`w._cancel.set()` (RecordingWatcher.join from another thread): end the stream."""

    def __init__(self, watch: "GrpcWatch") -> None:
        self._watch = watch
        self._set = threading.Event()

    def set(self) -> None:
        self._set.set()
        self._watch._call.cancel()  # noqa: SLF001 - grpc calls may be canceled from any thread

    def is_set(self) -> bool:
        return self._set.is_set()


_EOF = object()


class GrpcWatch:
    """One Watch stream with one watch, read by a thread of its own into a queue (so `get`
    can wait with a timeout)."""

    resumes = 0  # no fail-over inside a session over gRPC

    def __init__(self, endpoints: list[str], idx: int, create: rpc_pb2.WatchCreateRequest, timeout: float) -> None:
        self._endpoints, self._idx = list(endpoints), idx
        self._channel = grpc.insecure_channel(endpoints[idx], options=CHANNEL_OPTIONS)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        self._done = False
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch(iter(self._requests.get, None))
        self._cancel = _Cancel(self)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"grpc-watch-{endpoints[idx]}")
        self._reader.start()
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        try:
            first = self._responses.get(timeout=timeout)
        except queue.Empty:
            self.cancel()
            raise errors.Unavailable(f"no created response from {endpoints[idx]} in {timeout}s") from None
        self._pending: Any = None
        if not isinstance(first, BaseException) and first is not _EOF and first.created and first.canceled \
                and first.compact_revision:
            # etcd 3.4 creates the watch, then cancels it with compact_revision in a second
            # response; a server that says both at once is read the same way
            self._pending = first
        elif first is _EOF or isinstance(first, BaseException) or not first.created or first.canceled:
            self.cancel()
            if isinstance(first, grpc.RpcError):
                raise error_of(first.code(), first.details())
            raise errors.Unavailable(f"watch not created on {endpoints[idx]}: {first}")
        self.watch_id = first.watch_id
        # etcd: a watch "from now" starts after the revision in the created response's header
        self.start_revision = create.start_revision or first.header.revision + 1

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._responses.put(resp)
            self._responses.put(_EOF)
        except grpc.RpcError as exc:
            self._responses.put(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._responses.put(exc)

    def get(self, timeout: float | None = None) -> SimpleNamespace | None:
        """The next response (None when none came within `timeout`); StopIteration when
        the stream ended by cancellation; errors.Unavailable when it broke."""
        if self._done:
            raise StopIteration
        if self._pending is not None:
            item, self._pending = self._pending, None
            return watch_result(item)
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            if self._cancel.is_set():
                self._done = True
                raise StopIteration from None
            return None
        if item is _EOF:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            if self._cancel.is_set():
                raise StopIteration
            if isinstance(item, grpc.RpcError):
                raise errors.Unavailable(f"watch stream broke: {item.code().name}: {item.details()}")
            raise item
        if item.watch_id != self.watch_id or (item.created and not item.canceled):
            return None
        return watch_result(item)

    def cancel(self) -> None:
        self._requests.put(None)  # ends the request iterator
        self._call.cancel()
        self._channel.close()
