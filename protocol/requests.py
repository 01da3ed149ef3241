"""Validation and normalization of client requests (protocol/SPEC.md sections 3 and 4).

Rules: pure (no I/O); whatever comes in, only ``QkvError`` subclasses go out.

``normalize_request(req, limits)`` takes a decoded request map without its ``id`` and
returns an op dict with every field of the op present and typed:
- keys and values are ``bytes`` (a ``str`` is taken as its UTF-8 bytes);
- integers are ``int`` (never ``bool``), within int64 (uint64 nowhere here);
- flags are ``bool`` (never ``int``);
- enums are SPEC's upper-case strings (input is matched case-insensitively);
- txn branches hold normalized ops ``{"op": "range"|"put"|"delete_range"|"txn", ...}``;
- a compare is ``{"target", "result", "key", "range_end", <target field>}`` where the
  target field is ``version``/``create_revision``/``mod_revision``/``value``/``lease``.

Checked here, before anything runs: unknown op, types, unknown fields, enums, negative
revisions and limits, ``ignore_value``/``ignore_lease`` with a value/lease, missing keys,
``--max-txn-ops`` (each of compare/success/failure at every level), the whole-tree rule
(the compares and ops of every level of a txn together at most TXN_TREE_FACTOR x
``--max-txn-ops``; nesting at most MAX_TXN_DEPTH levels; SPEC ``txn``) and etcd's
duplicate key rule (``checkIntervals`` in etcd's ``server/etcdserver/api/v3rpc/key.go``). One
deliberate difference from etcd there: a delete whose ``range_end`` is ``"\\x00"`` (every
key >= ``key``) is treated as the unbounded interval it is; etcd's interval tree treats it
as empty and so misses a put inside it.

Cost: validation is O(request size) (the duplicate rule O(n log n)) and stops at the
first item past a limit, so a request that breaks a rule costs no more than one that
just keeps to it. A normalized top-level txn carries ``max_txn_keys`` (``Limits``, the
member's --max-txn-keys): the storage actor of every member bounds the keys the txn may
examine with that number from the entry, so the answer is the same everywhere.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from protocol.errors import (
    DuplicateKey,
    InvalidArgument,
    InvalidAuthMgmt,
    KeyNotProvided,
    Malformed,
    QkvError,
    TooManyOps,
    UnknownOp,
    UserEmpty,
)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Nesting: a txn holds txns at most this many levels deep (the top level is 1). Kept at the
# value the log has always had: actors/runtime/entry_ops.py refuses deeper entries at apply,
# so a larger value would need every member upgraded first.
MAX_TXN_DEPTH = 8
# Whole tree: the compares and ops of every level of one txn together are at most this
# many times --max-txn-ops (1,024 by default). etcd's per-level rule alone lets a request
# nest 128 x 3 items at each of its levels; this bounds the total work validation and
# apply can be asked for, and still leaves a full top level (3 x 128) plus room to nest.
TXN_TREE_FACTOR = 8

SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")
COMPARE_TARGETS = ("VERSION", "CREATE", "MOD", "VALUE", "LEASE")
COMPARE_RESULTS = ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
# The Compare field that holds the operand for each target.
COMPARE_TARGET_FIELD = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}

# Cluster and maintenance ops: answered by the node's actors, never through the log.
ADMIN_OPS = ("status", "member_list", "move_leader", "hash_kv", "defragment", "member_add", "member_remove",
             "member_update", "member_promote")
MEMBER_CHANGE_OPS = ("member_add", "member_remove", "member_update", "member_promote")
# Alarms (SPEC section 3, "Maintenance and alarms"): list is a linearizable read; activate
# and disarm go through the log (etcd applies every AlarmRequest through raft). The server
# writes alarm_activate too (quota check, full disk, corruption check), as its own entry.
ALARM_OPS = ("alarm_list", "alarm_activate", "alarm_disarm")
ALARM_TYPES = ("NOSPACE", "CORRUPT")
# Lease ops (SPEC section 3, "Leases"). Grant and revoke go through the log; keep-alive
# and time-to-live are answered by the leader's storage from its deadlines; leases is a
# linearizable read of the lease table.
LEASE_OPS = ("lease_grant", "lease_revoke", "lease_keepalive", "lease_timetolive", "lease_leases")
LEASE_LEADER_OPS = frozenset(("lease_keepalive", "lease_timetolive"))
# Log entries only the server writes (the leader's storage proposes them): never accepted
# from a client, since they are not in OPS.
INTERNAL_OPS = frozenset(("lease_expire", "lease_checkpoint"))
# `snapshot save` (SPEC section 6): one member's store, streamed chunk by chunk like a read.
SNAPSHOT_OPS = ("snapshot",)
# Users, roles and permissions (SPEC section "Authentication", etcd 3.4's auth). The
# changes go through the log (AUTH_WRITE_OPS are in WRITE_OPS); the reads are linearizable
# reads answered by storage. `authenticate` is neither: the gateway verifies the password
# and proposes its own entry {"op": "authenticate", "name", "token_sha256",
# "auth_revision", "key"}; the plaintext password never enters the log, and user_add /
# user_change_password entries carry the scrypt hash in place of the password.
AUTH_WRITE_OPS = ("auth_enable", "auth_disable", "user_add", "user_delete", "user_change_password",
                  "user_grant_role", "user_revoke_role", "role_add", "role_delete",
                  "role_grant_permission", "role_revoke_permission")
AUTH_READ_OPS = ("auth_status", "user_get", "user_list", "role_get", "role_list")
AUTH_OPS = ("authenticate", *AUTH_WRITE_OPS, *AUTH_READ_OPS)
PERM_TYPES = ("READ", "WRITE", "READWRITE")
AUTH_NAME_MAX_BYTES = 256
AUTH_PASSWORD_MAX_BYTES = 1024
AUTH_TOKEN_MAX_CHARS = 512
# Every request map may carry the token `authenticate` gave: an envelope field like `id`,
# never part of the normalized op (so never in the log).
TOKEN_FIELD = "token"
OPS = ("range", "put", "delete_range", "txn", "compact", "history", *ADMIN_OPS, *LEASE_OPS, *ALARM_OPS,
       *SNAPSHOT_OPS, *AUTH_OPS)
TXN_OPS = ("range", "put", "delete_range", "txn")
WRITE_OPS = frozenset(("put", "delete_range", "txn", "compact", "lease_grant", "lease_revoke",
                       "alarm_activate", "alarm_disarm", *AUTH_WRITE_OPS))
LEASE_TTL_MAX = 9_000_000_000  # seconds, etcd's MaxLeaseTTL


@dataclass(frozen=True)
class Limits:
    max_txn_ops: int = 128
    max_txn_keys: int = 5_000  # written into each txn for the apply (SPEC `txn`); nodes/config.py


# `snapshot` chunks: the client asks for up to max_bytes (0 = the default); the server
# keeps every reply frame within --max-request-bytes (chunk <= limit - overhead).
SNAPSHOT_CHUNK_DEFAULT = 1024 * 1024
SNAPSHOT_CHUNK_MIN = 4096
SNAPSHOT_FRAME_OVERHEAD = 4096


def is_write(op: dict) -> bool:
    """True for ops that must go through the log (put, delete_range, txn, compact,
    lease_grant, lease_revoke, alarm_activate, alarm_disarm and the auth changes)."""
    return op.get("op") in WRITE_OPS


def request_token(req: Any) -> str | None:
    """The ``token`` envelope field of a decoded request: a non-empty str, or None when
    absent (or nil). ``normalize_request`` checks it the same way and leaves it out of the
    op it returns; the gateway reads it with this function."""
    if not isinstance(req, dict):
        return None
    token = req.get(TOKEN_FIELD)
    if token is None:
        return None
    if not isinstance(token, str) or not token or len(token) > AUTH_TOKEN_MAX_CHARS:
        got = f"{len(token)} characters" if isinstance(token, str) else _short(token)
        raise InvalidArgument(f"token: must be a non-empty string of at most {AUTH_TOKEN_MAX_CHARS} "
                              f"characters, got {got}")
    return token


def normalize_request(req: dict, limits: Limits) -> dict:
    """Validate a decoded request (without ``id``) and return its normalized op dict."""
    try:
        return _normalize_request(req, limits)
    except QkvError:
        raise
    except RecursionError:
        raise InvalidArgument("request is nested too deeply") from None
    except Exception as exc:  # a bug here must still answer with a protocol error
        raise InvalidArgument(f"invalid request: {type(exc).__name__}") from None


def _normalize_request(req: Any, limits: Limits) -> dict:
    if not isinstance(req, dict):
        raise Malformed("malformed request: not a map")
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise UnknownOp(f"unknown op: {_short(op)}")
    request_token(req)
    fields = {k: v for k, v in req.items() if k not in ("op", TOKEN_FIELD)}
    if op in AUTH_OPS:
        return _normalize_auth(op, fields)
    if op in ("status", "member_list", "defragment", "alarm_list"):
        _no_unknown(fields, (), op)
        return {"op": op}
    if op == "snapshot":
        return _normalize_snapshot(fields)
    if op in MEMBER_CHANGE_OPS:
        return _normalize_member(op, fields)
    if op == "move_leader":
        _no_unknown(fields, ("target_id",), op)
        target = fields.get("target_id")
        if isinstance(target, bool) or not isinstance(target, int) or not 0 < target < 2**64:
            raise InvalidArgument(f"move_leader: target_id must be a member id (uint64), got {_short(target)}")
        return {"op": op, "target_id": target}
    if op == "hash_kv":
        _no_unknown(fields, ("revision",), op)
        return {"op": op, "revision": _int(fields, "revision", nonneg=True)}
    if op == "history":
        return _normalize_history(fields)
    if op in ("alarm_activate", "alarm_disarm"):
        return _normalize_alarm(op, fields)
    if op in LEASE_OPS:
        return _normalize_lease(op, fields)
    if op == "compact":
        _no_unknown(fields, ("revision", "physical"), "compact")
        if "revision" not in fields:
            raise InvalidArgument("compact: revision is required")
        return {
            "op": "compact",
            "revision": _int(fields, "revision", nonneg=True),
            "physical": _bool(fields, "physical"),
        }
    out = _normalize_kv_op(op, fields, limits, depth=0, tally=_Tally(limits.max_txn_ops * TXN_TREE_FACTOR))
    if op == "txn":
        _check_txn_duplicates(out)
        out["max_txn_keys"] = limits.max_txn_keys
    return out


# --- alarms (SPEC section 3, "Maintenance and alarms") ------------------------------------
def _normalize_alarm(op: str, fields: dict) -> dict:
    """``alarm_activate`` {member_id, alarm}: any uint64 member id (0 too: etcd keeps an alarm
    for whatever id it is given), a type required. ``alarm_disarm`` {member_id, alarm,
    exact}: member_id 0 = every member and alarm "" = every type, unless ``exact`` (then
    exactly that member, 0 too, and that type: etcd's DEACTIVATE); ``exact`` is in the
    normalized op only when true, so the entries of a plain disarm stay as they were."""
    allowed = ("member_id", "alarm", "exact") if op == "alarm_disarm" else ("member_id", "alarm")
    _no_unknown(fields, allowed, op)
    member = fields.get("member_id", 0)
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < 2**64:
        raise InvalidArgument(f"{op}: member_id must be a member id (uint64), got {_short(member)}")
    exact = _bool(fields, "exact")
    alarm = fields.get("alarm", "")
    required = op == "alarm_activate" or exact
    if not isinstance(alarm, str) or (alarm or required) and alarm.upper() not in ALARM_TYPES:
        raise InvalidArgument(f"{op}: alarm must be one of {', '.join(ALARM_TYPES)}"
                              f"{'' if required else ' (or absent: every type)'}, got {_short(alarm)}")
    out = {"op": op, "member_id": member, "alarm": alarm.upper()}
    if exact:
        out["exact"] = True
    return out


# --- leases (SPEC section 3, "Leases") ---------------------------------------------------
# The lease id travels as "ID" (etcd's protobuf name): the envelope's "id" is the request
# id. Normalized ops carry it as "id".
LEASE_ID_FIELD = "ID"


def _lease_id(fields: dict, op: str, required: bool = True) -> int:
    lease_id = _int(fields, LEASE_ID_FIELD, nonneg=True)
    if required and lease_id == 0:
        raise InvalidArgument(f"{op}: ID must be a lease id (int64 > 0)")
    return lease_id


def _normalize_lease(op: str, fields: dict) -> dict:
    if op == "lease_grant":
        _no_unknown(fields, ("ttl", LEASE_ID_FIELD), op)
        ttl = _int(fields, "ttl", nonneg=True)
        if ttl > LEASE_TTL_MAX:
            raise InvalidArgument("etcdserver: too large lease TTL")
        return {"op": op, "ttl": ttl, "id": _lease_id(fields, op, required=False)}
    if op == "lease_timetolive":
        _no_unknown(fields, (LEASE_ID_FIELD, "keys"), op)
        return {"op": op, "id": _lease_id(fields, op), "keys": _bool(fields, "keys")}
    if op == "lease_leases":
        _no_unknown(fields, (), op)
        return {"op": op}
    _no_unknown(fields, (LEASE_ID_FIELD,), op)  # lease_revoke, lease_keepalive
    return {"op": op, "id": _lease_id(fields, op)}


# --- users, roles, permissions (SPEC section "Authentication") ---------------------------
# (is_z85_key, used here for public keys, is defined with the member ops below.)


def auth_name(v: Any, what: str) -> str:
    """A user or role name: a non-empty str of at most 256 UTF-8 bytes without control
    characters. An empty user name is etcd's ``user_empty``."""
    if not isinstance(v, str):
        raise InvalidArgument(f"{what}: must be a string, got {_short(v)}")
    if not v:
        if what == "role":
            raise InvalidArgument("etcdserver: role name is empty")
        raise UserEmpty()
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what}: not valid UTF-8") from None
    if size > AUTH_NAME_MAX_BYTES:
        raise InvalidArgument(f"{what}: longer than {AUTH_NAME_MAX_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise InvalidArgument(f"{what}: must not contain control characters")
    return v


def _password(v: Any, what: str = "password") -> str:
    if not isinstance(v, str):
        raise InvalidArgument(f"{what}: must be a string, got {type(v).__name__}")
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what}: not valid UTF-8") from None
    if size > AUTH_PASSWORD_MAX_BYTES:
        raise InvalidArgument(f"{what}: longer than {AUTH_PASSWORD_MAX_BYTES} bytes")
    return v


