"""etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a bidirectional stream),
LeaseTimeToLive and LeaseLeases, as the native lease ops (SPEC section 3 "Leases").

etcd 3.4's behaviour (etcdserver/api/v3rpc/lease.go, etcdserver/v3_server.go), kept here:
- LeaseGrant: ``ID`` 0 = the server picks; a TTL above 9,000,000,000 s is ``OutOfRange``
  "etcdserver: too large lease TTL"; a negative TTL is raised to the minimum as a small
  one is (etcd's lessor does the same); an id in use is ``FailedPrecondition``
  "etcdserver: lease already exists".
- LeaseRevoke of an unknown id (0 included): ``NotFound`` "etcdserver: requested lease
  not found".
- LeaseKeepAlive: one response per request, in order, each with the request's ``ID`` and
  the granted TTL, or TTL 0 when the lease is not found (never an error for that); any
  other error ends the stream with its status. Requests are served one at a time as
  etcd does (read, renew, send), so a client that sends faster than it reads is held by
  gRPC's flow control: nothing queues here.
- LeaseTimeToLive of an unknown lease: TTL -1 (no error), ``keys`` when asked.
- keep-alive and time-to-live are served by the Raft leader only (SPEC): a request that
  reaches a follower's gateway is sent on to the leader's client URL that the follower
  names (the client library's lease router over Backend.remote, with CURVE where the
  cluster has a server key), with the caller's token. etcd forwards
  these to its leader the same way. (Without a token but with a TLS client certificate's
  user there is nobody to send as on another member's client port: that case gets the
  follower's "etcdserver: not leader".)
"""
from __future__ import annotations

from typing import Any, AsyncIterator

import grpc

from actors.grpcgw.backend import BIDI_STREAM, Backend, count_received, rpc
from protocol import errors
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc

SERVICE = "etcdserverpb.Lease"
MAX_LEASE_TTL = 9_000_000_000  # etcd's lease.MaxLeaseTTL (seconds)
TTL_TOO_LARGE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
# How long a follower looks for the leader (etcd's forwarding loop gives up after its request
# timeout: 5 s + 2 election timeouts, 7 s at defaults), whatever the client's deadline.
LEADER_ROUTE_TIMEOUT_S = 7.0


# --- etcd requests -> native requests ------------------------------------------------------
def grant_request(r: rpc_pb2.LeaseGrantRequest) -> dict[str, Any]:
    """The ``lease_grant`` request (TTL already checked against MAX_LEASE_TTL)."""
    req: dict[str, Any] = {"op": "lease_grant", "ttl": max(0, r.TTL)}
    if r.ID:
        req["ID"] = r.ID
    return req


def keepalive_request(lease_id: int) -> dict[str, Any]:
    return {"op": "lease_keepalive", "ID": lease_id}


def timetolive_request(r: rpc_pb2.LeaseTimeToLiveRequest) -> dict[str, Any]:
    req: dict[str, Any] = {"op": "lease_timetolive", "ID": r.ID}
    if r.keys:
        req["keys"] = True
    return req


# --- native replies -> etcd responses --------------------------------------------------------
def grant_response(reply: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.LeaseGrantResponse:
    return rpc_pb2.LeaseGrantResponse(header=header, ID=int(reply.get("ID") or 0), TTL=int(reply.get("ttl") or 0))


def keepalive_response(lease_id: int, reply: dict[str, Any] | None,
                       header: rpc_pb2.ResponseHeader) -> rpc_pb2.LeaseKeepAliveResponse:
    """``reply`` None: the lease was not found (TTL 0, as etcd answers)."""
    ttl = int(reply.get("ttl") or 0) if reply is not None else 0
    return rpc_pb2.LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=max(0, ttl))


def timetolive_response(lease_id: int, reply: dict[str, Any] | None,
                        header: rpc_pb2.ResponseHeader) -> rpc_pb2.LeaseTimeToLiveResponse:
    """``reply`` None, or a TTL of -1: no such lease (TTL -1, nothing else)."""
    ttl = -1 if reply is None else int(reply.get("ttl", -1))
    if ttl < 0:
        return rpc_pb2.LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=-1)
    return rpc_pb2.LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=ttl,
                                           grantedTTL=int(reply.get("granted_ttl") or 0) if reply else 0,
                                           keys=list(reply.get("keys") or ()) if reply else [])


