"""The Lease, v3lock and v3election services' pure parts (actors/grpcgw/lease.py, lock.py,
election.py): etcd requests -> native requests, native replies -> etcd responses, and the
caller relay that lets those services decide the status themselves."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from actors.grpcgw import election, lease, lock
from protocol.etcdpb import rpc_pb2

HDR = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=7, raft_term=3)


# --- Lease --------------------------------------------------------------------------------
def test_grant_request_lets_the_server_pick_and_floors_a_negative_ttl():
    assert lease.grant_request(rpc_pb2.LeaseGrantRequest(TTL=10)) == {"op": "lease_grant", "ttl": 10}
    assert lease.grant_request(rpc_pb2.LeaseGrantRequest(TTL=-5, ID=9)) == {"op": "lease_grant", "ttl": 0, "ID": 9}


def test_grant_and_keepalive_responses():
    g = lease.grant_response({"ID": 5, "ttl": 12}, HDR)
    assert (g.header.revision, g.ID, g.TTL) == (7, 5, 12)
    ka = lease.keepalive_response(5, {"ID": 5, "ttl": 12}, HDR)
    assert (ka.ID, ka.TTL, ka.header.member_id) == (5, 12, 2)
    gone = lease.keepalive_response(5, None, HDR)  # not found: TTL 0, as etcd
    assert (gone.ID, gone.TTL) == (5, 0)


def test_timetolive_response_of_a_missing_lease_is_minus_one_and_nothing_else():
    t = lease.timetolive_response(5, {"ID": 5, "ttl": 8, "granted_ttl": 10, "keys": [b"a", b"b"]}, HDR)
    assert (t.ID, t.TTL, t.grantedTTL, list(t.keys)) == (5, 8, 10, [b"a", b"b"])
    for reply in (None, {"ID": 5, "ttl": -1, "granted_ttl": 0}):
        t = lease.timetolive_response(5, reply, HDR)
        assert (t.ID, t.TTL, t.grantedTTL, list(t.keys)) == (5, -1, 0, [])
    assert lease.timetolive_request(rpc_pb2.LeaseTimeToLiveRequest(ID=5, keys=True)) == {
        "op": "lease_timetolive", "ID": 5, "keys": True}


def test_a_forwarded_reply_carries_the_asked_members_id():
    reply = {"ID": 5, "ttl": 9, "header": {"cluster_id": 1, "member_id": 77, "revision": 4, "raft_term": 2}}
    assert lease.as_local(reply, 2)["header"] == {"cluster_id": 1, "member_id": 2, "revision": 4, "raft_term": 2}
    assert reply["header"]["member_id"] == 77  # not changed in place
    assert lease.as_local({"ID": 5}, 2) == {"ID": 5}


def test_leases_response():
    r = lease.leases_response({"leases": [{"ID": 3}, {"ID": 9}]}, HDR)
    assert [x.ID for x in r.leases] == [3, 9] and r.header.raft_term == 3


# --- v3lock --------------------------------------------------------------------------------
def test_session_key_is_etcds_name_slash_hex_lease():
    assert lock.session_key(b"m", 0x1234) == b"m/1234"
    assert lock.session_key(b"", 255) == b"/ff"
    assert lock.session_key(b"m", -7) == b"m/-7"  # Go's %x of a negative int64


def test_lock_txn_creates_or_reads_and_reads_the_owner():
    t = lock.lock_txn(b"m/a", b"m/", 10)
    assert t["compare"] == [{"target": "CREATE", "result": "EQUAL", "key": b"m/a", "create_revision": 0}]
    owner = {"range": {"key": b"m/", "range_end": b"m0", "sort_target": "CREATE", "sort_order": "ASCEND", "limit": 1}}
    assert t["success"] == [{"put": {"key": b"m/a", "value": b"", "lease": 10}}, owner]
    assert t["failure"] == [{"range": {"key": b"m/a"}}, owner]


def test_who_holds_after_the_lock_txn():
    created = {"succeeded": True, "header": {"revision": 9},
               "responses": [{"put": {}}, {"range": {"kvs": [{"key": b"m/a", "create_revision": 9}]}}]}
    assert lock.my_revision(created) == 9 and lock.holds(created, 9)
    behind = {"succeeded": True, "header": {"revision": 9},
              "responses": [{"put": {}}, {"range": {"kvs": [{"key": b"m/0", "create_revision": 4}]}}]}
    assert not lock.holds(behind, 9)
    existing = {"succeeded": False, "header": {"revision": 12},
                "responses": [{"range": {"kvs": [{"key": b"m/a", "create_revision": 5}]}},
                              {"range": {"kvs": [{"key": b"m/a", "create_revision": 5}]}}]}
    assert lock.my_revision(existing) == 5 and lock.holds(existing, 5)


def test_turn_range_reads_ours_and_the_one_before():
    assert lock.turn_range(b"m/", 9) == {"op": "range", "key": b"m/", "range_end": b"m0", "sort_target": "CREATE",
                                         "sort_order": "DESCEND", "limit": 2, "max_create_revision": 9}


class FakeContext:
    def __init__(self, metadata: tuple = (("token", "tok"),), remaining: float | None = 4.0) -> None:
        self.metadata, self.remaining = metadata, remaining
        self.aborted: tuple | None = None

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def auth_context(self) -> dict:
        return {"x509_common_name": [b"alice"]}

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise grpc.RpcError(message)


def test_caller_keeps_the_identity_and_raises_instead_of_ending_the_rpc():
    ctx = FakeContext()
    caller = lock.Caller(ctx)
    assert caller.invocation_metadata() == (("token", "tok"),)
    assert caller.auth_context() == {"x509_common_name": [b"alice"]}
    assert caller.time_remaining() == 4.0
    caller.detached = True  # the clean-up after a cancel has its own budget
    assert caller.time_remaining() == lock.CLEANUP_TIMEOUT_S
    with pytest.raises(lock.CallFailed) as info:
        asyncio.run(caller.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"))
    assert (info.value.code, info.value.message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert ctx.aborted is None


def test_answer_ends_a_failed_call_as_unknown_with_etcds_message():
    async def fails(caller: lock.Caller) -> Any:
        raise lock.CallFailed(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

    ctx = FakeContext()
    with pytest.raises(grpc.RpcError):
        asyncio.run(lock.answer(ctx, fails))
    assert ctx.aborted == (grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")


def test_waker_without_a_watch_polls_with_a_growing_interval(monkeypatch):
    monkeypatch.setattr(lock, "_watch_broken_until", float("inf"))
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(lock.asyncio, "sleep", sleep)
    w = lock.Waker(None, b"k", b"", 5)  # type: ignore[arg-type]

    async def run() -> None:
        for _ in range(6):
            await w.wait()

    asyncio.run(run())
    assert slept == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


# --- v3election ------------------------------------------------------------------------------
def test_election_txns():
    assert election.campaign_txn(b"e/a", b"v", 10) == {
        "op": "txn", "compare": [{"target": "CREATE", "result": "EQUAL", "key": b"e/a", "create_revision": 0}],
        "success": [{"put": {"key": b"e/a", "value": b"v", "lease": 10}}], "failure": [{"range": {"key": b"e/a"}}]}
    assert election.proclaim_txn(b"e/a", 4, b"w", 10)["compare"] == [
        {"target": "CREATE", "result": "EQUAL", "key": b"e/a", "create_revision": 4}]
    assert election.resign_txn(b"e/a", 4)["success"] == [{"delete_range": {"key": b"e/a"}}]


def test_history_request_and_the_watch_style_header():
    assert election.history_request(b"e/", b"e0", 5) == {
        "op": "history", "key": b"e/", "range_end": b"e0", "start_revision": 5, "limit_revisions": 100}
    assert "range_end" not in election.history_request(b"e/a", b"", 5)
    h = election.header_at(HDR, 11)
    assert (h.cluster_id, h.member_id, h.revision, h.raft_term) == (1, 2, 11, 3)


def test_etcds_election_messages():
    assert election.NOT_LEADER == "election: not leader"
    assert election.NO_LEADER == "election: no leader"
    assert election.MISSING_LEADER == '"leader" field must be provided'


class ScriptedBackend:
    """Backend.call answering from a list of replies (range replies of wait_turn)."""

    def __init__(self, replies: list[dict]) -> None:
        self.replies, self.asked = replies, []

    async def call(self, caller: Any, req: dict, timeout: float | None = None) -> dict:
        self.asked.append(req)
        return self.replies.pop(0)


def turn(*kvs: tuple[bytes, int], rev: int = 20) -> dict:
    return {"header": {"revision": rev}, "kvs": [{"key": k, "create_revision": r} for k, r in kvs]}


def run_wait_turn(monkeypatch, replies: list[dict]) -> tuple[Any, ScriptedBackend]:
    monkeypatch.setattr(lock, "_watch_broken_until", float("inf"))  # poll only

    async def sleep(s: float) -> None:
        pass

    monkeypatch.setattr(lock.asyncio, "sleep", sleep)
    b = ScriptedBackend(replies)
    caller = lock.Caller(FakeContext())
    try:
        out = asyncio.run(lock.wait_turn(b, caller, b"m/", b"m/b", 9, lock.SESSION_EXPIRED))  # type: ignore[arg-type]
    except lock.CallFailed as failed:
        out = failed
    return out, b


def test_wait_turn_returns_once_nobody_created_before_us_is_left(monkeypatch):
    last = turn((b"m/b", 9), rev=22)
    out, b = run_wait_turn(monkeypatch, [turn((b"m/b", 9), (b"m/a", 4)), turn((b"m/b", 9), (b"m/a", 4)), last])
    assert out is last and len(b.asked) == 3
    assert all(req == lock.turn_range(b"m/", 9) for req in b.asked)


def test_wait_turn_fails_when_our_key_is_gone(monkeypatch):
    for gone in (turn((b"m/a", 4)), turn(), turn((b"m/b", 12))):  # deleted, or made again by a later Lock
        out, _ = run_wait_turn(monkeypatch, [turn((b"m/b", 9), (b"m/a", 4)), gone])
        assert isinstance(out, lock.CallFailed) and out.message == "mutex: session is expired"