def valid_perm_range(key: bytes, range_end: bytes) -> bool:
    """etcd's isValidPermissionRange: a key, [key, range_end) with range_end > key, or
    every key >= key (range_end "\\x00")."""
    return bool(key) and (not range_end or range_end > key or range_end == b"\x00")


_AUTH_FIELDS = {
    "authenticate": ("name", "password", "key"),
    "user_add": ("name", "password", "no_password", "public_key"),
    "user_delete": ("name",), "user_get": ("name",),
    "user_change_password": ("name", "password"),
    "user_grant_role": ("name", "role"), "user_revoke_role": ("name", "role"),
    "role_add": ("name",), "role_delete": ("name",), "role_get": ("name",),
    "role_grant_permission": ("name", "perm"),
    "role_revoke_permission": ("name", "key", "range_end"),
}


def _normalize_auth(op: str, fields: dict) -> dict:
    _no_unknown(fields, _AUTH_FIELDS.get(op, ()), op)
    out: dict[str, Any] = {"op": op}
    if op not in _AUTH_FIELDS:  # auth_enable, auth_disable, auth_status, user_list, role_list
        return out
    out["name"] = auth_name(fields.get("name", ""), "role" if op.startswith("role_") else "name")
    if op == "authenticate":
        out["password"] = _password(fields.get("password", ""))
        key = fields.get("key")
        if key is not None and not is_z85_key(key):
            raise InvalidArgument(f"authenticate: key must be a Z85 public key (40 characters), got {_short(key)}")
        out["key"] = key
    elif op == "user_add":
        no_password = _bool(fields, "no_password")
        password = fields.get("password")
        if no_password:
            if password is not None:
                raise InvalidArgument("user_add: password given with no_password")
        else:
            if password is None or password == "":
                raise InvalidArgument("user_add: password is required (or no_password: true)")
            password = _password(password)
        key = fields.get("public_key")
        if key is not None and not is_z85_key(key):
            raise InvalidArgument(f"user_add: public_key must be a Z85 public key (40 characters), got {_short(key)}")
        out.update(password=password, no_password=no_password, public_key=key)
    elif op == "user_change_password":
        password = _password(fields.get("password", ""))
        if not password:
            raise InvalidArgument("user_change_password: password must not be empty")
        out["password"] = password
    elif op in ("user_grant_role", "user_revoke_role"):
        out["role"] = auth_name(fields.get("role", ""), "role")
    elif op == "role_grant_permission":
        perm = fields.get("perm")
        if not isinstance(perm, dict):
            raise InvalidArgument(f"role_grant_permission: perm must be a map, got {_short(perm)}")
        _no_unknown(perm, ("perm_type", "key", "range_end"), "perm")
        perm_type = _enum(perm, "perm_type", PERM_TYPES)
        key, range_end = _bytes(perm, "key"), _bytes(perm, "range_end")
        p = {"perm_type": perm_type, "key": key, "range_end": range_end}
        if not valid_perm_range(key, range_end):
            raise InvalidAuthMgmt()
        out["perm"] = p
    elif op == "role_revoke_permission":
        out["key"] = _key(fields, op)
        out["range_end"] = _bytes(fields, "range_end")
    return out


