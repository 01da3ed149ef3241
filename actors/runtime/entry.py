"""The Raft log entry of a client or server write: typed and versioned.

Wire (msgpack array), version 1:
    [1, origin_member_id, req_id, client_id, auth, op]
- origin_member_id (uint64) and req_id (uint64): the member whose gateway took the
  request and its id there, so that member's storage returns the result; 0, 0 for
  entries the server writes itself (lease expiry, checkpoints, auto-compaction).
- client_id: the client's request id, echoed in the reply (any msgpack scalar).
- auth: None, or [user, auth_revision]: who asked and the auth revision the gateway
  saw; checked again when the entry applies (etcd's auth_revision).
- op: the normalized op map (protocol/requests.py).

Version 0 (before issue 11, still in the logs of upgraded members): `[origin_member_id,
req_id, op, client_id]`, 4 elements; `decode` reads it too (auth None), so an upgraded
member replays its log.

`decode` checks the envelope; the op itself is validated by `entry_ops.validate_entry_op`
where it applies. A committed entry that fails either is applied as an error on every
member, never skipped and never a crash. Nothing here performs I/O.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import msgpack  # type: ignore[import-untyped]

VERSION = 1
UINT64_MAX = 2**64 - 1
MAX_USER_LEN = 256


class InvalidEntry(ValueError):
    """A committed entry that is not a valid entry (envelope or op); the reason is the message."""


class Entry(NamedTuple):
    origin: int
    req_id: int
    client_id: Any
    auth: tuple[str, int] | None
    op: dict


def encode(origin: int, req_id: int, client_id: Any, auth: tuple[str, int] | None, op: dict) -> bytes:
    return msgpack.packb([VERSION, origin, req_id, client_id, list(auth) if auth else None, op], use_bin_type=True)


def _uint64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX


def decode(data: bytes) -> Entry:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as exc:
        raise InvalidEntry(f"undecodable entry: {type(exc).__name__}") from None
    if not isinstance(obj, list):
        raise InvalidEntry("not a version-1 entry")
    if len(obj) == 4:  # version 0: [origin, req_id, op, client_id], no auth
        origin, req_id, op, client_id = obj
        auth = None
    elif len(obj) == 6 and obj[0] == VERSION and _uint64(obj[0]):
        _, origin, req_id, client_id, auth, op = obj
    else:
        raise InvalidEntry("not a version-1 entry")
    if (type(origin) is not int or type(req_id) is not int  # the usual case decided in one test
            or not (0 <= origin <= UINT64_MAX and 0 <= req_id <= UINT64_MAX)):
        if not _uint64(origin) or not _uint64(req_id):
            raise InvalidEntry("bad origin or request id")
    if isinstance(client_id, (list, dict)):
        raise InvalidEntry("bad client id")
    if auth is not None:
        if (not isinstance(auth, list) or len(auth) != 2 or not isinstance(auth[0], str)
                or not 0 < len(auth[0]) <= MAX_USER_LEN or not _uint64(auth[1])):
            raise InvalidEntry("bad auth")
        auth = (auth[0], auth[1])
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise InvalidEntry("entry holds no op")
    return Entry(origin, req_id, client_id, auth, op)
