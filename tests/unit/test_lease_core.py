"""The pure lease/lock/election algorithms (protocol/client/effects.py, leasecore.py,
lockcore.py), fed their effects' results by hand: no server, no clock, no sleeping."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import pytest

from protocol.client.effects import (
    WATCH_ENDED, Call, Idle, Now, Send, Sleep, WatchClose, WatchGet, WatchOpen, run_sync,
)
from protocol.client.leasecore import (
    LOST_EXPIRED, LOST_NOT_FOUND, RETRY_PAUSE_S, LeaseCore, RouterCore, attempt_timeout_for,
)
from protocol.client.lockcore import (
    ElectionCore, LockCore, LockTimeout, ObserverCore, SessionExpired, wait_deletes,
)
from protocol.client.types import LeaseGrantResponse, ResponseHeader
from protocol.client.watch import Event, WatchResponse
from protocol.client.types import KeyValue
from protocol.errors import Internal, InvalidArgument, LeaseNotFound, NotLeader, Timeout, Unavailable


class World:
    """A fake clock and a handler per effect type; records every effect."""

    def __init__(self, **handlers: Callable[[Any], Any]) -> None:
        self.t = 100.0
        self.handlers = handlers
        self.seen: list[Any] = []

    def perform(self, eff: Any) -> Any:
        self.seen.append(eff)
        if isinstance(eff, Now):
            return self.t
        if isinstance(eff, Sleep):
            self.t += eff.seconds
            return None
        h = self.handlers.get(type(eff).__name__)
        if h is None:
            raise AssertionError(f"unexpected effect {eff!r}")
        return h(eff)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.seen if isinstance(e, kind)]


def fake_client(*endpoints: str, timeout: float = 3.0) -> Any:
    return SimpleNamespace(endpoints=list(endpoints), _preferred=0, timeout=timeout)


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, "header": {"cluster_id": 1, "member_id": 2, "revision": 7, "raft_term": 1}, **fields}


# -- the drivers ----------------------------------------------------------------------------
def test_run_sync_throws_effect_errors_into_the_algorithm():
    def algo():
        try:
            yield Call({"op": "x"}, write=False)
        except Unavailable:
            got = yield Now()
            return ("recovered", got)

    def fail(eff):
        raise Unavailable("down")

    w = World(Call=fail)
    assert run_sync(algo(), w.perform) == ("recovered", 100.0)


def test_run_async_is_the_same_loop():
    import asyncio

    from protocol.client.effects import run_async

    def algo():
        a = yield Now()
        b = yield Now()
        return a + b

    async def perform(eff):
        return 1.5

    assert asyncio.run(run_async(algo(), perform)) == 3.0


# -- leader routing -------------------------------------------------------------------------
def test_route_follows_the_not_leader_hint_and_remembers_the_leader():
    r = RouterCore(fake_client("tcp://f:1", "tcp://g:1"))

    def send(eff: Send):
        if eff.url == "tcp://l:1":
            return ok(ID=5, ttl=10)
        raise NotLeader("not the leader", leader_client_urls=["l:1"])

    w = World(Send=send)
    resp = run_sync(r.keepalive_algo(5), w.perform)
    assert (resp.id, resp.ttl) == (5, 10)
    assert [e.url for e in w.of(Send)] == ["tcp://f:1", "tcp://l:1"]
    assert r.leader_url == "tcp://l:1" and r.redirects == 1
    w.seen.clear()
    run_sync(r.keepalive_algo(5), w.perform)
    assert [e.url for e in w.of(Send)] == ["tcp://l:1"]  # straight to the leader


def test_route_wildcard_hint_takes_the_asked_host():
    r = RouterCore(fake_client("tcp://10.0.0.5:7379"))
    hints = r.hints(NotLeader("x", leader_client_urls=["tcp://0.0.0.0:9000", 7, "", "x" * 5]),
                    "tcp://10.0.0.5:7379")
    assert hints[0] == "tcp://10.0.0.5:9000" and len(hints) == 2  # junk entries skipped
    # a forged answer with a huge list is read only so far
    many = r.hints(NotLeader("x", leader_client_urls=[f"h:{i}" for i in range(10_000)]), "tcp://a:1")
    assert len(many) <= 16
    assert r.hints(NotLeader("x", leader_client_urls="tcp://a:1"), "tcp://a:1") == []


def test_route_retries_rounds_with_a_pause_until_the_deadline_then_raises_the_last_error():
    r = RouterCore(fake_client("tcp://a:1", "tcp://b:1"), attempt_timeout=0.5)

    def send(eff: Send):
        raise Unavailable(f"could not connect to {eff.url}")

    w = World(Send=send)
    with pytest.raises(Unavailable):
        run_sync(r.route({"op": "lease_keepalive"}, timeout=1.0), w.perform)
    sleeps = w.of(Sleep)
    assert sleeps and all(s.seconds <= RETRY_PAUSE_S for s in sleeps)
    assert len(w.of(Send)) >= 2 * len(sleeps)  # a pause only after a whole round
    assert all(s.timeout <= 0.5 for s in w.of(Send))


def test_route_raises_a_non_retryable_error_at_once():
    r = RouterCore(fake_client("tcp://a:1", "tcp://b:1"))
    w = World(Send=lambda eff: (_ for _ in ()).throw(InvalidArgument("bad")))
    with pytest.raises(InvalidArgument):
        run_sync(r.route({"op": "lease_keepalive"}), w.perform)
    assert len(w.of(Send)) == 1


def test_route_timeouts_move_on_and_forget_a_dead_leader():
    r = RouterCore(fake_client("tcp://a:1", "tcp://b:1"))
    r.leader_url = "tcp://a:1"

    def send(eff: Send):
        if eff.url == "tcp://a:1":
            raise Timeout("no reply")
        return ok(ID=1, ttl=3)

    w = World(Send=send)
    run_sync(r.keepalive_algo(1), w.perform)
    assert r.leader_url == "tcp://b:1"


def test_a_malformed_reply_is_a_clear_error():
    r = RouterCore(fake_client("tcp://a:1"))
    w = World(Send=lambda eff: {"ok": True, "header": {}, "ttl": "x"})
    with pytest.raises(Internal):
        run_sync(r.keepalive_algo(1), w.perform)


def test_attempt_timeout():
    assert attempt_timeout_for(7.0) == 2.0
    assert attempt_timeout_for(1.0) == 1.0
    assert attempt_timeout_for(7.0, ttl=2) == 0.5
    assert attempt_timeout_for(7.0, ttl=0.5) == 0.25


# -- the keep-alive loop --------------------------------------------------------------------
class FakeLease(LeaseCore):
    def __init__(self, router: RouterCore, ttl: int, now: float) -> None:
        self._init_state(router.client, None)
        self._done = False
        self._granted(LeaseGrantResponse(ResponseHeader(), 9, ttl), now)
        self._router = router

    def _set_done(self) -> None:
        self._done = True

    def _is_done(self) -> bool:
        return self._done


def lease_world(send: Callable[[Send], Any], stop_after: int = 1000) -> World:
    calls = {"idle": 0}

    def idle(eff: Idle) -> bool:
        calls["idle"] += 1
        w.t += eff.seconds
        return calls["idle"] > stop_after

    w = World(Send=send, Idle=idle)
    return w


def test_keepalive_every_third_of_the_ttl_and_the_deadline_moves():
    w = lease_world(lambda eff: ok(ID=9, ttl=3), stop_after=4)
    lease = FakeLease(RouterCore(fake_client("tcp://a:1")), 3, 100.0)
    run_sync(lease.keepalive_loop(), w.perform)
    assert [e.seconds for e in w.of(Idle)] == [1.0] * 5
    assert lease.keepalives == 4 and lease.alive
    assert lease.deadline == w.t - 1.0 + 3  # sent at the last wake-up, + TTL


def test_keepalive_loss_reasons():
    w = lease_world(lambda eff: ok(ID=9, ttl=0))
    lease = FakeLease(RouterCore(fake_client("tcp://a:1")), 3, 100.0)
    run_sync(lease.keepalive_loop(), w.perform)
    assert not lease.alive and lease.lost_reason == LOST_NOT_FOUND

    def gone(eff):
        raise LeaseNotFound()

    lease = FakeLease(RouterCore(fake_client("tcp://a:1")), 3, w.t)
    run_sync(lease.keepalive_loop(), lease_world(gone).perform)
    assert lease.lost_reason == LOST_NOT_FOUND


def test_keepalive_lost_at_the_client_deadline_when_nothing_gets_through():
    def down(eff):
        raise Unavailable("down")

    w = lease_world(down)
    lease = FakeLease(RouterCore(fake_client("tcp://a:1", "tcp://b:1"), attempt_timeout=0.25), 2, 100.0)
    run_sync(lease.keepalive_loop(), w.perform)
    assert lease.lost_reason == LOST_EXPIRED and lease.failures >= 1
    assert w.t - 100.0 < 2.0 + 0.3  # not later than the TTL (+ one last pause)


def test_keepalive_stops_when_told():
    w = lease_world(lambda eff: ok(ID=9, ttl=3), stop_after=0)
    lease = FakeLease(RouterCore(fake_client("tcp://a:1")), 3, 100.0)
    run_sync(lease.keepalive_loop(), w.perform)
    assert lease.alive and not w.of(Send)


# -- the lock -------------------------------------------------------------------------------
class FakeSession:
    def __init__(self, lease_id: int = 0xAB) -> None:
        self.client = None
        self.lease_id = lease_id
        self.is_lost = False

    def lost(self) -> bool:
        return self.is_lost


class FakeLock(LockCore):
    pass


def kv(key: bytes, create: int, value: bytes = b"", mod: int = 0) -> dict[str, Any]:
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod or create,
            "version": 1, "lease": 0}


def range_reply(*kvs: dict[str, Any], rev: int = 7) -> dict[str, Any]:
    r = ok(kvs=list(kvs), count=len(kvs))
    r["header"]["revision"] = rev
    return r


def txn_reply(succeeded: bool, rev: int, *ranges: list[dict[str, Any]]) -> dict[str, Any]:
    responses = [{"range": {"kvs": kvs, "count": len(kvs)}} for kvs in ranges]
    if succeeded:
        responses = [{"put": {}}] + responses
    r = ok(succeeded=succeeded, responses=responses)
    r["header"]["revision"] = rev
    return r


def test_acquire_a_free_lock_takes_one_txn_and_no_watch():
    lock = FakeLock(FakeSession(), "L")
    w = World(Call=lambda eff: txn_reply(True, 10, [kv(lock.key, 10)]))
    assert run_sync(lock.acquire_algo(), w.perform) is lock
    assert lock.revision == 10 and lock.header is not None and not w.of(WatchOpen)
    (call,) = w.of(Call)
    assert call.write and call.req["op"] == "txn"
    cmp = lock.holds_lock()
    assert (cmp.key, cmp.operand) == (b"L/ab", 10)


def test_a_waiter_watches_only_its_predecessor_for_its_delete():
    lock = FakeLock(FakeSession(), "L")
    reads = iter([range_reply(kv(b"L/01", 5), rev=12), range_reply(rev=13), range_reply(kv(lock.key, 12), rev=13)])

    def call(eff: Call):
        if eff.req["op"] == "txn":
            return txn_reply(True, 12, [kv(b"L/01", 5)])
        assert eff.req["op"] == "range"
        return next(reads)

    deleted = WatchResponse(ResponseHeader(revision=13), [Event("DELETE", KeyValue(b"L/01"))])
    got = iter([None, deleted])
    w = World(Call=call, WatchOpen=lambda eff: "h", WatchGet=lambda eff: next(got),
              WatchClose=lambda eff: None)
    run_sync(lock.acquire_algo(timeout=5), w.perform)
    (opened,) = w.of(WatchOpen)
    assert (opened.key, opened.start_revision, opened.filters) == (b"L/01", 13, ("NOPUT",))
    assert len(w.of(WatchClose)) == 1 and lock.revision == 12
    first_read = [c for c in w.of(Call) if c.req["op"] == "range"][0].req
    assert first_read["max_create_revision"] == 11 and first_read["limit"] == 1


def test_acquire_times_out_leaves_the_queue_and_closes_the_watch():
    lock = FakeLock(FakeSession(), "L")

    def call(eff: Call):
        op = eff.req["op"]
        if op == "txn":
            return txn_reply(True, 12, [kv(b"L/01", 5)])
        if op == "range":
            return range_reply(kv(b"L/01", 5), rev=12)
        assert op == "delete_range"
        return ok(deleted=1)

    def wget(eff: WatchGet):
        w.t += eff.timeout
        return None

    w = World(Call=call, WatchOpen=lambda eff: "h", WatchGet=wget, WatchClose=lambda eff: None)
    with pytest.raises(LockTimeout):
        run_sync(lock.acquire_algo(timeout=1.0), w.perform)
    assert [c.req["op"] for c in w.of(Call)][-1] == "delete_range" and lock.revision == 0
    assert len(w.of(WatchClose)) == 1


def test_acquire_ends_when_the_session_is_lost():
    s = FakeSession()
    lock = FakeLock(s, "L")

    def call(eff: Call):
        op = eff.req["op"]
        if op == "txn":
            return txn_reply(True, 12, [kv(b"L/01", 5)])
        if op == "range":
            return range_reply(kv(b"L/01", 5), rev=12)
        return ok(deleted=0)

    def wget(eff):
        s.is_lost = True
        return None

    w = World(Call=call, WatchOpen=lambda eff: "h", WatchGet=wget, WatchClose=lambda eff: None)
    with pytest.raises(SessionExpired):
        run_sync(lock.acquire_algo(), w.perform)
    with pytest.raises(SessionExpired):
        run_sync(lock.try_algo(), w.perform)


def test_a_watch_that_ends_while_waiting_is_an_error_not_a_hang():
    from protocol.client.lockcore import ConcurrencyError

    w = World(Call=lambda eff: range_reply(kv(b"L/01", 5)), WatchOpen=lambda eff: "h",
              WatchGet=lambda eff: WATCH_ENDED, WatchClose=lambda eff: None)
    with pytest.raises(ConcurrencyError):
        run_sync(wait_deletes(b"L/", 6), w.perform)


def test_is_acquired_and_a_forged_txn_reply():
    lock = FakeLock(FakeSession(), "L")
    assert run_sync(lock.is_acquired_algo(), World().perform) is False  # never acquired: no call
    lock.revision = 10
    assert run_sync(lock.is_acquired_algo(), World(Call=lambda e: range_reply(kv(lock.key, 10))).perform)
    assert not run_sync(lock.is_acquired_algo(), World(Call=lambda e: range_reply(kv(lock.key, 11))).perform)
    assert not run_sync(lock.is_acquired_algo(), World(Call=lambda e: range_reply()).perform)
    lock.revision = 0
    forged = World(Call=lambda eff: ok(succeeded=True, responses=[]))
    with pytest.raises(Internal):
        run_sync(lock.try_algo(), forged.perform)


# -- the election ---------------------------------------------------------------------------
class FakeElection(ElectionCore):
    pass


def test_campaign_with_an_existing_key_proclaims_the_new_value():
    e = FakeElection(FakeSession(), "E")

    def call(eff: Call):
        if eff.req["op"] == "txn" and eff.req["failure"]:
            return txn_reply(False, 20, [kv(b"E/ab", 15, b"old")])
        if eff.req["op"] == "txn":
            return txn_reply(True, 21)
        return range_reply(rev=21)  # nobody before us

    w = World(Call=call)
    run_sync(e.campaign_algo("new"), w.perform)
    assert e.key == b"E/ab" and e.revision == 15
    assert [c.req["op"] for c in w.of(Call)] == ["txn", "txn", "range"]
    assert e.is_leader().operand == 15


class FakeObserver(ObserverCore):
    def __init__(self) -> None:
        self._init_observer(None, b"E/")
        self.stop = False

    def cancelled(self) -> bool:
        return self.stop


def test_observer_emits_each_leader_change_once():
    o = FakeObserver()
    a, b = kv(b"E/a", 5, b"x"), kv(b"E/b", 6, b"y")
    events = iter([
        WatchResponse(ResponseHeader(revision=8), [Event("PUT", KeyValue.from_wire(b))]),   # not the leader
        WatchResponse(ResponseHeader(revision=9), [Event("DELETE", KeyValue(b"E/a"))]),
    ])
    w = World(Call=lambda eff: range_reply(a, rev=7), WatchOpen=lambda eff: "h",
              WatchGet=lambda eff: next(events, None), WatchClose=lambda eff: None)
    run_sync(o.start_algo(), w.perform)
    assert w.of(WatchOpen)[0].start_revision == 8
    assert run_sync(o.next_algo(), w.perform).key == b"E/a"
    assert run_sync(o.next_algo(), w.perform).key == b"E/b"
    assert run_sync(o.next_algo(timeout=0.0), w.perform) is None
    o.stop = True
    assert run_sync(o.next_algo(), w.perform) is WATCH_ENDED and len(w.of(WatchClose)) == 1


def test_a_cancelled_async_wait_still_leaves_the_queue():
    """asyncio: the task waiting for the lock is cancelled; the algorithm gets the
    CancelledError at its yield, closes its watch and deletes its key, then re-raises."""
    import asyncio

    from protocol.client.effects import run_async

    lock = FakeLock(FakeSession(), "L")
    seen: list[Any] = []

    async def perform(eff: Any) -> Any:
        seen.append(eff)
        if isinstance(eff, Now):
            return 0.0
        if isinstance(eff, Call):
            op = eff.req["op"]
            if op == "txn":
                return txn_reply(True, 12, [kv(b"L/01", 5)])
            if op == "range":
                return range_reply(kv(b"L/01", 5), rev=12)
            return ok(deleted=1)
        if isinstance(eff, WatchOpen):
            return "h"
        if isinstance(eff, WatchGet):
            await asyncio.sleep(3600)
        return None

    async def main() -> None:
        task = asyncio.create_task(run_async(lock.acquire_algo(), perform))
        while not any(isinstance(e, WatchGet) for e in seen):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    tail = [type(e).__name__ for e in seen[-2:]]
    assert tail == ["WatchClose", "Call"] and seen[-1].req["op"] == "delete_range"
    assert lock.revision == 0
