"""Our errors as etcd's gRPC statuses: the code and the message etcd 3.4 sends
(etcdserver/api/v3rpc/rpctypes/error.go), which client libraries match on. An error etcd
has no status for keeps our message under the closest code."""
from __future__ import annotations

import grpc

from protocol import errors

SC = grpc.StatusCode

# our error code -> (status code, etcd's message or None to keep ours)
STATUS: dict[str, tuple[grpc.StatusCode, str | None]] = {
    "key_not_provided": (SC.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    "key_not_found": (SC.INVALID_ARGUMENT, "etcdserver: key not found"),
    "too_many_ops": (SC.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    "duplicate_key": (SC.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    "compacted": (SC.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    "future_revision": (SC.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
    "no_space": (SC.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    "lease_not_found": (SC.NOT_FOUND, "etcdserver: requested lease not found"),
    "lease_exists": (SC.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    "lease_ttl_too_large": (SC.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
    "member_exists": (SC.FAILED_PRECONDITION, None),  # ours says which: member ID or peer URLs
    "member_not_found": (SC.NOT_FOUND, "etcdserver: member not found"),
    "member_not_learner": (SC.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"),
    "learner_not_ready": (SC.FAILED_PRECONDITION,
                          "etcdserver: can only promote a learner member which is in sync with leader"),
    "unhealthy_cluster": (SC.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    "conf_change_in_progress": (SC.FAILED_PRECONDITION, None),
    "request_too_large": (SC.INVALID_ARGUMENT, "etcdserver: request is too large"),
    "too_many_requests": (SC.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    "root_user_not_exist": (SC.FAILED_PRECONDITION, "etcdserver: root user does not exist"),
    "root_role_not_exist": (SC.FAILED_PRECONDITION, "etcdserver: root user does not have root role"),
    "user_already_exist": (SC.FAILED_PRECONDITION, "etcdserver: user name already exists"),
    "user_empty": (SC.INVALID_ARGUMENT, "etcdserver: user name is empty"),
    "user_not_found": (SC.FAILED_PRECONDITION, "etcdserver: user name not found"),
    "role_already_exist": (SC.FAILED_PRECONDITION, "etcdserver: role name already exists"),
    "role_not_found": (SC.FAILED_PRECONDITION, "etcdserver: role name not found"),
    "role_empty": (SC.INVALID_ARGUMENT, "etcdserver: role name is empty"),
    "auth_failed": (SC.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"),
    "permission_denied": (SC.PERMISSION_DENIED, "etcdserver: permission denied"),
    "role_not_granted": (SC.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"),
    "permission_not_granted": (SC.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"),
    "auth_not_enabled": (SC.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"),
    "invalid_auth_token": (SC.UNAUTHENTICATED, "etcdserver: invalid auth token"),
    "invalid_auth_mgmt": (SC.INVALID_ARGUMENT, "etcdserver: invalid auth management"),
    "auth_old_revision": (SC.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"),
    "no_leader": (SC.UNAVAILABLE, "etcdserver: no leader"),
    "not_leader": (SC.FAILED_PRECONDITION, "etcdserver: not leader"),
    "timeout": (SC.UNAVAILABLE, "etcdserver: request timed out"),
    "unknown_outcome": (SC.UNAVAILABLE, "etcdserver: request timed out"),
    "stopping": (SC.UNAVAILABLE, "etcdserver: server stopped"),
    "corrupt": (SC.DATA_LOSS, "etcdserver: corrupt cluster"),
    "unavailable": (SC.UNAVAILABLE, None),
    "invalid_argument": (SC.INVALID_ARGUMENT, None),
    "malformed": (SC.INVALID_ARGUMENT, None),
    "unknown_op": (SC.UNIMPLEMENTED, None),
    "internal": (SC.INTERNAL, None),
}


def status_of(err: errors.QkvError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message etcd would send for ``err``."""
    code, message = STATUS.get(err.code, (SC.UNKNOWN, None))
    if message is None:
        message = err.message if err.message.startswith("etcdserver: ") else f"etcdserver: {err.message}"
    return code, message
