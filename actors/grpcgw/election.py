"""v3electionpb.Election: Campaign, Proclaim, Leader, Observe (a server stream) and Resign,
etcd's server-side election (etcdserver/api/v3election/election.go over
clientv3/concurrency/election.go), made of native requests sent AS THE CALLER like the
Lock service (lock.py: ``Caller``, ``Waker``, ``wait_turn``, errors as ``Unknown`` with
etcd's message).

etcd's semantics, kept:
- a candidate's key is ``name + "/" + hex(lease)`` holding its value; lease 0 gets a new
  60 s lease (etcd's session; also for Proclaim and Resign, which etcd does too);
- Campaign: create the key if absent (else read it; a different value is proclaimed),
  then wait until no key of the election created before ours is left: the oldest key
  leads. The answer's header is the first txn's; ``leader`` = name, key, its create
  revision, lease. A cancelled Campaign resigns (deletes its key if still its own);
- Proclaim / Resign: a txn on ``create_revision(key) == rev``; Proclaim fails with
  "election: not leader" when the key is not that one any more; Resign of a key that is
  not ours does nothing and answers OK; a request without ``leader``: '"leader" field
  must be provided';
- Leader: the oldest key of the election, or "election: no leader";
- Observe: the current leader's key and value, then every change of its value, until it
  goes; then the next leader. Each response is read as the caller: the leader with a
  range, its changes with ``history`` from the revision after (the backend client's watch
  and a poll wake the reader, lock.py ``Waker``). A history compacted under it starts
  over from the current leader (etcd's stream would end); any other error ends the
  stream without an error status, as etcd's does.
- While a Campaign waits, its own key vanishing (lease expired or revoked) ends it with
  "election: session is expired" (etcd 3.4 would go on waiting and then report a
  leadership whose key is gone).

Bounds: a blocked Campaign or an Observe is one open RPC (counted by the server's
concurrent-RPC bound), one watch subscription of the backend client and one read per
poll; Observe reads history 100 revisions at a time and waits for gRPC's flow control
before reading more, so a client that does not read holds nothing here.
"""
from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncGenerator, AsyncIterator

import grpc

from actors.grpcgw.backend import SERVER_STREAM, Backend, count_received, kv_to_pb, rpc
from actors.grpcgw.lock import (
    Caller, CallFailed, Waker, answer, first_created, my_revision, session_key, session_lease,
    spawn_cleanup, txn_ranges, wait_turn,
)
from protocol.client.types import prefix_end
from protocol.etcdpb import rpc_pb2, v3election_pb2, v3election_pb2_grpc

SERVICE = "v3electionpb.Election"
NOT_LEADER = "election: not leader"             # concurrency.ErrElectionNotLeader
NO_LEADER = "election: no leader"               # concurrency.ErrElectionNoLeader
MISSING_LEADER = '"leader" field must be provided'  # v3election.ErrMissingLeaderKey
SESSION_EXPIRED = "election: session is expired"
HISTORY_PAGE = 100  # revisions per history read of Observe


# --- native requests (pure) -----------------------------------------------------------------
def campaign_txn(key: bytes, value: bytes, lease: int) -> dict[str, Any]:
    return {"op": "txn",
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": key, "create_revision": 0}],
            "success": [{"put": {"key": key, "value": value, "lease": lease}}],
            "failure": [{"range": {"key": key}}]}


def proclaim_txn(key: bytes, rev: int, value: bytes, lease: int) -> dict[str, Any]:
    return {"op": "txn",
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": key, "create_revision": rev}],
            "success": [{"put": {"key": key, "value": value, "lease": lease}}], "failure": []}


def resign_txn(key: bytes, rev: int) -> dict[str, Any]:
    return {"op": "txn",
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": key, "create_revision": rev}],
            "success": [{"delete_range": {"key": key}}], "failure": []}


def history_request(key: bytes, range_end: bytes, start: int) -> dict[str, Any]:
    req: dict[str, Any] = {"op": "history", "key": key, "start_revision": start, "limit_revisions": HISTORY_PAGE}
    if range_end:
        req["range_end"] = range_end
    return req


def header_at(header: rpc_pb2.ResponseHeader, revision: int) -> rpc_pb2.ResponseHeader:
    """A watch response's header: the reply's ids and term, the events' revision."""
    return rpc_pb2.ResponseHeader(cluster_id=header.cluster_id, member_id=header.member_id,
                                  revision=revision, raft_term=header.raft_term)


def leader_key(name: bytes, key: bytes, rev: int, lease: int) -> v3election_pb2.LeaderKey:
    return v3election_pb2.LeaderKey(name=name, key=key, rev=rev, lease=lease)


