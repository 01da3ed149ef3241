"""The auth store: users, roles, permissions and the auth revision (etcd 3.4's auth).

``AuthState`` is the whole of it; storage holds the authoritative copy (changed only by
``apply_auth`` on applied log entries, persisted with the data) and sends its wire form to
the gateway and the watch actor, which rebuild it with ``AuthState.from_wire``.

Every change bumps ``revision`` (etcd's auth revision): a request carries the revision it
was authorized under, and is refused with ``auth_old_revision`` if the auth store changed
before it ran (``check``). Unlike etcd, enabling auth bumps it too (etcd only bumps on
disable); nothing can hold a token from before the enable, so this only keeps the rule
simple: every change bumps.

Semantics follow etcd 3.4's server/auth/store.go; the differences are listed in SPEC.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from actors.storage.auth.intervals import IntervalSet, request_interval
from actors.storage.auth.passwords import check_hash_wire
from protocol.errors import (
    AuthFailed,
    AuthNotEnabled,
    AuthOldRevision,
    InvalidArgument,
    InvalidAuthMgmt,
    PermissionNotGranted,
    QkvError,
    RoleAlreadyExist,
    RoleNotFound,
    RoleNotGranted,
    RootRoleNotExist,
    RootUserNotExist,
    UnknownOp,
    UserAlreadyExist,
    UserNotFound,
)
from protocol.requests import (
    AUTH_READ_OPS,
    AUTH_WRITE_OPS,
    INT64_MAX,
    PERM_TYPES,
    auth_name,
    is_z85_key,
    valid_perm_range,
)

ROOT_USER = "root"
ROOT_ROLE = "root"
WIRE_VERSION = 1
INITIAL_REVISION = 1  # etcd's NewAuthStore commits revision 1 on a fresh store
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Perm:
    perm_type: str  # "READ" | "WRITE" | "READWRITE"
    key: bytes
    range_end: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"perm_type": self.perm_type, "key": self.key, "range_end": self.range_end}

    @staticmethod
    def from_wire(w: Any) -> "Perm":
        if not isinstance(w, dict) or set(w) != {"perm_type", "key", "range_end"}:
            raise InvalidArgument("permission: not a {perm_type, key, range_end} map")
        if w["perm_type"] not in PERM_TYPES:
            raise InvalidArgument(f"permission: perm_type must be one of {', '.join(PERM_TYPES)}")
        key, end = w["key"], w["range_end"]
        if not isinstance(key, bytes) or not isinstance(end, bytes):
            raise InvalidArgument("permission: key and range_end must be bytes")
        if not valid_perm_range(key, end):
            raise InvalidAuthMgmt()
        return Perm(w["perm_type"], key, end)

    def sort_key(self) -> tuple[bytes, bytes]:
        return self.key, self.range_end


@dataclass
class User:
    roles: list[str] = field(default_factory=list)  # sorted, no duplicates
    password: dict[str, Any] | None = None  # hash wire (passwords.py); None = no password
    key: str | None = None  # Z85 public key for --client-cert-auth; None = none

    def to_wire(self) -> dict[str, Any]:
        return {"roles": list(self.roles), "password": self.password, "key": self.key}

    @staticmethod
    def from_wire(w: Any) -> "User":
        if not isinstance(w, dict) or set(w) != {"roles", "password", "key"}:
            raise InvalidArgument("user: not a {roles, password, key} map")
        roles = w["roles"]
        if not isinstance(roles, list):
            raise InvalidArgument("user: roles must be a list")
        roles = sorted({auth_name(r, "role") for r in roles})
        password = None if w["password"] is None else check_hash_wire(w["password"])
        key = w["key"]
        if key is not None and not is_z85_key(key):
            raise InvalidArgument("user: key must be a Z85 public key")
        return User(roles, password, key)


@dataclass
class AuthState:
    enabled: bool = False
    revision: int = INITIAL_REVISION
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, list[Perm]] = field(default_factory=dict)  # perms sorted by (key, range_end)
    # name -> (read IntervalSet, write IntervalSet); rebuilt lazily, cleared by apply_auth.
    _perm_cache: dict[str, tuple[IntervalSet, IntervalSet]] = field(
        default_factory=dict, compare=False, repr=False)

    # --- wire -------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION,
            "enabled": self.enabled,
            "revision": self.revision,
            "users": {name: u.to_wire() for name, u in sorted(self.users.items())},
            "roles": {name: [p.to_wire() for p in perms] for name, perms in sorted(self.roles.items())},
        }

    @staticmethod
    def from_wire(w: Any) -> "AuthState":
        """Rebuild a state from ``to_wire``'s map; raises ``InvalidArgument`` on anything else."""
        try:
            return AuthState._from_wire(w)
        except InvalidArgument:
            raise
        except QkvError as err:  # user_empty, invalid_auth_mgmt from the shared validators
            raise InvalidArgument(f"auth state: {err.message}") from None
        except Exception as exc:  # e.g. unhashable garbage: still a clean refusal
            raise InvalidArgument(f"auth state: {type(exc).__name__}") from None

    @staticmethod
    def _from_wire(w: Any) -> "AuthState":
        if not isinstance(w, dict) or set(w) != {"v", "enabled", "revision", "users", "roles"}:
            raise InvalidArgument("auth state: not a {v, enabled, revision, users, roles} map")
        if w["v"] != WIRE_VERSION:
            raise InvalidArgument(f"auth state: unknown version {w['v']!r:.20}")
        enabled, revision = w["enabled"], w["revision"]
        if not isinstance(enabled, bool):
            raise InvalidArgument("auth state: enabled must be a bool")
        if isinstance(revision, bool) or not isinstance(revision, int) or not 1 <= revision <= INT64_MAX:
            raise InvalidArgument("auth state: revision must be an integer >= 1")
        if not isinstance(w["users"], dict) or not isinstance(w["roles"], dict):
            raise InvalidArgument("auth state: users and roles must be maps")
        users = {auth_name(name, "name"): User.from_wire(u) for name, u in w["users"].items()}
        keys = [u.key for u in users.values() if u.key is not None]
        if len(keys) != len(set(keys)):
            raise InvalidArgument("auth state: a public key is registered to two users")
        roles: dict[str, list[Perm]] = {}
        for name, perms in w["roles"].items():
            if not isinstance(perms, list):
                raise InvalidArgument("auth state: a role's permissions must be a list")
            plist = [Perm.from_wire(p) for p in perms]
            if len({p.sort_key() for p in plist}) != len(plist):
                raise InvalidArgument("auth state: a role holds the same range twice")
            roles[auth_name(name, "role")] = sorted(plist, key=Perm.sort_key)
        return AuthState(enabled, revision, users, roles)

    # --- queries ----------------------------------------------------------------------
    def is_root(self, user: str | None) -> bool:
        u = self.users.get(user) if isinstance(user, str) else None
        return u is not None and ROOT_ROLE in u.roles

    def user_by_key(self, key: str) -> str | None:
        """The user whose registered public key (``user_add --public-key``) is ``key``."""
        for name, u in self.users.items():
            if u.key is not None and u.key == key:
                return name
        return None

    def perms_of(self, user: str) -> tuple[IntervalSet, IntervalSet]:
        """(read, write) intervals of ``user``: the union over its roles (missing roles are
        skipped, as etcd's getMergedPerms does). Empty sets for an unknown user."""
        cached = self._perm_cache.get(user)
        if cached is not None:
            return cached
        reads, writes = [], []
        u = self.users.get(user)
        for role in (u.roles if u else ()):
            for p in self.roles.get(role, ()):
                iv = request_interval(p.key, p.range_end)
                if p.perm_type in ("READ", "READWRITE"):
                    reads.append(iv)
                if p.perm_type in ("WRITE", "READWRITE"):
                    writes.append(iv)
        out = (IntervalSet(reads), IntervalSet(writes))
        if u is not None:
            self._perm_cache[user] = out
        return out

    def changed(self) -> None:
        """Record a change: bump the revision and drop cached permissions."""
        self.revision += 1
        self._perm_cache.clear()