# --- snapshot save (SPEC section 6) -------------------------------------------------------
def _normalize_snapshot(fields: dict) -> dict:
    _no_unknown(fields, ("snapshot_id", "offset", "max_bytes", "serializable"), "snapshot")
    snapshot_id = _int(fields, "snapshot_id", nonneg=True)
    offset = _int(fields, "offset", nonneg=True)
    if snapshot_id == 0 and offset:
        raise InvalidArgument("snapshot: a new save (snapshot_id 0) starts at offset 0")
    return {
        "op": "snapshot",
        "snapshot_id": snapshot_id,
        "offset": offset,
        "max_bytes": _int(fields, "max_bytes", nonneg=True),
        # A new save is linearizable unless asked otherwise: it waits for a read index, so
        # it holds every write acknowledged before it was asked for. Chunks are local.
        "serializable": bool(snapshot_id) or _bool(fields, "serializable"),
    }


# --- history (the watch's catch-up, SPEC section 3) ---------------------------------------
_HISTORY_FIELDS = ("key", "range_end", "start_revision", "end_revision", "prev_kv",
                   "no_put", "no_delete", "limit_revisions")
# Revisions one `history` reply examines: 0 asks for the default. A larger limit is
# refused rather than lowered, so that a client never takes a short page for the end of
# what it asked (storage applies the same bounds: actors/storage/mvcc/store.py).
HISTORY_LIMIT_DEFAULT = 1_000
HISTORY_LIMIT_MAX = 10_000


