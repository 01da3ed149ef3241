"""Authorization: may this user run this op now? (etcd 3.4's rules, SPEC "Authentication").

``check(state, auth, op, lease_keys=None)`` returns None or raises the error etcd gives:
- another member of the cluster (``auth`` = (MEMBER, _), whatever the auth state): only
  MEMBER_OPS (below); ``permission_denied`` for anything else;
- auth disabled: everything is allowed;
- ``authenticate``, ``auth_status`` and the server's own lease entries (lease_expire,
  lease_checkpoint) are allowed to anyone (the server's alarm_activate entries are not
  checked at all: storage applies them with auth SERVER; a client's is root's);
- no user (``auth`` None): ``user_empty``;
- ``auth`` = (user, auth_revision) with auth_revision older than ``state.revision``:
  ``auth_old_revision`` (the auth store changed after the request was authorized);
- a user that no longer exists: ``user_not_found`` for root-only ops (etcd's
  IsAdminPermitted), ``permission_denied`` for the others (etcd's isOpPermitted);
- a user with the root role: everything;
- otherwise the per-op rules below; ``permission_denied`` when they fail.

Ops that need the keys attached to a lease (``needs_lease_keys``): put / txn puts with a
lease (WRITE on every key already attached, etcd's checkLeasePuts), lease_revoke and
lease_keepalive (WRITE on every attached key), lease_timetolive (READ on each), and
lease_leases (READ on every key attached to any lease). The caller passes
``lease_keys(lease_id) -> iterable of keys`` (``lease_id`` None: the keys of every lease);
without it those checks fail closed (``permission_denied`` for a non-root user).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from actors.storage.auth.intervals import IntervalSet
from actors.storage.auth.state import ROOT_ROLE, AuthState
from protocol.errors import (
    AuthOldRevision,
    InvalidArgument,
    PermissionDenied,
    UserEmpty,
    UserNotFound,
)
from protocol.requests import AUTH_WRITE_OPS, INTERNAL_OPS

LeaseKeys = Callable[[Any], Iterable[bytes]]

# The identity of another member, or of this member's own gRPC gateway (SPEC 7.2): the
# ZAP User-Id of a connection made with the cluster's own client key pair, or a
# connection of the node's private gRPC proxy socket that says so. It contains a control
# character, which no user name may (protocol.requests.auth_name), so no user can be it.
MEMBER = "\x1bqkv-member"
# What a member may do (auth enabled or not): its corruption check's `status` and
# `hash_kv`, and what a watch needs (`history`; and every watch topic, ``can_read``). It
# writes nothing and reads no current value (`range`): the gRPC gateway checks each gRPC
# watch as its caller before it reads for it as a member.
MEMBER_OPS = frozenset(("status", "hash_kv", "history"))
# Allowed to anyone, with or without a user.
OPEN_OPS = frozenset(("authenticate", "auth_status", *INTERNAL_OPS))
# Allowed to any authenticated user.
# `status` as in Debian's etcd 3.4.23 (any user): it is how a client finds a member's
# watch URL and current revision (etcd made it admin-only in 3.4.42).
USER_OPS = frozenset(("compact", "lease_grant", "alarm_list", "member_list", "status"))
# Root only (etcd: IsAdminPermitted / needAdminPermission / authMaintenanceServer).
ROOT_OPS = frozenset((*AUTH_WRITE_OPS, "user_list", "role_list", "hash_kv", "defragment",
                      "snapshot", "move_leader", "alarm_activate", "alarm_disarm", "member_add", "member_remove",
                      "member_update", "member_promote"))
# Checked against the user's key permissions (and, for some, a lease's keys).
KEY_OPS = frozenset(("range", "history", "put", "delete_range", "txn", "lease_revoke",
                     "lease_keepalive", "lease_timetolive", "lease_leases"))
# Root, or a user asking about itself (user_get) / a role it has (role_get).
SELF_OPS = frozenset(("user_get", "role_get"))
ALL_OPS = OPEN_OPS | USER_OPS | ROOT_OPS | KEY_OPS | SELF_OPS


def check(state: AuthState, auth: Any, op: dict, lease_keys: LeaseKeys | None = None) -> None:
    """Raise the error that refuses ``op`` to ``auth`` (None, or (user, auth_revision)) under
    ``state``; return None if it may run. ``op`` is a normalized op (protocol.requests) or a
    log entry's op."""
    name = op.get("op")
    if is_member(auth):
        if name not in MEMBER_OPS:
            raise PermissionDenied()
        return
    if not state.enabled:
        return
    if name in OPEN_OPS:
        return
    if auth is None:
        raise UserEmpty()
    user, revision = _auth_tuple(auth)
    if revision < state.revision:
        raise AuthOldRevision()
    u = state.users.get(user)
    if u is None:
        raise UserNotFound() if name in ROOT_OPS or name in SELF_OPS else PermissionDenied()
    if ROOT_ROLE in u.roles:
        return
    if name in USER_OPS:
        return
    if name == "user_get" and op.get("name") == user:
        return
    if name == "role_get" and op.get("name") in u.roles:
        return
    if name not in KEY_OPS:  # root-only ops, and anything unknown: fail closed
        raise PermissionDenied()
    reads, writes = state.perms_of(user)
    try:
        _check_key_op(op, reads, writes, lease_keys)
    except (KeyError, TypeError, AttributeError):  # a malformed op: refuse it, deterministically
        raise InvalidArgument(f"{name}: malformed op") from None