# --- changes (log entries) --------------------------------------------------------------
def apply_auth(state: AuthState, op: dict) -> dict[str, Any]:
    """Apply one auth change (an op of AUTH_WRITE_OPS, or the gateway's ``authenticate``
    entry) to ``state`` in place; return the reply fields ({} for all of them). Raises a
    ``QkvError`` and leaves ``state`` untouched when the change is refused. Every change
    bumps ``state.revision``; a no-op (enabling when enabled, granting a role the user has)
    does not. Deterministic: the same state and op give the same result on every member.

    The op must already be authorized (``check``); ``password`` fields hold hash wire maps
    (``hash_password``), never plaintext."""
    if not isinstance(op, dict):
        raise InvalidArgument("auth op: not a map")
    name = op.get("op")
    handler = _APPLY.get(name) if isinstance(name, str) else None
    if handler is None:
        raise UnknownOp(f"not an auth change: {name!r:.40}")
    return handler(state, op)


def _auth_enable(state: AuthState, op: dict) -> dict:
    if state.enabled:
        return {}
    root = state.users.get(ROOT_USER)
    if root is None:
        raise RootUserNotExist()
    if ROOT_ROLE not in root.roles:
        raise RootRoleNotExist()
    state.enabled = True
    state.changed()
    return {}