def _normalize_history(fields: dict) -> dict:
    _no_unknown(fields, _HISTORY_FIELDS, "history")
    out: dict[str, Any] = {
        "op": "history",
        "key": _key(fields, "history"),
        "range_end": _bytes(fields, "range_end"),
        "start_revision": _int(fields, "start_revision", nonneg=True),
        "end_revision": _int(fields, "end_revision", nonneg=True),
        "prev_kv": _bool(fields, "prev_kv"),
        "no_put": _bool(fields, "no_put"),
        "no_delete": _bool(fields, "no_delete"),
        "limit_revisions": _int(fields, "limit_revisions", nonneg=True),
        # Served from the member's own history at once, like a serializable range: a
        # watch is not linearizable, and its consumer never goes back in time anyway.
        "serializable": True,
    }
    if out["end_revision"] and out["start_revision"] > out["end_revision"]:
        raise InvalidArgument("history: start_revision is after end_revision")
    if out["limit_revisions"] > HISTORY_LIMIT_MAX:
        raise InvalidArgument(f"history: limit_revisions must be at most {HISTORY_LIMIT_MAX} "
                              f"(0 = {HISTORY_LIMIT_DEFAULT}), got {out['limit_revisions']}")
    return out


# --- the four ops that may appear in a txn --------------------------------------------
_RANGE_FIELDS = (
    "key", "range_end", "limit", "revision", "sort_order", "sort_target", "serializable",
    "keys_only", "count_only", "min_mod_revision", "max_mod_revision",
    "min_create_revision", "max_create_revision",
)
_PUT_FIELDS = ("key", "value", "lease", "prev_kv", "ignore_value", "ignore_lease")
_DELETE_FIELDS = ("key", "range_end", "prev_kv")
_TXN_FIELDS = ("compare", "success", "failure")
_COMPARE_FIELDS = ("target", "result", "key", "range_end")


