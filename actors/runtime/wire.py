"""Encoding and one typed, validating decoder for every internal message (actors/runtime/messages.py).

`pack(msg)` encodes a message: version byte, `msg.TYPE`, the msgpack array of its fields
(of its items for a batch message). `decode(frame) -> msg` unpacks a frame with bounded
lengths, checks its body against the schemas of its class's fields (array lengths,
element types (a bool is never an int), integer ranges, string and byte lengths, list
lengths, map fields; ops inside messages are checked whole (actors/runtime/entry_ops.py))
and returns an instance of that class. Anything else raises `Malformed`: the receiver
drops the message and counts it (`Dropped`). A message that decodes is handled whole, so
an exception in a handler after `decode` is a bug and must propagate, never be taken for
garbage.

`decode(frame, allowed)` also refuses types that the receiving socket does not expect.

Peer messages (60-96) have envelope classes too; the Raft message inside PEER_RAFT
(`Message.from_wire`), snapshot chunk paths and member ops from peers are checked by the
consensus side (actors/consensus/peer_wire.py). The codec is pure (no I/O); `Dropped`
reads the clock for its rate limit.
"""
from __future__ import annotations

import time
from typing import Any

import msgpack  # type: ignore[import-untyped]

from actors.runtime import messages as M
from actors.runtime.messages import (  # noqa: F401 - the shared schemas, for callers and tests
    ALARMS, AUTH, ERROR, HISTORY_EVENT, HISTORY_RESPONSE, I64, ID, KV, MEMBER_OP, MEMBER_WIRE, OPT_ERROR,
    RAFT_WIRE, READ_OP, SCHEMAS, U64, URLS, Z85,
)
from actors.runtime.schema import (  # noqa: F401 - re-exported: the schema nodes lived here
    INT64_MAX, MAX_BATCH, MAX_BYTES, MAX_LIST, MAX_STR, UINT64_MAX, AnyMap, AnyOf, Bool, Bytes, Func, Int,
    ListOf, Map, Nullable, Num, Opaque, Schema, Str, Tup,
)
from protocol.errors import Malformed

VERSION = 1
MAX_FRAME = 256 * 1024 * 1024


def pack(msg: M.Message) -> bytes:
    """The frame of a typed message (a NamedTuple packs as the array of its fields)."""
    body: Any = msg[0] if getattr(msg, "BATCH", False) else msg  # type: ignore[index]  # a batch: its items
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes((VERSION, msg.TYPE)) + data


def decode(frame: bytes, allowed: frozenset[int] | set[int] | None = None) -> Any:
    """The typed message (actors/runtime/messages.py) of an internal frame whose body
    matches its class's schema; `Malformed` otherwise (also for a type not in `allowed`,
    when given). Typed `Any` so that a handler names the class it was dispatched."""
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
        loaded = schema.fast_load(body, f"type {msg_type}")
    except RecursionError:
        raise Malformed("malformed internal frame: nested too deeply") from None
    cls = M.CLASSES[msg_type]
    return cls(loaded) if getattr(cls, "BATCH", False) else loaded


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
