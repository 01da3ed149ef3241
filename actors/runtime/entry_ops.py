"""Validation of the op a committed Raft entry carries (actors/runtime/entry.py holds the
envelope), and of the ops the gateway hands storage for reads.

`validate_entry_op(op)` accepts exactly the ops that may be in the log, in the shape their
producers write them, and raises `InvalidEntry` (with a reason) on anything else:
- client writes, as `protocol.requests.normalize_request` returns them: put, delete_range,
  txn (nested up to MAX_TXN_DEPTH, etcd's duplicate-key rule; the top level carries
  `max_txn_keys`, the proposing gateway's --max-txn-keys that the store enforces, absent
  only in entries written before that rule), compact, lease_grant (id and TTL already
  filled in by the gateway), lease_revoke, alarm_activate, alarm_disarm (`exact` only
  when true);
- ops only the server writes: lease_expire and lease_checkpoint (the leader's storage),
  compact (auto-compaction), alarm_activate (the gateway's quota, disk and corruption
  checks: the same shape as a client's);
- auth changes (design-11): the AUTH_WRITE ops with `password` as a scrypt hash wire
  map (or None), and the gateway's `authenticate` entry (`name`, `token_sha256`,
  `auth_revision`, `key`, `issued`).

Every field must be present with its exact type (bool is never an int, ints are within
int64 or uint64 as the store needs), and no other field may be there: whatever passes is
an op the store applies without a KeyError or an assertion, so a failure there is a bug.
`normalize_request` is not used for this: it is not idempotent on its own output (txn
branches are `{"op": ...}` maps once normalized, a lease id is `ID` on the wire and `id`
after, user_add's password becomes a hash), so the checks here follow the normalized
shape and share normalize_request's constants; tests check that every op it returns
passes. The limits that are member configuration (--max-txn-ops, --max-request-bytes)
are not checked: they differ between members, and validation must give the same answer
on every member.

Pure: no I/O, deterministic.
"""
from __future__ import annotations

import re
from typing import Any

from actors.runtime.entry import InvalidEntry
from protocol import requests as R

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
ALARM_TYPES = ("NOSPACE", "CORRUPT")
NAME_MAX_BYTES = 256  # user and role names (design-11, protocol/requests.py's auth_name)
Z85_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
HASH_ALG = "scrypt"
HASH_FIELDS = frozenset(("alg", "n", "r", "p", "salt", "hash"))
HASH_BYTES_MAX = 64  # salt and hash (the auth core bounds them more tightly at apply)

PERM_TYPES = ("READ", "WRITE", "READWRITE")
AUTH_WRITE_OPS = ("auth_enable", "auth_disable", "user_add", "user_delete", "user_change_password",
                  "user_grant_role", "user_revoke_role", "role_add", "role_delete",
                  "role_grant_permission", "role_revoke_permission")
AUTH_ENTRY_OPS = frozenset((*AUTH_WRITE_OPS, "authenticate"))
AUTH_READ_OPS = ("auth_status", "user_get", "user_list", "role_get", "role_list")


