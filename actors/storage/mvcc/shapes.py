"""The shapes of what the MVCC store takes and gives (protocol/SPEC.md): names for mypy.

Rules:
- types only: nothing here runs;
- an op and a response are msgpack maps whose fields depend on the op (SPEC sections 3
  and 4; ``protocol.requests.normalize_request`` makes an op's fields present and typed),
  so they are ``dict[str, Any]``; a KeyValue has fixed fields, so it is a TypedDict.
"""
from __future__ import annotations

from typing import Any, TypedDict

# A normalized request op: {"op": "range" | "put" | "delete_range" | "txn" | ..., ...}.
Op = dict[str, Any]
# An op's result per SPEC (no header): {"kvs": [...], "count": ...}, {"deleted": ...}, ...
Response = dict[str, Any]
# A stored record: the msgpack array [value, create_revision, mod_revision, version, lease].
Record = list[Any]


class KeyValue(TypedDict):
    """SPEC's KeyValue map (a DELETE event's kv: key and mod_revision, the rest 0/empty)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int
