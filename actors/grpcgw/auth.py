"""etcdserverpb.Auth: etcd 3.4's whole Auth service, each RPC one native auth op
(protocol/SPEC.md sections 7.5-7.7).

- ``Authenticate`` returns our token (43 URL-safe characters, opaque to etcd clients);
  clients send it as ``token`` metadata and Backend.identity passes it on. An unknown or
  expired token: Unauthenticated "etcdserver: invalid auth token" (clientv3 then
  authenticates again, as with etcd).
- Names and passwords go to the native ops unchanged: the native validators refuse what
  they must (too long, control characters) with etcd's status (errors.py).
- ``Permission.permType`` READ/WRITE/READWRITE is our ``perm_type`` string; an enum value
  etcd does not define is passed on as its number, which the native validator refuses
  (invalid_argument) instead of storing it as etcd would.
- ``UserAddOptions.no_password``: the password is ignored, as etcd ignores it.
- ``Authenticate`` with a name or password no user can have (empty name, over our
  limits, control characters) is ``auth_failed`` as in etcd, not our native op's
  ``user_empty`` / ``invalid_argument`` (``auth_status`` tells first whether auth is on).
Conversions are pure functions (request pb -> native map, native reply -> pb).
"""
from __future__ import annotations

from typing import Any

from actors.grpcgw.backend import Backend, rpc, valid_user_name
from protocol import errors
from protocol.etcdpb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from protocol.requests import AUTH_PASSWORD_MAX_BYTES

SERVICE = "etcdserverpb.Auth"
PERM_TYPE = {auth_pb2.Permission.READ: "READ", auth_pb2.Permission.WRITE: "WRITE",
             auth_pb2.Permission.READWRITE: "READWRITE"}
PERM_TYPE_PB = {name: value for value, name in PERM_TYPE.items()}


# --- etcd requests -> native ops ----------------------------------------------------------
def authenticate_op(r: rpc_pb2.AuthenticateRequest) -> dict[str, Any]:
    return {"op": "authenticate", "name": r.name, "password": r.password}


def user_add_op(r: rpc_pb2.AuthUserAddRequest) -> dict[str, Any]:
    if r.HasField("options") and r.options.no_password:
        return {"op": "user_add", "name": r.name, "no_password": True}
    return {"op": "user_add", "name": r.name, "password": r.password}


def user_get_op(r: rpc_pb2.AuthUserGetRequest) -> dict[str, Any]:
    return {"op": "user_get", "name": r.name}


def user_delete_op(r: rpc_pb2.AuthUserDeleteRequest) -> dict[str, Any]:
    return {"op": "user_delete", "name": r.name}


def user_change_password_op(r: rpc_pb2.AuthUserChangePasswordRequest) -> dict[str, Any]:
    return {"op": "user_change_password", "name": r.name, "password": r.password}


def user_grant_role_op(r: rpc_pb2.AuthUserGrantRoleRequest) -> dict[str, Any]:
    return {"op": "user_grant_role", "name": r.user, "role": r.role}


def user_revoke_role_op(r: rpc_pb2.AuthUserRevokeRoleRequest) -> dict[str, Any]:
    return {"op": "user_revoke_role", "name": r.name, "role": r.role}


def role_add_op(r: rpc_pb2.AuthRoleAddRequest) -> dict[str, Any]:
    return {"op": "role_add", "name": r.name}


def role_get_op(r: rpc_pb2.AuthRoleGetRequest) -> dict[str, Any]:
    return {"op": "role_get", "name": r.role}


def role_delete_op(r: rpc_pb2.AuthRoleDeleteRequest) -> dict[str, Any]:
    return {"op": "role_delete", "name": r.role}


def perm_fields(p: auth_pb2.Permission) -> dict[str, Any]:
    """authpb.Permission as our ``perm`` map."""
    return {"perm_type": PERM_TYPE.get(p.permType, p.permType), "key": p.key, "range_end": p.range_end}


def role_grant_permission_op(r: rpc_pb2.AuthRoleGrantPermissionRequest) -> dict[str, Any]:
    return {"op": "role_grant_permission", "name": r.name, "perm": perm_fields(r.perm)}


def role_revoke_permission_op(r: rpc_pb2.AuthRoleRevokePermissionRequest) -> dict[str, Any]:
    return {"op": "role_revoke_permission", "name": r.role, "key": r.key, "range_end": r.range_end}


def can_authenticate(r: rpc_pb2.AuthenticateRequest) -> bool:
    """False for a name no user can have or a password no user can have (our native op
    refuses those as malformed: user_empty, invalid_argument); etcd says "authentication
    failed" (or "not enabled") for them as for any unknown user."""
    return valid_user_name(r.name) and len(r.password.encode("utf-8", "surrogatepass")) <= AUTH_PASSWORD_MAX_BYTES


# --- native results -> etcd responses ----------------------------------------------------
def perm_to_pb(p: dict[str, Any]) -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=PERM_TYPE_PB.get(p.get("perm_type", "READ"), auth_pb2.Permission.READ),
                               key=p.get("key", b""), range_end=p.get("range_end", b""))


def role_get_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.AuthRoleGetResponse:
    return rpc_pb2.AuthRoleGetResponse(header=header, perm=[perm_to_pb(p) for p in r.get("perm") or ()])