class _Tally:
    """Compares and ops of one txn, over every level, against the whole-tree limit."""

    __slots__ = ("limit", "count")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise TooManyOps(
                f"etcdserver: too many operations in txn request (more than {self.limit} compares and "
                f"operations over all nested levels: {TXN_TREE_FACTOR} x --max-txn-ops)",
                limit=self.limit,
            )


def _normalize_kv_op(op: str, fields: Any, limits: Limits, depth: int, tally: _Tally) -> dict:
    if not isinstance(fields, dict):
        raise InvalidArgument(f"{op}: fields must be a map")
    if op == "range":
        _no_unknown(fields, _RANGE_FIELDS, op)
        return {
            "op": "range",
            "key": _key(fields, op),
            "range_end": _bytes(fields, "range_end"),
            "limit": _int(fields, "limit", nonneg=True),
            "revision": _int(fields, "revision", nonneg=True),
            "sort_order": _enum(fields, "sort_order", SORT_ORDERS),
            "sort_target": _enum(fields, "sort_target", SORT_TARGETS),
            "serializable": _bool(fields, "serializable"),
            "keys_only": _bool(fields, "keys_only"),
            "count_only": _bool(fields, "count_only"),
            "min_mod_revision": _int(fields, "min_mod_revision", nonneg=True),
            "max_mod_revision": _int(fields, "max_mod_revision", nonneg=True),
            "min_create_revision": _int(fields, "min_create_revision", nonneg=True),
            "max_create_revision": _int(fields, "max_create_revision", nonneg=True),
        }
    if op == "put":
        _no_unknown(fields, _PUT_FIELDS, op)
        out = {
            "op": "put",
            "key": _key(fields, op),
            "value": _bytes(fields, "value"),
            "lease": _int(fields, "lease"),
            "prev_kv": _bool(fields, "prev_kv"),
            "ignore_value": _bool(fields, "ignore_value"),
            "ignore_lease": _bool(fields, "ignore_lease"),
        }
        if out["ignore_value"] and out["value"]:
            raise InvalidArgument("etcdserver: value is provided")
        if out["ignore_lease"] and out["lease"]:
            raise InvalidArgument("etcdserver: lease is provided")
        return out
    if op == "delete_range":
        _no_unknown(fields, _DELETE_FIELDS, op)
        return {
            "op": "delete_range",
            "key": _key(fields, op),
            "range_end": _bytes(fields, "range_end"),
            "prev_kv": _bool(fields, "prev_kv"),
        }
    if op == "txn":
        if depth >= MAX_TXN_DEPTH:
            raise InvalidArgument(f"txn: nested more than {MAX_TXN_DEPTH} levels")
        _no_unknown(fields, _TXN_FIELDS, op)
        compare = _list(fields, "compare")
        success = _list(fields, "success")
        failure = _list(fields, "failure")
        for name, items in (("compare", compare), ("success", success), ("failure", failure)):
            if len(items) > limits.max_txn_ops:
                raise TooManyOps(
                    f"etcdserver: too many operations in txn request ({name}: {len(items)})",
                    limit=limits.max_txn_ops,
                )
        # Counted before this level's items are looked at: a tree over the limit is
        # refused after at most `limit` items were normalized.
        tally.add(len(compare) + len(success) + len(failure))
        return {
            "op": "txn",
            "compare": [_compare(c) for c in compare],
            "success": [_request_op(r, limits, depth, tally) for r in success],
            "failure": [_request_op(r, limits, depth, tally) for r in failure],
        }
    raise UnknownOp(f"unknown op: {_short(op)}")  # pragma: no cover - callers check


