"""Error codes of the quorumkv wire protocol and the exceptions that carry them.

Every error that crosses the wire is a map ``{"code": str, "message": str, ...details}``.
The same classes are raised by the server's validation code and by the client library,
so a code always means one thing. ``protocol/SPEC.md`` lists every code and when it
happens; keep the two in step.

Two families:
- the caller's mistake (``invalid_argument``, ``malformed``, ``unknown_op``, ...): the
  request was refused before it did anything, retrying it unchanged fails again;
- the system's state (``no_leader``, ``timeout``, ``unknown_outcome``, ...): the request
  may succeed later; for writes, ``timeout`` and ``unknown_outcome`` mean it may or may
  not have taken effect.
"""
from __future__ import annotations

from typing import Any


class QkvError(Exception):
    """Base of every quorumkv error. ``code`` is the wire code; ``details`` extra fields."""

    code = "internal"
    # True when the request is known not to have taken effect (safe to retry elsewhere).
    retryable = False

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    default_message = "internal error"

    def to_wire(self) -> dict[str, Any]:
        wire = {"code": self.code, "message": self.message}
        wire.update(self.details)
        return wire

    @staticmethod
    def from_wire(wire: Any) -> "QkvError":
        if not isinstance(wire, dict):
            return Internal(f"malformed error reply: {wire!r}")
        code = wire.get("code")
        message = wire.get("message")
        details = {k: v for k, v in wire.items() if k not in ("code", "message")}
        cls = ERRORS_BY_CODE.get(code, Internal) if isinstance(code, str) else Internal
        err = cls(message if isinstance(message, str) else None, **details)
        if cls is Internal and code != "internal":
            err.details["code"] = code
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, **{self.details!r})"


# --- the caller's mistakes -------------------------------------------------------------
class Malformed(QkvError):
    code = "malformed"
    default_message = "malformed request: not a version-1 msgpack map"


class UnknownOp(QkvError):
    code = "unknown_op"
    default_message = "unknown op"


class InvalidArgument(QkvError):
    code = "invalid_argument"
    default_message = "invalid argument"


class KeyNotProvided(InvalidArgument):
    code = "key_not_provided"
    default_message = "etcdserver: key is not provided"


class RequestTooLarge(QkvError):
    code = "request_too_large"
    default_message = "etcdserver: request is too large"


class TooManyOps(QkvError):
    code = "too_many_ops"
    default_message = "etcdserver: too many operations in txn request"


class DuplicateKey(QkvError):
    code = "duplicate_key"
    default_message = "etcdserver: duplicate key given in txn request"


class Compacted(QkvError):
    code = "compacted"
    default_message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevision(QkvError):
    code = "future_revision"
    default_message = "etcdserver: mvcc: required revision is a future revision"


class KeyNotFound(QkvError):
    code = "key_not_found"
    default_message = "etcdserver: key not found"


class LeaseExists(QkvError):
    code = "lease_exists"
    default_message = "etcdserver: lease already exists"


class LeaseNotFound(QkvError):
    code = "lease_not_found"
    default_message = "etcdserver: requested lease not found"


class NoSpace(QkvError):
    """The NOSPACE alarm is active (the backend reached --quota-backend-bytes)."""

    code = "no_space"
    default_message = "etcdserver: mvcc: database space exceeded"


class Corrupt(QkvError):
    """The CORRUPT alarm is active (members' hashes differ): writes are refused."""

    code = "corrupt"
    default_message = "etcdserver: corrupt cluster"


# --- membership (etcd's messages) -----------------------------------------------------
class MemberNotFound(QkvError):
    code = "member_not_found"
    default_message = "etcdserver: member not found"


class MemberExists(QkvError):
    """member_add / member_update with a peer URL (or name) another member has."""

    code = "member_exists"
    default_message = "etcdserver: Peer URLs already exists"


class MemberNotLearner(QkvError):
    code = "member_not_learner"
    default_message = "etcdserver: can only promote a learner member"


class LearnerNotReady(QkvError):
    code = "learner_not_ready"
    default_message = "etcdserver: can only promote a learner member which is in sync with leader"


class UnhealthyCluster(QkvError):
    """--strict-reconfig-check: the change could leave the cluster without a quorum."""

    code = "unhealthy_cluster"
    default_message = "etcdserver: unhealthy cluster"