class AuthServicer(rpc_pb2_grpc.AuthServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    async def _do(self, context: Any, op: dict[str, Any]) -> tuple[dict[str, Any], rpc_pb2.ResponseHeader]:
        reply = await self.b.call(context, op)
        return reply, self.b.header(reply)

    @rpc(SERVICE, "AuthEnable")
    async def AuthEnable(self, request: rpc_pb2.AuthEnableRequest, context: Any) -> rpc_pb2.AuthEnableResponse:
        _, h = await self._do(context, {"op": "auth_enable"})
        return rpc_pb2.AuthEnableResponse(header=h)

    @rpc(SERVICE, "AuthDisable")
    async def AuthDisable(self, request: rpc_pb2.AuthDisableRequest, context: Any) -> rpc_pb2.AuthDisableResponse:
        _, h = await self._do(context, {"op": "auth_disable"})
        return rpc_pb2.AuthDisableResponse(header=h)

    @rpc(SERVICE, "Authenticate")
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest, context: Any) -> rpc_pb2.AuthenticateResponse:
        if not can_authenticate(request):  # etcd: no such user -> authentication failed
            status = await self.b.call(context, {"op": "auth_status"})
            await self.b.abort(context, errors.AuthFailed() if status.get("enabled") else errors.AuthNotEnabled())
        reply, h = await self._do(context, authenticate_op(request))
        return rpc_pb2.AuthenticateResponse(header=h, token=reply.get("token", ""))

    @rpc(SERVICE, "UserAdd")
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest, context: Any) -> rpc_pb2.AuthUserAddResponse:
        _, h = await self._do(context, user_add_op(request))
        return rpc_pb2.AuthUserAddResponse(header=h)

    @rpc(SERVICE, "UserGet")
    async def UserGet(self, request: rpc_pb2.AuthUserGetRequest, context: Any) -> rpc_pb2.AuthUserGetResponse:
        reply, h = await self._do(context, user_get_op(request))
        return rpc_pb2.AuthUserGetResponse(header=h, roles=list(reply.get("roles") or ()))

    @rpc(SERVICE, "UserList")
    async def UserList(self, request: rpc_pb2.AuthUserListRequest, context: Any) -> rpc_pb2.AuthUserListResponse:
        reply, h = await self._do(context, {"op": "user_list"})
        return rpc_pb2.AuthUserListResponse(header=h, users=list(reply.get("users") or ()))

    @rpc(SERVICE, "UserDelete")
    async def UserDelete(self, request: rpc_pb2.AuthUserDeleteRequest, context: Any) -> rpc_pb2.AuthUserDeleteResponse:
        _, h = await self._do(context, user_delete_op(request))
        return rpc_pb2.AuthUserDeleteResponse(header=h)

    @rpc(SERVICE, "UserChangePassword")
    async def UserChangePassword(self, request: rpc_pb2.AuthUserChangePasswordRequest,
                                 context: Any) -> rpc_pb2.AuthUserChangePasswordResponse:
        _, h = await self._do(context, user_change_password_op(request))
        return rpc_pb2.AuthUserChangePasswordResponse(header=h)

    @rpc(SERVICE, "UserGrantRole")
    async def UserGrantRole(self, request: rpc_pb2.AuthUserGrantRoleRequest,
                            context: Any) -> rpc_pb2.AuthUserGrantRoleResponse:
        _, h = await self._do(context, user_grant_role_op(request))
        return rpc_pb2.AuthUserGrantRoleResponse(header=h)

    @rpc(SERVICE, "UserRevokeRole")
    async def UserRevokeRole(self, request: rpc_pb2.AuthUserRevokeRoleRequest,
                             context: Any) -> rpc_pb2.AuthUserRevokeRoleResponse:
        _, h = await self._do(context, user_revoke_role_op(request))
        return rpc_pb2.AuthUserRevokeRoleResponse(header=h)

    @rpc(SERVICE, "RoleAdd")
    async def RoleAdd(self, request: rpc_pb2.AuthRoleAddRequest, context: Any) -> rpc_pb2.AuthRoleAddResponse:
        _, h = await self._do(context, role_add_op(request))
        return rpc_pb2.AuthRoleAddResponse(header=h)

    @rpc(SERVICE, "RoleGet")
    async def RoleGet(self, request: rpc_pb2.AuthRoleGetRequest, context: Any) -> rpc_pb2.AuthRoleGetResponse:
        reply, h = await self._do(context, role_get_op(request))
        return role_get_response(reply, h)

    @rpc(SERVICE, "RoleList")
    async def RoleList(self, request: rpc_pb2.AuthRoleListRequest, context: Any) -> rpc_pb2.AuthRoleListResponse:
        reply, h = await self._do(context, {"op": "role_list"})
        return rpc_pb2.AuthRoleListResponse(header=h, roles=list(reply.get("roles") or ()))

    @rpc(SERVICE, "RoleDelete")
    async def RoleDelete(self, request: rpc_pb2.AuthRoleDeleteRequest, context: Any) -> rpc_pb2.AuthRoleDeleteResponse:
        _, h = await self._do(context, role_delete_op(request))
        return rpc_pb2.AuthRoleDeleteResponse(header=h)

    @rpc(SERVICE, "RoleGrantPermission")
    async def RoleGrantPermission(self, request: rpc_pb2.AuthRoleGrantPermissionRequest,
                                  context: Any) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        _, h = await self._do(context, role_grant_permission_op(request))
        return rpc_pb2.AuthRoleGrantPermissionResponse(header=h)

    @rpc(SERVICE, "RoleRevokePermission")
    async def RoleRevokePermission(self, request: rpc_pb2.AuthRoleRevokePermissionRequest,
                                   context: Any) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        _, h = await self._do(context, role_revoke_permission_op(request))
        return rpc_pb2.AuthRoleRevokePermissionResponse(header=h)


def add(server: Any, backend: Backend) -> None:
    """Register the Auth servicer on server."""
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthServicer(backend), server)