def _request_op(item: Any, limits: Limits, depth: int, tally: _Tally) -> dict:
    if not isinstance(item, dict) or len(item) != 1:
        raise InvalidArgument("txn: a RequestOp must be a map with exactly one entry")
    (name, fields), = item.items()
    if not isinstance(name, str) or name not in TXN_OPS:
        raise InvalidArgument(f"txn: unknown RequestOp {_short(name)}")
    return _normalize_kv_op(name, fields, limits, depth + 1, tally)


def _compare(item: Any) -> dict:
    if not isinstance(item, dict):
        raise InvalidArgument("txn: a Compare must be a map")
    target = _enum(item, "target", COMPARE_TARGETS)
    field = COMPARE_TARGET_FIELD[target]
    _no_unknown(item, _COMPARE_FIELDS + (field,), "compare")
    out: dict[str, Any] = {
        "target": target,
        "result": _enum(item, "result", COMPARE_RESULTS),
        "key": _key(item, "compare"),
        "range_end": _bytes(item, "range_end"),
    }
    out[field] = _bytes(item, field) if field == "value" else _int(item, field)
    return out


# --- etcd's duplicate-key rule ----------------------------------------------------------
def _check_txn_duplicates(txn: dict) -> None:
    _check_intervals(txn["success"])
    _check_intervals(txn["failure"])