class ConfChangeInProgress(QkvError):
    code = "conf_change_in_progress"
    default_message = ("etcdserver: another membership change is in progress (not yet applied); "
                       "retry when it is done")


# --- auth (etcd's messages; SPEC section "Authentication") ------------------------------
class PermissionDenied(QkvError):
    code = "permission_denied"
    default_message = "etcdserver: permission denied"


class AuthFailed(QkvError):
    code = "auth_failed"
    default_message = "etcdserver: authentication failed, invalid user ID or password"


class InvalidAuthToken(QkvError):
    """The token is unknown or expired. Refused before it did anything: a client
    re-authenticates once and resends."""

    code = "invalid_auth_token"
    default_message = "etcdserver: invalid auth token"


class AuthNotEnabled(QkvError):
    code = "auth_not_enabled"
    default_message = "etcdserver: authentication is not enabled"


class UserEmpty(QkvError):
    """Auth is enabled and the request carries no user (no token, no client key)."""

    code = "user_empty"
    default_message = "etcdserver: user name is empty"


class AuthOldRevision(QkvError):
    """The request was authorized under an auth revision older than the one it met when it
    ran: refused without effect, the client refreshes and retries."""

    code = "auth_old_revision"
    default_message = "etcdserver: revision of auth store is old"
    retryable = True


class RootUserNotExist(QkvError):
    code = "root_user_not_exist"
    default_message = "etcdserver: root user does not exist"


class RootRoleNotExist(QkvError):
    code = "root_role_not_exist"
    default_message = "etcdserver: root user does not have root role"


class UserAlreadyExist(QkvError):
    code = "user_already_exist"
    default_message = "etcdserver: user name already exists"


class UserNotFound(QkvError):
    code = "user_not_found"
    default_message = "etcdserver: user name not found"


class RoleAlreadyExist(QkvError):
    code = "role_already_exist"
    default_message = "etcdserver: role name already exists"


class RoleNotFound(QkvError):
    code = "role_not_found"
    default_message = "etcdserver: role name not found"


class RoleNotGranted(QkvError):
    code = "role_not_granted"
    default_message = "etcdserver: role is not granted to the user"


class PermissionNotGranted(QkvError):
    code = "permission_not_granted"
    default_message = "etcdserver: permission is not granted to the role"


class InvalidAuthMgmt(QkvError):
    code = "invalid_auth_mgmt"
    default_message = "etcdserver: invalid auth management"


# --- the system's state --------------------------------------------------------------
class NoLeader(QkvError):
    code = "no_leader"
    default_message = "etcdserver: no leader"
    retryable = True


class NotLeader(QkvError):
    code = "not_leader"
    default_message = "etcdserver: not leader"
    retryable = True


class Timeout(QkvError):
    code = "timeout"
    default_message = "etcdserver: request timed out"


class UnknownOutcome(QkvError):
    code = "unknown_outcome"
    default_message = "request outcome unknown: the node restarted while it was in flight"


class Unavailable(QkvError):
    code = "unavailable"
    default_message = "service unavailable"
    retryable = True


class TooManyRequests(QkvError):
    """A connection asked for more than its share (README "Limits"); retry after a pause."""
    code = "too_many_requests"
    default_message = "etcdserver: too many requests"
    retryable = True


class Stopping(QkvError):
    code = "stopping"
    default_message = "etcdserver: server stopped"
    retryable = True


class Internal(QkvError):
    code = "internal"
    default_message = "internal error"


ERRORS_BY_CODE: dict[str, type[QkvError]] = {
    cls.code: cls
    for cls in (
        Malformed, UnknownOp, InvalidArgument, KeyNotProvided, RequestTooLarge, TooManyOps,
        DuplicateKey, Compacted, KeyNotFound, FutureRevision, LeaseNotFound, LeaseExists, NoLeader, NotLeader, Timeout,
        UnknownOutcome, Unavailable, TooManyRequests, Stopping, Internal,
        MemberNotFound, MemberExists, MemberNotLearner, LearnerNotReady, UnhealthyCluster,
        ConfChangeInProgress, NoSpace, Corrupt,
        PermissionDenied, AuthFailed, InvalidAuthToken, AuthNotEnabled, UserEmpty, AuthOldRevision,
        RootUserNotExist, RootRoleNotExist, UserAlreadyExist, UserNotFound, RoleAlreadyExist,
        RoleNotFound, RoleNotGranted, PermissionNotGranted, InvalidAuthMgmt,
    )
}