def needs_lease_keys(op: dict) -> bool:
    """True if ``check`` may call ``lease_keys`` for ``op`` (for a non-root user)."""
    name = op.get("op")
    if name in ("lease_revoke", "lease_keepalive", "lease_timetolive", "lease_leases"):
        return True
    if name == "put":
        return bool(op.get("lease"))
    if name == "txn":
        return any(needs_lease_keys(r) for r in (*op.get("success", ()), *op.get("failure", ())))
    return False


def can_read(state: AuthState, user: str | None, key: bytes, range_end: bytes) -> bool:
    """May ``user`` read [key, range_end) (a watch channel)? Always when auth is disabled;
    never for no user or an unknown one; always for root and for MEMBER. No revision check: the caller
    re-checks when the auth revision changes."""
    if not state.enabled or user == MEMBER:
        return True
    if not user or user not in state.users:
        return False
    if state.is_root(user):
        return True
    return state.perms_of(user)[0].covers(key, range_end)


def is_member(auth: Any) -> bool:
    """Whether ``auth`` (a request's: None, or (user, auth_revision)) is MEMBER's."""
    return isinstance(auth, (tuple, list)) and len(auth) == 2 and auth[0] == MEMBER


def _auth_tuple(auth: Any) -> tuple[str, int]:
    if (isinstance(auth, (tuple, list)) and len(auth) == 2 and isinstance(auth[0], str)
            and isinstance(auth[1], int) and not isinstance(auth[1], bool)):
        return auth[0], auth[1]
    raise InvalidArgument("auth: must be nil or [user, auth_revision]")


def _need(ok: bool) -> None:
    if not ok:
        raise PermissionDenied()


def _lease(lease_keys: LeaseKeys | None, lease_id: Any, ivs: IntervalSet) -> None:
    if lease_keys is None:
        raise PermissionDenied()  # fail closed: the caller did not say which keys
    for key in lease_keys(lease_id):
        _need(ivs.covers(key, b""))


def _check_key_op(op: dict, reads: IntervalSet, writes: IntervalSet, lease_keys: LeaseKeys | None) -> None:
    name = op.get("op")
    if name in ("range", "history"):
        _need(reads.covers(op["key"], op.get("range_end", b"")))
    elif name == "put":
        _need(writes.covers(op["key"], b""))
        if op.get("lease"):
            _lease(lease_keys, op["lease"], writes)
        if op.get("prev_kv"):
            _need(reads.covers(op["key"], b""))
    elif name == "delete_range":
        end = op.get("range_end", b"")
        _need(writes.covers(op["key"], end))
        if op.get("prev_kv"):
            _need(reads.covers(op["key"], end))
    elif name == "txn":
        for c in op.get("compare", ()):
            _need(reads.covers(c["key"], c.get("range_end", b"")))
        for r in (*op.get("success", ()), *op.get("failure", ())):
            _check_key_op(r, reads, writes, lease_keys)
    elif name in ("lease_revoke", "lease_keepalive"):
        _lease(lease_keys, op["id"], writes)
    elif name == "lease_timetolive":
        _lease(lease_keys, op["id"], reads)
    elif name == "lease_leases":
        _lease(lease_keys, None, reads)
    else:  # pragma: no cover - KEY_OPS lists exactly the names above
        raise PermissionDenied()