# --- the service ------------------------------------------------------------------------------
class ElectionServicer(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    async def _lease(self, caller: Caller, lease: int) -> int:
        return await session_lease(self.b, caller, lease)

    async def _campaign(self, caller: Caller, req: v3election_pb2.CampaignRequest) -> v3election_pb2.CampaignResponse:
        b = self.b
        lease = await self._lease(caller, req.lease)
        pfx, key = req.name + b"/", session_key(req.name, lease)
        reply = await b.call(caller, campaign_txn(key, req.value, lease))
        rev = my_revision(reply)
        if not reply.get("succeeded") and bytes(txn_ranges(reply)[0][0].get("value", b"")) != req.value:
            try:
                proclaimed = await b.call(caller, proclaim_txn(key, rev, req.value, lease))
                if not proclaimed.get("succeeded"):
                    raise CallFailed(grpc.StatusCode.UNKNOWN, NOT_LEADER)
            except CallFailed:
                try:  # etcd resigns and returns the proclamation's error, whatever the resign did
                    await b.call(caller, resign_txn(key, rev))
                except CallFailed:
                    pass
                raise
        try:
            await wait_turn(b, caller, pfx, key, rev, SESSION_EXPIRED)
        except asyncio.CancelledError:
            spawn_cleanup(caller, b, resign_txn(key, rev))
            raise
        return v3election_pb2.CampaignResponse(header=b.header(reply), leader=leader_key(req.name, key, rev, lease))

    @rpc(SERVICE, "Campaign")
    async def Campaign(self, request: v3election_pb2.CampaignRequest, context: Any) -> v3election_pb2.CampaignResponse:
        return await answer(context, lambda caller: self._campaign(caller, request))

    @rpc(SERVICE, "Proclaim")
    async def Proclaim(self, request: v3election_pb2.ProclaimRequest, context: Any) -> v3election_pb2.ProclaimResponse:
        async def proclaim(caller: Caller) -> v3election_pb2.ProclaimResponse:
            if not request.HasField("leader"):
                raise CallFailed(grpc.StatusCode.UNKNOWN, MISSING_LEADER)
            ld = request.leader
            lease = await self._lease(caller, ld.lease)
            reply = await self.b.call(caller, proclaim_txn(ld.key, ld.rev, request.value, lease))
            if not reply.get("succeeded"):
                raise CallFailed(grpc.StatusCode.UNKNOWN, NOT_LEADER)
            return v3election_pb2.ProclaimResponse(header=self.b.header(reply))
        return await answer(context, proclaim)

    @rpc(SERVICE, "Resign")
    async def Resign(self, request: v3election_pb2.ResignRequest, context: Any) -> v3election_pb2.ResignResponse:
        async def resign(caller: Caller) -> v3election_pb2.ResignResponse:
            if not request.HasField("leader"):
                raise CallFailed(grpc.StatusCode.UNKNOWN, MISSING_LEADER)
            ld = request.leader
            await self._lease(caller, ld.lease)
            reply = await self.b.call(caller, resign_txn(ld.key, ld.rev))
            return v3election_pb2.ResignResponse(header=self.b.header(reply))
        return await answer(context, resign)

    @rpc(SERVICE, "Leader")
    async def Leader(self, request: v3election_pb2.LeaderRequest, context: Any) -> v3election_pb2.LeaderResponse:
        async def leader(caller: Caller) -> v3election_pb2.LeaderResponse:
            reply = await self.b.call(caller, {"op": "range", **first_created(request.name + b"/")})
            kvs = reply.get("kvs") or ()
            if not kvs:
                raise CallFailed(grpc.StatusCode.UNKNOWN, NO_LEADER)
            return v3election_pb2.LeaderResponse(header=self.b.header(reply), kv=kv_to_pb(kvs[0]))
        return await answer(context, leader)

    @rpc(SERVICE, "Observe", SERVER_STREAM)
    async def Observe(self, request: v3election_pb2.LeaderRequest,
                      context: Any) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        count_received(SERVICE, "Observe", SERVER_STREAM)  # its one request, as go-grpc-prometheus counts
        caller = Caller(context)
        try:
            async for resp in self._observe(caller, request.name + b"/"):
                yield resp
        except CallFailed:
            return  # etcd's observer closes its channel: the stream ends, status OK

    async def _follow(self, caller: Caller, key: bytes, range_end: bytes,
                      start: int) -> AsyncGenerator[tuple[rpc_pb2.ResponseHeader, list[dict[str, Any]]], None]:
        """Every revision from ``start`` on with events in ``[key, range_end)``, read with
        ``history`` as the caller: (header at that revision, its events)."""
        b = self.b
        waker = Waker(b, key, range_end, start)
        try:
            while True:
                reply = await b.call(caller, history_request(key, range_end, start))
                header = b.header(reply)
                for rv in reply.get("revisions") or ():
                    yield header_at(header, int(rv["revision"])), list(rv.get("events") or ())
                start = max(start, int(reply.get("last_revision") or 0) + 1)
                if not reply.get("more"):
                    await waker.wait()
        finally:
            waker.close()

    async def _observe(self, caller: Caller, pfx: bytes) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        b = self.b
        while True:
            try:
                reply = await b.call(caller, {"op": "range", **first_created(pfx)})
                kvs = reply.get("kvs") or ()
                header = b.header(reply)
                kv: dict[str, Any] | None = dict(kvs[0]) if kvs else None
                if kv is None:  # no leader: the first key put in the election leads
                    async with aclosing(self._follow(caller, pfx, prefix_end(pfx), header.revision + 1)) as f:
                        async for hdr, events in f:
                            puts = [ev for ev in events if ev.get("type") == "PUT"]
                            if puts:
                                kv = dict(puts[0]["kv"])
                                header = header_at(hdr, int(kv.get("mod_revision", hdr.revision)))
                                break
                assert kv is not None
                yield v3election_pb2.LeaderResponse(header=header, kv=kv_to_pb(kv))
                gone = False
                async with aclosing(self._follow(caller, bytes(kv["key"]), b"", header.revision + 1)) as f:
                    async for hdr, events in f:
                        for ev in events:
                            if ev.get("type") == "DELETE":
                                gone = True
                                break
                            yield v3election_pb2.LeaderResponse(header=hdr, kv=kv_to_pb(ev["kv"]))
                        if gone:
                            break
            except CallFailed as failed:
                if failed.code != grpc.StatusCode.OUT_OF_RANGE:  # compacted: start over
                    raise


def add(server: Any, backend: Backend) -> None:
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionServicer(backend), server)