def _auth_disable(state: AuthState, op: dict) -> dict:
    if not state.enabled:
        return {}
    state.enabled = False
    state.changed()
    return {}


def _hash_field(op: dict) -> dict[str, Any]:
    pw = op.get("password")
    if isinstance(pw, str):
        raise InvalidArgument("password: a log entry carries the hash (hash_password), never the password")
    return check_hash_wire(pw)


def _user_add(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "name")
    if name in state.users:
        raise UserAlreadyExist()
    no_password = op.get("no_password", False)
    if not isinstance(no_password, bool):
        raise InvalidArgument("no_password: must be a bool")
    if no_password:
        if op.get("password") is not None:
            raise InvalidArgument("user_add: password given with no_password")
        password = None
    else:
        password = _hash_field(op)
    key = op.get("public_key")
    if key is not None:
        if not is_z85_key(key):
            raise InvalidArgument("public_key: must be a Z85 public key (40 characters)")
        if state.user_by_key(key) is not None:
            raise InvalidArgument("public_key: already registered to another user")
    state.users[name] = User([], password, key)
    state.changed()
    return {}


def _existing_user(state: AuthState, op: dict) -> tuple[str, User]:
    name = auth_name(op.get("name", ""), "name")
    user = state.users.get(name)
    if user is None:
        raise UserNotFound()
    return name, user


def _user_delete(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "name")
    if state.enabled and name == ROOT_USER:
        raise InvalidAuthMgmt()
    _existing_user(state, op)
    del state.users[name]
    state.changed()
    return {}


def _user_change_password(state: AuthState, op: dict) -> dict:
    _, user = _existing_user(state, op)
    password = _hash_field(op)
    user.password = password
    state.changed()
    return {}


def _user_grant_role(state: AuthState, op: dict) -> dict:
    _, user = _existing_user(state, op)
    role = auth_name(op.get("role", ""), "role")
    if role != ROOT_ROLE and role not in state.roles:  # etcd: "root" needs no role entry
        raise RoleNotFound()
    if role in user.roles:
        return {}
    user.roles = sorted([*user.roles, role])
    state.changed()
    return {}


def _user_revoke_role(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "name")
    role = auth_name(op.get("role", ""), "role")
    if state.enabled and name == ROOT_USER and role == ROOT_ROLE:
        raise InvalidAuthMgmt()
    _, user = _existing_user(state, op)
    if role not in user.roles:
        raise RoleNotGranted()
    user.roles = [r for r in user.roles if r != role]
    state.changed()
    return {}


def _role_add(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "role")
    if name in state.roles:
        raise RoleAlreadyExist()
    state.roles[name] = []
    state.changed()
    return {}


