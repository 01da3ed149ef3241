"""One typed, validating decoder for every internal message (actors/runtime/messages.py).

`decode(frame) -> (msg_type, body)` unpacks a frame (`codec.pack_msg`) with bounded
lengths and checks its body against the schema of its type: array lengths, element types
(a bool is never an int), integer ranges, string and byte lengths, list lengths, map
fields; ops inside messages are checked whole (actors/runtime/entry_ops.py). Anything else
raises `Malformed`: the receiver drops the message and counts it (`Dropped`). A message
that decodes is handled whole, so an exception in a handler after `decode` is a bug and
must propagate, never be taken for garbage.

`decode(frame, allowed)` also refuses types that the receiving socket does not expect.

Peer messages (60-96) have envelope schemas here too; the Raft message inside PEER_RAFT
(`Message.from_wire`), snapshot chunk paths and member ops from peers are checked by the
consensus side. The decoders are pure (no I/O); `Dropped` reads the clock for its rate limit.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import msgpack

from actors.runtime import messages as M
from actors.runtime.entry import InvalidEntry
from actors.runtime.entry_ops import validate_member_op, validate_read_op
from protocol.errors import Malformed

VERSION = 1
UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
MAX_FRAME = 256 * 1024 * 1024
MAX_BATCH = 100_000  # elements of any batch list (proposals, reads, replies, entries, events)
MAX_LIST = 10_000  # other lists: URLs, members, alarms
MAX_STR = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024


# --- schema nodes ------------------------------------------------------------------------
class Schema:
    def check(self, v: Any, path: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _fail(path: str, why: str) -> None:
    raise Malformed(f"malformed internal message: {path}: {why}")


class Int(Schema):
    def __init__(self, lo: int = 0, hi: int = UINT64_MAX) -> None:
        self.lo, self.hi = lo, hi

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, int) or isinstance(v, bool):
            _fail(path, f"expected an integer, got {type(v).__name__}")
        if not self.lo <= v <= self.hi:
            _fail(path, f"integer out of range [{self.lo}, {self.hi}]")


class Num(Schema):
    """A non-negative number (int or float, never bool), finite."""

    def check(self, v: Any, path: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            _fail(path, "expected a non-negative number")


class Bool(Schema):
    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, bool):
            _fail(path, f"expected a bool, got {type(v).__name__}")


class Bytes(Schema):
    def __init__(self, max_len: int = MAX_BYTES) -> None:
        self.max_len = max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, bytes):
            _fail(path, f"expected bytes, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "bytes too long")


class Str(Schema):
    def __init__(self, max_len: int = MAX_STR, values: Iterable[str] | None = None) -> None:
        self.max_len = max_len
        self.values = frozenset(values) if values is not None else None

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, str):
            _fail(path, f"expected a string, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "string too long")
        if self.values is not None and v not in self.values:
            _fail(path, "unexpected value")


class Nullable(Schema):
    def __init__(self, inner: Schema) -> None:
        self.inner = inner

    def check(self, v: Any, path: str) -> None:
        if v is not None:
            self.inner.check(v, path)


class Tup(Schema):
    """An array of fixed length, one schema per position."""

    def __init__(self, *items: Schema) -> None:
        self.items = items

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        if len(v) != len(self.items):
            _fail(path, f"expected {len(self.items)} elements, got {len(v)}")
        for i, (item, schema) in enumerate(zip(v, self.items)):
            schema.check(item, f"{path}[{i}]")


class ListOf(Schema):
    def __init__(self, item: Schema, max_len: int = MAX_BATCH, min_len: int = 0) -> None:
        self.item, self.max_len, self.min_len = item, max_len, min_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        if not self.min_len <= len(v) <= self.max_len:
            _fail(path, f"array length {len(v)} out of [{self.min_len}, {self.max_len}]")
        for i, item in enumerate(v):
            self.item.check(item, f"{path}[{i}]")


class Map(Schema):
    """A map with string keys: `required` and `optional` fields with their schemas; other
    keys are refused unless `extra` (then their values are not looked at)."""

    def __init__(self, required: dict[str, Schema], optional: dict[str, Schema] | None = None,
                 extra: bool = False, max_len: int = 256) -> None:
        self.required, self.optional, self.extra, self.max_len = required, optional or {}, extra, max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            _fail(path, f"expected a map, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "map too large")
        for k in v:
            if not isinstance(k, str):
                _fail(path, "map key is not a string")
            if not self.extra and k not in self.required and k not in self.optional:
                _fail(path, f"unknown field {k[:40]!r}")
        for k, schema in self.required.items():
            if k not in v:
                _fail(path, f"missing field {k!r}")
            schema.check(v[k], f"{path}.{k}")
        for k, schema in self.optional.items():
            if k in v:
                schema.check(v[k], f"{path}.{k}")


class Opaque(Schema):
    """A map or array whose content the receiver validates itself (the auth state wire,
    a Raft message): only its type and top-level length are checked here."""

    def __init__(self, kind: type, max_len: int = MAX_BATCH) -> None:
        self.kind, self.max_len = kind, max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, self.kind):
            _fail(path, f"expected a {self.kind.__name__}, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "too large")


def AnyMap() -> Opaque:  # noqa: N802 - reads as a schema node
    return Opaque(dict)


class Func(Schema):
    """A check written as a function raising InvalidEntry (ops: entry_ops.py)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def check(self, v: Any, path: str) -> None:
        try:
            self.fn(v)
        except InvalidEntry as exc:
            _fail(path, str(exc)[:200])