def leases_response(reply: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.LeaseLeasesResponse:
    out = []
    for item in reply.get("leases") or ():
        lid = item.get("ID", 0) if isinstance(item, dict) else item
        out.append(rpc_pb2.LeaseStatus(ID=int(lid or 0)))
    return rpc_pb2.LeaseLeasesResponse(header=header, leases=out)


def as_local(reply: dict[str, Any], member_id: int) -> dict[str, Any]:
    """A reply the leader gave, with this member's id in its header: etcd fills the header
    of a forwarded keep-alive or time-to-live on the member the client asked."""
    header = reply.get("header")
    if isinstance(header, dict):
        return {**reply, "header": {**header, "member_id": member_id}}
    return reply


# --- the leader-only ops ---------------------------------------------------------------------
async def leader_call(b: Backend, context: Any, req: dict[str, Any]) -> dict[str, Any] | None:
    """``req`` (lease_keepalive / lease_timetolive) at the Raft leader, as the caller; the
    reply map, or None when the lease is not found. Other errors abort the RPC."""
    ident = b.identity(context)
    timeout = b.timeout_of(context)
    try:
        with b.slot():
            try:
                reply = await b.client.request({**req, **ident}, timeout=timeout)
            except errors.NotLeader:
                if "as_user" in ident:
                    raise
                # The token works on every member (SPEC 7.5): the router finds the leader.
                reply = await b.remote._lease_router().call({**req, **ident},
                                                            timeout=min(timeout, LEADER_ROUTE_TIMEOUT_S))
                reply = as_local(reply, b.member_id)
    except errors.LeaseNotFound:
        return None
    except errors.QkvError as err:
        await b.abort(context, err)
        raise AssertionError("unreachable")  # context.abort raises
    b.note_header(reply.get("header"))
    return reply


class LeaseServicer(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    @rpc(SERVICE, "LeaseGrant")
    async def LeaseGrant(self, request: rpc_pb2.LeaseGrantRequest, context: Any) -> rpc_pb2.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL:
            await context.abort(*TTL_TOO_LARGE)
        reply = await self.b.call(context, grant_request(request))
        return grant_response(reply, self.b.header(reply))

    @rpc(SERVICE, "LeaseRevoke")
    async def LeaseRevoke(self, request: rpc_pb2.LeaseRevokeRequest, context: Any) -> rpc_pb2.LeaseRevokeResponse:
        if request.ID <= 0:  # no lease has such an id (ours are > 0)
            await context.abort(*LEASE_NOT_FOUND)
        reply = await self.b.call(context, {"op": "lease_revoke", "ID": request.ID})
        return rpc_pb2.LeaseRevokeResponse(header=self.b.header(reply))

    @rpc(SERVICE, "LeaseTimeToLive")
    async def LeaseTimeToLive(self, request: rpc_pb2.LeaseTimeToLiveRequest,
                              context: Any) -> rpc_pb2.LeaseTimeToLiveResponse:
        reply = None
        if request.ID > 0:
            reply = await leader_call(self.b, context, timetolive_request(request))
        return timetolive_response(request.ID, reply, self.b.header(reply))

    @rpc(SERVICE, "LeaseLeases")
    async def LeaseLeases(self, request: rpc_pb2.LeaseLeasesRequest, context: Any) -> rpc_pb2.LeaseLeasesResponse:
        reply = await self.b.call(context, {"op": "lease_leases"})
        return leases_response(reply, self.b.header(reply))

    @rpc(SERVICE, "LeaseKeepAlive", BIDI_STREAM)
    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
                             context: Any) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for request in request_iterator:
            count_received(SERVICE, "LeaseKeepAlive", BIDI_STREAM)
            reply = None
            if request.ID > 0:
                reply = await leader_call(self.b, context, keepalive_request(request.ID))
            yield keepalive_response(request.ID, reply, self.b.header(reply))


def add(server: Any, backend: Backend) -> None:
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseServicer(backend), server)