def _role_delete(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "role")
    if state.enabled and name == ROOT_ROLE:
        raise InvalidAuthMgmt()
    if name not in state.roles:
        raise RoleNotFound()
    del state.roles[name]
    for user in state.users.values():
        if name in user.roles:
            user.roles = [r for r in user.roles if r != name]
    state.changed()
    return {}


def _role_grant_permission(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "role")
    perm = Perm.from_wire(op.get("perm"))  # an invalid range: invalid_auth_mgmt, as etcd
    perms = state.roles.get(name)
    if perms is None:
        raise RoleNotFound()
    # The same (key, range_end) changes its type; anything else is a new permission.
    kept = [p for p in perms if p.sort_key() != perm.sort_key()]
    state.roles[name] = sorted([*kept, perm], key=Perm.sort_key)
    state.changed()
    return {}


def _role_revoke_permission(state: AuthState, op: dict) -> dict:
    name = auth_name(op.get("name", ""), "role")
    key, end = op.get("key"), op.get("range_end", b"")
    if not isinstance(key, bytes) or not isinstance(end, bytes):
        raise InvalidArgument("role_revoke_permission: key and range_end must be bytes")
    perms = state.roles.get(name)
    if perms is None:
        raise RoleNotFound()
    kept = [p for p in perms if p.sort_key() != (key, end)]
    if len(kept) == len(perms):
        raise PermissionNotGranted()
    state.roles[name] = kept
    state.changed()
    return {}


def _authenticate(state: AuthState, op: dict) -> dict:
    """The gateway's entry after it verified the password: {"name", "token_sha256",
    "auth_revision", "key"}. Refused if the auth store changed since that check (the
    gateway checks again and retries, as etcd's Authenticate loop does). Changes nothing."""
    if not state.enabled:
        raise AuthNotEnabled()
    name = op.get("name")
    user = state.users.get(name) if isinstance(name, str) else None
    if user is None or user.password is None:
        raise AuthFailed()
    token = op.get("token_sha256")
    if not isinstance(token, str) or not _SHA256_HEX.fullmatch(token):
        raise InvalidArgument("authenticate: token_sha256 must be 64 lower-case hex digits")
    key = op.get("key")
    if key is not None and not is_z85_key(key):
        raise InvalidArgument("authenticate: key must be a Z85 public key (40 characters)")
    rev = op.get("auth_revision")
    if isinstance(rev, bool) or not isinstance(rev, int):
        raise InvalidArgument("authenticate: auth_revision must be an integer")
    if rev != state.revision:
        raise AuthOldRevision()
    return {}


_APPLY = {
    "auth_enable": _auth_enable,
    "auth_disable": _auth_disable,
    "user_add": _user_add,
    "user_delete": _user_delete,
    "user_change_password": _user_change_password,
    "user_grant_role": _user_grant_role,
    "user_revoke_role": _user_revoke_role,
    "role_add": _role_add,
    "role_delete": _role_delete,
    "role_grant_permission": _role_grant_permission,
    "role_revoke_permission": _role_revoke_permission,
    "authenticate": _authenticate,
}
assert set(_APPLY) == set(AUTH_WRITE_OPS) | {"authenticate"}


# --- reads --------------------------------------------------------------------------------
def read_auth(state: AuthState, op: dict) -> dict[str, Any]:
    """Answer an auth read (AUTH_READ_OPS) from ``state``: the reply fields. The op must
    already be authorized (``check``)."""
    name = op.get("op") if isinstance(op, dict) else None
    if name == "auth_status":
        return {"enabled": state.enabled, "auth_revision": state.revision}
    if name == "user_list":
        return {"users": sorted(state.users)}
    if name == "role_list":
        return {"roles": sorted(state.roles)}
    if name == "user_get":
        _, user = _existing_user(state, op)
        return {"roles": list(user.roles)}
    if name == "role_get":
        perms = state.roles.get(auth_name(op.get("name", ""), "role"))
        if perms is None:
            raise RoleNotFound()
        return {"perm": [p.to_wire() for p in perms]}
    raise UnknownOp(f"not an auth read: {name!r:.40}")


assert {"auth_status", "user_list", "role_list", "user_get", "role_get"} == set(AUTH_READ_OPS)