class AnyOf(Schema):
    """The first alternative that matches (each is tried whole)."""

    def __init__(self, *options: Schema) -> None:
        self.options = options

    def check(self, v: Any, path: str) -> None:
        first: Malformed | None = None
        for option in self.options:
            try:
                option.check(v, path)
                return
            except Malformed as exc:
                first = first or exc
        assert first is not None
        raise first


class Reply(Tup):
    """[ctx, result | None, error | None, ...]: a reply holds a result or an error, never
    both and never neither (positions `result_at` and `result_at + 1`)."""

    def __init__(self, *items: Schema, result_at: int = 1) -> None:
        super().__init__(*items)
        self.result_at = result_at

    def check(self, v: Any, path: str) -> None:
        super().check(v, path)
        if (v[self.result_at] is None) == (v[self.result_at + 1] is None):
            _fail(path, "a reply must hold a result or an error")


# --- shared pieces -------------------------------------------------------------------------
U64 = Int()
I64 = Int(0, INT64_MAX)  # revisions, sizes: non-negative int64
ID = U64  # request, ctx and member ids
ERROR = Map({"code": Str(256), "message": Str(MAX_STR)},
            # details that receivers read (protocol/errors.py); others pass unread
            {"compact_revision": I64, "current_revision": I64, "leader_id": U64,
             "leader_client_urls": ListOf(Str(1024), MAX_LIST)},
            extra=True, max_len=64)
OPT_ERROR = Nullable(ERROR)
READ_OP = Func(validate_read_op)
MEMBER_OP = Func(validate_member_op)
URLS = ListOf(Str(1024), MAX_LIST)
KV = Map({"key": Bytes(), "value": Bytes(), "create_revision": I64, "mod_revision": I64,
          "version": I64, "lease": Int(-(2**63), INT64_MAX)})
EVENT = Tup(Str(16, ("PUT", "DELETE")), KV, Nullable(KV))
HISTORY_EVENT = Map({"type": Str(16, ("PUT", "DELETE")), "kv": KV}, {"prev_kv": KV})
HISTORY_RESPONSE = Map({
    "revisions": ListOf(Map({"revision": I64, "events": ListOf(HISTORY_EVENT)})),
    "more": Bool(),
    "last_revision": I64,
})
ALARMS = ListOf(Map({"member_id": U64, "alarm": Str(64)}), MAX_LIST)
MEMBER_WIRE = Map({"id": U64, "name": Str(1024), "peer_urls": URLS, "client_urls": URLS, "watch_urls": URLS,
                   "is_learner": Bool()}, extra=True)
