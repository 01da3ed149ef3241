"""etcdserverpb.Cluster: MemberAdd, MemberRemove, MemberUpdate, MemberList, MemberPromote,
each one native ``member_*`` request (SPEC section 3).

What differs from our native members, and why:
- ``Member.clientURLs`` are the member's **gRPC** URLs (``grpc_urls`` in ``member_list``:
  its ``--advertise-grpc-urls``), what an etcd client dials and auto-syncs to; never our
  ``tcp://`` ZeroMQ client URLs, which no etcd client can speak. A member that serves no
  gRPC lists ``[]`` (an etcd client then never picks it; it can still reach the others).
- ``Member.name`` is ``""`` until the member has been heard from (etcd's "unstarted":
  etcdctl prints that status, and clientv3's ``Sync`` skips the member), as etcd's.
- ``MemberAdd`` carries no name in etcd's API (the new member publishes it when it starts);
  ours needs one at add time, so the member is named after its first peer URL's
  ``host:port`` (the node is found by its peer URL when it joins, whatever its ``--name``).
- Peer URLs: ours are ``tcp://host:port`` (ZeroMQ). An ``http://host:port`` given to
  ``MemberAdd`` / ``MemberUpdate`` (what etcdctl users type) names the same host and port
  and is taken as ``tcp://``; anything else (https, unix, a path, no port) gets etcd's
  "etcdserver: given member URLs are invalid". Listed peer URLs are ours (``tcp://``).
- Headers are etcd's Cluster headers: cluster id, member id and raft term, no revision.
"""
from __future__ import annotations

import re
from typing import Any

import grpc

from actors.grpcgw.backend import Backend, rpc
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc

SERVICE = "etcdserverpb.Cluster"
MAX_PEER_URLS = 16  # the native limit (protocol/requests.py)
BAD_URLS = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
_PEER_URL = re.compile(r"(?:http|tcp)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})/?")


class Refused(Exception):
    """A request refused before any native call: etcd's status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# --- etcd requests -> native ops ---------------------------------------------------------
def peer_urls(urls: Any) -> list[str]:
    """etcd's peerURLs as our ``tcp://host:port`` URLs (module docstring); Refused(BAD_URLS)."""
    if not urls or len(urls) > MAX_PEER_URLS:
        raise Refused(*BAD_URLS)
    out = []
    for u in urls:
        m = _PEER_URL.fullmatch(u) if len(u) <= 300 else None
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise Refused(*BAD_URLS)
        url = f"tcp://{m.group(1)}:{int(m.group(2))}"
        if url not in out:
            out.append(url)
    return out


def add_fields(r: rpc_pb2.MemberAddRequest) -> dict[str, Any]:
    urls = peer_urls(r.peerURLs)
    return {"op": "member_add", "name": urls[0][len("tcp://"):], "peer_urls": urls, "is_learner": bool(r.isLearner)}


def member_id(mid: int) -> int:
    """etcd finds no member 0 (our native ops refuse it as a bad argument)."""
    if not mid:
        raise Refused(*NOT_FOUND)
    return mid


def update_fields(r: rpc_pb2.MemberUpdateRequest) -> dict[str, Any]:
    return {"op": "member_update", "member_id": member_id(r.ID), "peer_urls": peer_urls(r.peerURLs)}


# --- native results -> etcd responses ----------------------------------------------------
def member_to_pb(m: dict[str, Any]) -> rpc_pb2.Member:
    """Our Member map (member_list) as etcd's: clientURLs = the gRPC URLs; no name (etcd's
    "unstarted") before the member was heard from (its client URLs are known then)."""
    started = bool(m.get("client_urls"))
    return rpc_pb2.Member(ID=m.get("id", 0), name=m.get("name", "") if started else "",
                          peerURLs=list(m.get("peer_urls") or ()),
                          clientURLs=list(m.get("grpc_urls") or ()) if started else [],
                          isLearner=bool(m.get("is_learner")))


def members_to_pb(reply: dict[str, Any]) -> list[rpc_pb2.Member]:
    """In member id order, as etcd 3.4 lists them (RaftCluster.Members: MembersByID)."""
    return sorted((member_to_pb(m) for m in reply.get("members") or ()), key=lambda m: m.ID)


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def _header(self, reply: dict[str, Any]) -> rpc_pb2.ResponseHeader:
        """etcd's Cluster headers carry no revision: cluster id, member id, raft term."""
        h = self.b.header(reply)
        h.revision = 0
        return h

    async def _call(self, context: Any, make: Any, request: Any) -> dict[str, Any]:
        try:
            req = make(request)
        except Refused as r:
            await context.abort(r.code, r.message)
        return await self.b.call(context, req)

    @rpc(SERVICE, "MemberAdd")
    async def MemberAdd(self, request: rpc_pb2.MemberAddRequest, context: Any) -> rpc_pb2.MemberAddResponse:
        reply = await self._call(context, add_fields, request)
        member = reply.get("member") or {}
        return rpc_pb2.MemberAddResponse(header=self._header(reply), member=member_to_pb(member),
                                         members=members_to_pb(reply))

    @rpc(SERVICE, "MemberRemove")
    async def MemberRemove(self, request: rpc_pb2.MemberRemoveRequest,
                           context: Any) -> rpc_pb2.MemberRemoveResponse:
        reply = await self._call(context, lambda r: {"op": "member_remove", "member_id": member_id(r.ID)}, request)
        return rpc_pb2.MemberRemoveResponse(header=self._header(reply), members=members_to_pb(reply))

    @rpc(SERVICE, "MemberUpdate")
    async def MemberUpdate(self, request: rpc_pb2.MemberUpdateRequest,
                           context: Any) -> rpc_pb2.MemberUpdateResponse:
        reply = await self._call(context, update_fields, request)
        return rpc_pb2.MemberUpdateResponse(header=self._header(reply), members=members_to_pb(reply))

    @rpc(SERVICE, "MemberList")
    async def MemberList(self, request: rpc_pb2.MemberListRequest, context: Any) -> rpc_pb2.MemberListResponse:
        reply = await self.b.call(context, {"op": "member_list"})
        return rpc_pb2.MemberListResponse(header=self._header(reply), members=members_to_pb(reply))

    @rpc(SERVICE, "MemberPromote")
    async def MemberPromote(self, request: rpc_pb2.MemberPromoteRequest,
                            context: Any) -> rpc_pb2.MemberPromoteResponse:
        reply = await self._call(context, lambda r: {"op": "member_promote", "member_id": member_id(r.ID)}, request)
        return rpc_pb2.MemberPromoteResponse(header=self._header(reply), members=members_to_pb(reply))


def add(server: Any, backend: Backend) -> None:
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(backend), server)