# --- field checks ------------------------------------------------------------------------
def _fields(op: dict, expected: tuple[str, ...], where: str) -> None:
    keys = set(op)
    want = set(expected)
    if keys != want:
        missing = sorted(str(k) for k in want - keys)
        extra = sorted(repr(k)[:40] for k in keys - want)
        raise InvalidEntry(f"{where}: missing fields {missing}, unknown fields {extra}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(op: dict, name: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    v = op[name]
    if not _is_int(v):
        raise InvalidEntry(f"{name}: must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise InvalidEntry(f"{name}: {v} is out of range [{lo}, {hi}]")
    return v


def _bool(op: dict, name: str) -> bool:
    v = op[name]
    if not isinstance(v, bool):
        raise InvalidEntry(f"{name}: must be a bool, got {type(v).__name__}")
    return v


def _bytes(op: dict, name: str, nonempty: bool = False) -> bytes:
    v = op[name]
    if not isinstance(v, bytes):
        raise InvalidEntry(f"{name}: must be bytes, got {type(v).__name__}")
    if nonempty and not v:
        raise InvalidEntry(f"{name}: must not be empty")
    return v


def _enum(op: dict, name: str, values: tuple[str, ...]) -> str:
    v = op[name]
    if not isinstance(v, str) or v not in values:
        raise InvalidEntry(f"{name}: must be one of {', '.join(values)}, got {_short(v)}")
    return v


def _list(op: dict, name: str) -> list:
    v = op[name]
    if not isinstance(v, list):
        raise InvalidEntry(f"{name}: must be an array, got {type(v).__name__}")
    return v


def _short(v: Any) -> str:
    try:
        s = repr(v)
    except (RecursionError, ValueError):
        return f"<{type(v).__name__}>"
    return s if len(s) <= 40 else s[:37] + "..."


def _kind(op: Any) -> str:
    if not isinstance(op, dict):
        raise InvalidEntry(f"op must be a map, got {type(op).__name__}")
    kind = op.get("op")
    if not isinstance(kind, str):
        raise InvalidEntry("op has no kind")
    return kind


# --- KV ops --------------------------------------------------------------------------------
_RANGE_FIELDS = ("op", *R._RANGE_FIELDS)
_PUT_FIELDS = ("op", *R._PUT_FIELDS)
_DELETE_FIELDS = ("op", *R._DELETE_FIELDS)
_TXN_FIELDS = ("op", *R._TXN_FIELDS)


def _range(op: dict) -> None:
    _fields(op, _RANGE_FIELDS, "range")
    _bytes(op, "key", nonempty=True)
    _bytes(op, "range_end")
    for name in ("limit", "revision", "min_mod_revision", "max_mod_revision", "min_create_revision",
                 "max_create_revision"):
        _int(op, name)
    _enum(op, "sort_order", R.SORT_ORDERS)
    _enum(op, "sort_target", R.SORT_TARGETS)
    for name in ("serializable", "keys_only", "count_only"):
        _bool(op, name)


def _put(op: dict) -> None:
    _fields(op, _PUT_FIELDS, "put")
    _bytes(op, "key", nonempty=True)
    value = _bytes(op, "value")
    lease = _int(op, "lease", INT64_MIN)
    for name in ("prev_kv", "ignore_value", "ignore_lease"):
        _bool(op, name)
    if op["ignore_value"] and value:
        raise InvalidEntry("put: ignore_value with a value")
    if op["ignore_lease"] and lease:
        raise InvalidEntry("put: ignore_lease with a lease")


def _delete_range(op: dict) -> None:
    _fields(op, _DELETE_FIELDS, "delete_range")
    _bytes(op, "key", nonempty=True)
    _bytes(op, "range_end")
    _bool(op, "prev_kv")


def _compare(cmp: Any) -> None:
    if not isinstance(cmp, dict):
        raise InvalidEntry("txn: a compare must be a map")
    target = cmp.get("target")
    if not isinstance(target, str) or target not in R.COMPARE_TARGET_FIELD:
        raise InvalidEntry(f"compare: target must be one of {', '.join(R.COMPARE_TARGETS)}, got {_short(target)}")
    field = R.COMPARE_TARGET_FIELD[target]
    _fields(cmp, ("target", "result", "key", "range_end", field), "compare")
    _enum(cmp, "result", R.COMPARE_RESULTS)
    _bytes(cmp, "key", nonempty=True)
    _bytes(cmp, "range_end")
    if field == "value":
        _bytes(cmp, field)
    else:
        _int(cmp, field, INT64_MIN)


def _txn(op: dict, depth: int) -> None:
    if depth >= R.MAX_TXN_DEPTH:
        raise InvalidEntry(f"txn: nested more than {R.MAX_TXN_DEPTH} levels")
    _fields(op, _TXN_FIELDS, "txn")
    for cmp in _list(op, "compare"):
        _compare(cmp)
    for branch in ("success", "failure"):
        for sub in _list(op, branch):
            kind = _kind(sub)
            if kind == "range":
                _range(sub)
            elif kind == "put":
                _put(sub)
            elif kind == "delete_range":
                _delete_range(sub)
            elif kind == "txn":
                _txn(sub, depth + 1)
            else:
                raise InvalidEntry(f"txn: {_short(kind)} cannot be in a txn")


def _txn_top(op: dict) -> None:
    if "max_txn_keys" in op:  # absent in entries written before the rule (no limit)
        _int(op, "max_txn_keys", 1)
        op = {k: v for k, v in op.items() if k != "max_txn_keys"}
    _txn(op, 0)
    try:
        R._check_txn_duplicates(op)
    except R.QkvError as err:  # DuplicateKey
        raise InvalidEntry(f"txn: {err.message}") from None


# --- compaction, leases, alarms -----------------------------------------------------------
def _compact(op: dict) -> None:
    _fields(op, ("op", "revision", "physical"), "compact")
    _int(op, "revision")
    _bool(op, "physical")


def _lease_grant(op: dict) -> None:
    _fields(op, ("op", "ttl", "id"), "lease_grant")
    _int(op, "ttl", 0, R.LEASE_TTL_MAX)
    _int(op, "id", 1)  # the gateway picked it before proposing


def _lease_id_op(op: dict) -> None:  # lease_revoke, lease_expire
    _fields(op, ("op", "id"), op["op"])
    _int(op, "id", 1)


def _lease_checkpoint(op: dict) -> None:
    _fields(op, ("op", "checkpoints"), "lease_checkpoint")
    for item in _list(op, "checkpoints"):
        if not isinstance(item, list) or len(item) != 2:
            raise InvalidEntry("lease_checkpoint: a checkpoint must be [id, remaining_ms]")
        lease_id, remaining = item
        if not _is_int(lease_id) or not 0 < lease_id <= INT64_MAX:
            raise InvalidEntry("lease_checkpoint: bad lease id")
        if not _is_int(remaining) or not 0 <= remaining <= INT64_MAX:
            raise InvalidEntry("lease_checkpoint: bad remaining_ms")


def _alarm_activate(op: dict) -> None:
    _fields(op, ("op", "member_id", "alarm"), "alarm_activate")
    _int(op, "member_id", 0, UINT64_MAX)
    _enum(op, "alarm", ALARM_TYPES)


def _alarm_disarm(op: dict) -> None:
    # "exact" (only ever True, and then with a type) is in the entries of etcd's DEACTIVATE
    if "exact" in op:
        _fields(op, ("op", "member_id", "alarm", "exact"), "alarm_disarm")
        if op["exact"] is not True:
            raise InvalidEntry("alarm_disarm: exact must be true when present")
        _enum(op, "alarm", ALARM_TYPES)
    else:
        _fields(op, ("op", "member_id", "alarm"), "alarm_disarm")
        _enum(op, "alarm", ("", *ALARM_TYPES))
    _int(op, "member_id", 0, UINT64_MAX)


# --- auth (design-11) ----------------------------------------------------------------------
def _name(op: dict, field: str) -> None:
    v = op[field]
    if not isinstance(v, str) or not v:
        raise InvalidEntry(f"{field}: must be a non-empty string")
    if len(v.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise InvalidEntry(f"{field}: longer than {NAME_MAX_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise InvalidEntry(f"{field}: must not contain control characters")


def is_z85_key(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 40 and all(c in Z85_CHARS for c in v)


def _z85_or_none(op: dict, field: str) -> None:
    v = op[field]
    if v is not None and not is_z85_key(v):
        raise InvalidEntry(f"{field}: must be a Z85 public key (40 characters) or nil")


def _hash_or_none(op: dict) -> None:
    """A password in the log: the scrypt hash wire map computed at the gateway, or None.
    Only the shape is checked here; the auth core bounds the parameters when it applies."""
    w = op["password"]
    if w is None:
        return
    if not isinstance(w, dict) or set(w) != HASH_FIELDS:
        raise InvalidEntry("password: must be a hash map {alg, n, r, p, salt, hash} or nil")
    if w["alg"] != HASH_ALG:
        raise InvalidEntry("password: unknown hash algorithm")
    for name in ("n", "r", "p"):
        _int(w, name, 1, 2**32)
    for name in ("salt", "hash"):
        v = _bytes(w, name, nonempty=True)
        if len(v) > HASH_BYTES_MAX:
            raise InvalidEntry(f"password: {name} longer than {HASH_BYTES_MAX} bytes")


def _auth(op: dict) -> None:
    kind = op["op"]
    if kind in ("auth_enable", "auth_disable"):
        _fields(op, ("op",), kind)
    elif kind in ("user_delete", "role_add", "role_delete"):
        _fields(op, ("op", "name"), kind)
        _name(op, "name")
    elif kind == "user_add":
        _fields(op, ("op", "name", "password", "no_password", "public_key"), kind)
        _name(op, "name")
        _hash_or_none(op)
        _bool(op, "no_password")
        _z85_or_none(op, "public_key")
    elif kind == "user_change_password":
        _fields(op, ("op", "name", "password"), kind)
        _name(op, "name")
        _hash_or_none(op)
    elif kind in ("user_grant_role", "user_revoke_role"):
        _fields(op, ("op", "name", "role"), kind)
        _name(op, "name")
        _name(op, "role")
    elif kind == "role_grant_permission":
        _fields(op, ("op", "name", "perm"), kind)
        _name(op, "name")
        perm = op["perm"]
        if not isinstance(perm, dict):
            raise InvalidEntry("perm: must be a map")
        _fields(perm, ("perm_type", "key", "range_end"), "perm")
        _enum(perm, "perm_type", PERM_TYPES)
        _bytes(perm, "key")
        _bytes(perm, "range_end")
    elif kind == "role_revoke_permission":
        _fields(op, ("op", "name", "key", "range_end"), kind)
        _name(op, "name")
        _bytes(op, "key", nonempty=True)
        _bytes(op, "range_end")
    else:  # authenticate
        _fields(op, ("op", "name", "token_sha256", "auth_revision", "key", "issued"), kind)
        _name(op, "name")
        _int(op, "issued", 0, INT64_MAX)  # wall-clock s, set by the proposing gateway
        token = op["token_sha256"]
        if not isinstance(token, str) or not _SHA256_HEX.fullmatch(token):
            raise InvalidEntry("token_sha256: must be 64 lower-case hex digits")
        _int(op, "auth_revision", 0, UINT64_MAX)
        _z85_or_none(op, "key")


_ENTRY_CHECKS = {
    "put": _put,
    "delete_range": _delete_range,
    "txn": _txn_top,
    "compact": _compact,
    "lease_grant": _lease_grant,
    "lease_revoke": _lease_id_op,
    "lease_expire": _lease_id_op,
    "lease_checkpoint": _lease_checkpoint,
    "alarm_activate": _alarm_activate,
    "alarm_disarm": _alarm_disarm,
    **{kind: _auth for kind in AUTH_ENTRY_OPS},
}
ENTRY_OPS = frozenset(_ENTRY_CHECKS)


def validate_entry_op(op: Any) -> dict:
    """The op of a committed entry, checked whole; `InvalidEntry` (a reason) otherwise."""
    kind = _kind(op)
    check = _ENTRY_CHECKS.get(kind)
    if check is None:
        raise InvalidEntry(f"{_short(kind)} is not an op of the log")
    try:
        check(op)
    except RecursionError:
        raise InvalidEntry("op is nested too deeply") from None
    return op


# --- reads the gateway hands storage (READ, CLIENT_READ) ----------------------------------
def _history(op: dict) -> None:
    _fields(op, ("op", *R._HISTORY_FIELDS, "serializable"), "history")
    _bytes(op, "key", nonempty=True)
    _bytes(op, "range_end")
    for name in ("start_revision", "end_revision", "limit_revisions"):
        _int(op, name)
    for name in ("prev_kv", "no_put", "no_delete", "serializable"):
        _bool(op, name)


def _snapshot(op: dict) -> None:
    _fields(op, ("op", "snapshot_id", "offset", "max_bytes", "serializable"), "snapshot")
    for name in ("snapshot_id", "offset", "max_bytes"):
        _int(op, name)
    _bool(op, "serializable")


def _lease_read(op: dict) -> None:
    kind = op["op"]
    if kind == "lease_leases":
        _fields(op, ("op",), kind)
    elif kind == "lease_timetolive":
        _fields(op, ("op", "id", "keys"), kind)
        _int(op, "id", 1)
        _bool(op, "keys")
    else:  # lease_keepalive
        _fields(op, ("op", "id"), kind)
        _int(op, "id", 1)


def _auth_read(op: dict) -> None:
    kind = op["op"]
    if kind in ("user_get", "role_get"):
        _fields(op, ("op", "name"), kind)
        _name(op, "name")
    else:
        _fields(op, ("op",), kind)


_READ_CHECKS = {
    "range": _range,
    "history": _history,
    "snapshot": _snapshot,
    "alarm_list": lambda op: _fields(op, ("op",), "alarm_list"),
    "lease_leases": _lease_read,
    "lease_timetolive": _lease_read,
    "lease_keepalive": _lease_read,
    **{kind: _auth_read for kind in AUTH_READ_OPS},
}
READ_OPS = frozenset(_READ_CHECKS)


def validate_read_op(op: Any) -> dict:
    """An op storage serves as a read (READ / CLIENT_READ), checked whole."""
    kind = _kind(op)
    check = _READ_CHECKS.get(kind)
    if check is None:
        raise InvalidEntry(f"{_short(kind)} is not a read")
    try:
        check(op)
    except RecursionError:
        raise InvalidEntry("op is nested too deeply") from None
    return op


# --- membership ops the gateway hands consensus (MEMBER) ------------------------------------
def validate_member_op(op: Any) -> dict:
    """member_add {name, peer_urls, is_learner[, peer_key]} / member_update {member_id,
    peer_urls} / member_remove, member_promote {member_id}, as normalize_request makes them
    (peer_key: design-11's Z85 key, "" when unknown)."""
    kind = _kind(op)
    if kind not in R.MEMBER_CHANGE_OPS:
        raise InvalidEntry(f"{_short(kind)} is not a member op")
    if kind == "member_add":
        fields = ("op", "name", "peer_urls", "is_learner")
        _fields(op, (*fields, "peer_key") if "peer_key" in op else fields, kind)
        _name(op, "name")
        _bool(op, "is_learner")
        if "peer_key" in op and op["peer_key"] not in ("", None) and not is_z85_key(op["peer_key"]):
            raise InvalidEntry("peer_key: must be a Z85 public key")
    elif kind == "member_update":
        _fields(op, ("op", "member_id", "peer_urls"), kind)
    else:
        _fields(op, ("op", "member_id"), kind)
    if kind != "member_add":
        _int(op, "member_id", 1, UINT64_MAX)
    if kind in ("member_add", "member_update"):
        urls = _list(op, "peer_urls")
        if not 0 < len(urls) <= 16 or not all(isinstance(u, str) and R._PEER_URL.fullmatch(u) for u in urls):
            raise InvalidEntry("peer_urls: must be 1 to 16 tcp://host:port URLs")
    return op