CONSENSUS_STATUS = Map({
    "epoch": U64, "member_id": U64, "term": U64, "lead": U64, "state": Str(64), "commit": U64,
    "first_index": U64, "last_index": U64, "members": ListOf(MEMBER_WIRE, MAX_LIST), "is_learner": Bool(),
    "faults": Nullable(Str()),
}, extra=True)
STORAGE_STATUS = Map({
    "applied_index": U64, "revision": I64, "compact_revision": I64, "db_size": I64, "db_size_in_use": I64,
    "raft_term": U64, "alarms": ALARMS, "defragmenting": Bool(),
}, extra=True)
Z85 = Str(40)
AUTH = Tup(Str(256), U64)  # [user, auth_revision] (runtime/entry.py)
# A Raft message (raft/types.py Message.to_wire): an array; Message.from_wire checks it.
RAFT_WIRE = Opaque(list, 32)

# --- one schema per message type ---------------------------------------------------------
SCHEMAS: dict[int, Schema] = {
    M.PROPOSE: ListOf(Tup(ID, Bytes())),
    M.PROPOSE_ACK: Tup(U64, ListOf(ID), ListOf(Tup(ID, ERROR))),
    M.READ_INDEX: Tup(ID),
    M.READ_INDEX_RESP: Tup(ID, U64, OPT_ERROR),
    M.FETCH: Tup(U64, U64, Int(0, 1_000_000)),
    M.ENTRIES: Tup(ListOf(Tup(U64, U64, Int(0, 255), Bytes())), U64, U64),
    M.STATUS: Tup(ID),
    M.STATUS_RESP: Tup(ID, CONSENSUS_STATUS),
    M.READ: ListOf(Tup(ID, READ_OP, U64)),
    # READ is the watch actor's history catch-up: the response is a history page.
    M.READ_RESP: ListOf(Reply(ID, Nullable(HISTORY_RESPONSE), OPT_ERROR, I64, U64)),
    M.STORAGE_STATUS: Tup(ID),
    M.STORAGE_STATUS_RESP: Tup(ID, STORAGE_STATUS),
    # [req_id, op, min_applied_index, client_id, auth]: auth = None | [user, auth_revision]
    M.CLIENT_READ: ListOf(Tup(ID, READ_OP, U64, U64, Nullable(AUTH))),
    M.CLIENT_REPLIES: ListOf(Tup(ID, Bytes(), I64)),
    M.EVENTS: ListOf(Tup(I64, ListOf(EVENT))),
    M.READY: Tup(Str(64, ("consensus", "storage", "gateway", "watch")), Int(1, 2**31 - 1)),
    M.MOVE_LEADER: Tup(ID, U64),
    M.MOVE_LEADER_RESP: Tup(ID, OPT_ERROR),
    M.CHECKPOINT: Tup(ID),
    M.CHECKPOINT_RESP: Tup(ID, Nullable(Str(4096)), U64, OPT_ERROR),
    M.INSTALL: Tup(ID, Str(4096)),
    M.INSTALL_RESP: Tup(ID, U64, OPT_ERROR),
    M.HASH_KV: Tup(ID, I64),
    M.HASH_KV_RESP: Reply(ID, Nullable(Map({"hash": U64, "revision": I64, "compact_revision": I64})),
                          OPT_ERROR),
    M.LEADERSHIP: Tup(Bool(), U64, U64, URLS, U64, Bool()),  # ..., ready_index, sole_voter
    M.LEASE_PROPOSE: Tup(U64, ListOf(Bytes())),
    M.DEFRAG: Tup(ID),
    M.DEFRAG_RESP: Tup(ID, Nullable(Map({"took_s": Num(), "db_size_before": I64, "db_size_after": I64})),
                       OPT_ERROR),
    M.MEMBER: Tup(ID, MEMBER_OP),
    M.MEMBER_RESP: Tup(ID, Nullable(Map({"members": ListOf(MEMBER_WIRE, MAX_LIST)}, {"member": MEMBER_WIRE})),
                       OPT_ERROR),
    M.AUTH_STATE: Tup(AnyMap()),
    M.AUTH_TOKEN: ListOf(Tup(Str(64), Str(1024), Int(0, INT64_MAX), Nullable(Z85))),
    M.AUTH_STATE_GET: Tup(ID),
    # Peer envelopes (the first element is the sender's member id).
    M.PEER_RAFT: Tup(U64, ListOf(RAFT_WIRE)),
    M.PEER_FORWARD: Tup(U64, ListOf(Tup(U64, Bytes()))),
    M.PEER_FORWARD_REJECT: Tup(U64, ListOf(U64)),
    M.PEER_HELLO: Tup(U64, Map({"name": Str(1024), "client_urls": URLS, "watch_urls": URLS, "version": Str(64)},
                               extra=True)),
    M.PEER_SNAP_CHUNK: Tup(U64, U64, U64, Str(4096), U64, Bytes(), Bool(), Nullable(Bytes(1024)),
                           Nullable(RAFT_WIRE)),
    M.PEER_SNAP_ACK: Tup(U64, U64, U64, Str(16, ("ok", "done", "failed"))),
    M.PEER_MEMBER: Tup(U64, U64, MEMBER_OP),
    M.PEER_MEMBER_RESP: Tup(U64, U64, Nullable(AnyMap()), OPT_ERROR),
    M.PEER_JOIN: Tup(Int(0, 0)),
    M.PEER_JOIN_RESP: Tup(U64, ListOf(Tup(U64, Str(1024), URLS, Bool()), MAX_LIST)),
    M.PEER_REMOVED: Tup(U64),
}