class _Dels:
    """A set of half-open byte intervals; ``end`` None means unbounded. ``contains`` is
    O(log n): the intervals are merged into disjoint sorted ones when first asked after a
    change (a txn level asks for all its puts between two changes)."""

    def __init__(self) -> None:
        self.intervals: list[tuple[bytes, bytes | None]] = []
        self._starts: list[bytes] | None = None
        self._ends: list[bytes | None] = []

    def add_delete(self, op: dict) -> None:
        key, end = op["key"], op["range_end"]
        if not end:
            self.add(key, key + b"\x00")
        elif end == b"\x00":
            self.add(key, None)
        elif end > key:
            self.add(key, end)
        # an empty interval (end <= key) deletes nothing

    def add(self, start: bytes, end: bytes | None) -> None:
        self.intervals.append((start, end))
        self._starts = None

    def extend(self, other: "_Dels") -> None:
        if other.intervals:
            self.intervals.extend(other.intervals)
            self._starts = None

    def _merge(self) -> list[bytes]:
        starts: list[bytes] = []
        ends: list[bytes | None] = []
        for s, e in sorted(self.intervals, key=lambda iv: iv[0]):
            if starts:
                last = ends[-1]
                if last is None:
                    break  # the last merged interval is unbounded: it holds every later one
                if s <= last:
                    ends[-1] = None if e is None else max(last, e)
                    continue
            starts.append(s)
            ends.append(e)
        self._starts, self._ends = starts, ends
        return starts

    def contains(self, k: bytes) -> bool:
        starts = self._starts if self._starts is not None else self._merge()
        i = bisect.bisect_right(starts, k) - 1
        if i < 0:
            return False
        end = self._ends[i]
        return end is None or k < end


def _check_intervals(reqs: list[dict]) -> tuple[set[bytes], _Dels]:
    dels = _Dels()
    for r in reqs:
        if r["op"] == "delete_range":
            dels.add_delete(r)
    puts: set[bytes] = set()
    for r in reqs:
        if r["op"] != "txn":
            continue
        puts_then, dels_then = _check_intervals(r["success"])
        puts_else, dels_else = _check_intervals(r["failure"])
        for k in puts_then:
            if k in puts or dels.contains(k):
                raise DuplicateKey()
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.contains(k):
                raise DuplicateKey()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for r in reqs:
        if r["op"] != "put":
            continue
        k = r["key"]
        if k in puts or dels.contains(k):
            raise DuplicateKey()
        puts.add(k)
    return puts, dels


