"""Users, roles, permissions and their checks (etcd 3.4's auth): a pure core, no I/O.

- ``state``: ``AuthState`` / ``User`` / ``Perm`` with to_wire/from_wire, ``apply_auth``
  (changes from log entries) and ``read_auth`` (auth_status, user_get/list, role_get/list);
- ``check``: ``check(state, auth, op, lease_keys=None)`` and ``can_read`` (the watch); MEMBER;
- ``passwords``: ``hash_password`` / ``verify_password`` (scrypt);
- ``intervals``: key-range coverage, etcd's range_perm_cache semantics.
"""
from actors.storage.auth.check import MEMBER, MEMBER_OPS, can_read, check, is_member, needs_lease_keys
from actors.storage.auth.passwords import check_hash_wire, hash_op_password, hash_password, verify_password
from actors.storage.auth.state import ROOT_ROLE, ROOT_USER, AuthState, Perm, User, apply_auth, read_auth

__all__ = [
    "AuthState", "Perm", "User", "ROOT_ROLE", "ROOT_USER", "apply_auth", "read_auth", "check",
    "can_read", "needs_lease_keys", "MEMBER", "MEMBER_OPS", "is_member", "hash_password", "hash_op_password", "verify_password", "check_hash_wire",
]