def decode(frame: bytes, allowed: frozenset[int] | set[int] | None = None) -> tuple[int, Any]:
    """`(msg_type, body)` of an internal frame whose body matches its type's schema;
    `Malformed` otherwise (also for a type not in `allowed`, when given)."""
    if not isinstance(frame, bytes) or len(frame) < 2 or frame[0] != VERSION:
        raise Malformed("malformed internal frame: no version-1 header")
    if len(frame) > MAX_FRAME:
        raise Malformed("malformed internal frame: too large")
    msg_type = frame[1]
    schema = SCHEMAS.get(msg_type)
    if schema is None or (allowed is not None and msg_type not in allowed):
        raise Malformed(f"malformed internal frame: unexpected type {msg_type}")
    try:
        body = msgpack.unpackb(frame[2:], raw=False, strict_map_key=False, max_ext_len=0,
                               max_bin_len=MAX_BYTES, max_str_len=MAX_BYTES, max_array_len=MAX_FRAME,
                               max_map_len=MAX_FRAME)
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError, ...)
        raise Malformed(f"malformed internal frame: {type(exc).__name__}") from None
    try:
        schema.check(body, f"type {msg_type}")
    except RecursionError:
        raise Malformed("malformed internal frame: nested too deeply") from None
    return msg_type, body


class Dropped:
    """Counts the invalid messages an actor drops; logs at warning at most once per
    `interval_s` (with the count since the last line and the last reason)."""

    def __init__(self, log: Any, interval_s: float = 10.0) -> None:
        self.log = log
        self.interval_s = interval_s
        self.total = 0
        self._since = 0
        self._logged_at = -1e9

    def __call__(self, where: str, err: Exception) -> None:
        self.total += 1
        self._since += 1
        now = time.monotonic()
        if now - self._logged_at >= self.interval_s:
            self.log.warning("internal_message_dropped", where=where, count=self._since, total=self.total,
                             reason=str(err)[:200])
            self._since = 0
            self._logged_at = now