# --- field helpers ----------------------------------------------------------------------
def _normalize_member(op: str, fields: dict) -> dict:
    """member_add {name, peer_urls, is_learner, peer_key} / member_update {member_id, peer_urls} /
    member_remove, member_promote {member_id} (SPEC section 3)."""
    allowed = {"member_add": ("name", "peer_urls", "is_learner", "peer_key"),
               "member_update": ("member_id", "peer_urls")}
    _no_unknown(fields, allowed.get(op, ("member_id",)), op)
    out: dict[str, Any] = {"op": op}
    if op != "member_add":
        mid = fields.get("member_id")
        if isinstance(mid, bool) or not isinstance(mid, int) or not 0 < mid < 2**64:
            raise InvalidArgument(f"{op}: member_id must be a member id (uint64 > 0), got {_short(mid)}")
        out["member_id"] = mid
    if op in ("member_add", "member_update"):
        urls = fields.get("peer_urls")
        if not isinstance(urls, list) or not urls or len(urls) > 16:
            raise InvalidArgument(f"{op}: peer_urls must be a non-empty array of URLs, got {_short(urls)}")
        for u in urls:
            if not isinstance(u, str) or not _PEER_URL.fullmatch(u):
                raise InvalidArgument(f"{op}: bad peer URL {_short(u)}: expected tcp://host:port")
        out["peer_urls"] = list(urls)
    if op == "member_add":
        name = fields.get("name", "")
        if not isinstance(name, str) or not name or len(name) > 256 or any(c in name for c in ",=/ \t\n"):
            raise InvalidArgument(f"member_add: name must be a string without ',', '=', '/' or spaces, "
                                  f"got {_short(name)}")
        out["name"] = name
        out["is_learner"] = _bool(fields, "is_learner")
        # The new member's CURVE peer public key (Z85); "" = none (a cluster without peer
        # security). Consensus requires one when the cluster runs peer security.
        key = fields.get("peer_key", "")
        if key != "" and not is_z85_key(key):
            raise InvalidArgument(f"member_add: peer_key must be a 40-character Z85 public key, got {_short(key)}")
        out["peer_key"] = key
    return out


_Z85_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85_CHARS)}


def is_z85_key(key: Any) -> bool:
    """A 32-byte key in Z85 text (40 characters), as CURVE keys travel (pure check)."""
    if not isinstance(key, str) or len(key) != 40 or not all(c in _Z85_VALUE for c in key):
        return False
    for i in range(0, 40, 5):
        value = 0
        for c in key[i:i + 5]:
            value = value * 85 + _Z85_VALUE[c]
        if value >= 2**32:
            return False
    return True


_PEER_URL = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_*]+):([1-9][0-9]{0,4})")


def _short(v: Any) -> str:
    try:
        s = repr(v)
    except Exception:
        s = f"<{type(v).__name__}>"
    return s if len(s) <= 60 else s[:57] + "..."


def _no_unknown(fields: dict, allowed: tuple[str, ...], where: str) -> None:
    for k in fields:
        if not isinstance(k, str) or k not in allowed:
            raise InvalidArgument(f"{where}: unknown field {_short(k)}")


def _bytes(fields: dict, name: str) -> bytes:
    v = fields.get(name)
    if v is None:
        if name in fields:
            raise InvalidArgument(f"{name}: must be bytes, got nil")
        return b""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{name}: not valid UTF-8") from None
    raise InvalidArgument(f"{name}: must be bytes, got {type(v).__name__}")


def _key(fields: dict, where: str) -> bytes:
    key = _bytes(fields, "key")
    if not key:
        raise KeyNotProvided()
    return key


def _int(fields: dict, name: str, nonneg: bool = False) -> int:
    if name not in fields:
        return 0
    v = fields[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"{name}: must be an integer, got {type(v).__name__}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise InvalidArgument(f"{name}: out of the int64 range")
    if nonneg and v < 0:
        raise InvalidArgument(f"{name}: must not be negative")
    return int(v)


def _bool(fields: dict, name: str) -> bool:
    if name not in fields:
        return False
    v = fields[name]
    if not isinstance(v, bool):
        raise InvalidArgument(f"{name}: must be a bool, got {type(v).__name__}")
    return v


def _enum(fields: dict, name: str, values: tuple[str, ...]) -> str:
    if name not in fields:
        return values[0]
    v = fields[name]
    if not isinstance(v, str) or v.upper() not in values:
        raise InvalidArgument(f"{name}: must be one of {', '.join(values)}, got {_short(v)}")
    return v.upper()


def _list(fields: dict, name: str) -> list:
    v = fields.get(name)
    if v is None:
        if name in fields:
            raise InvalidArgument(f"{name}: must be a list, got nil")
        return []
    if not isinstance(v, (list, tuple)):
        raise InvalidArgument(f"{name}: must be a list, got {type(v).__name__}")
    return list(v)
