"""Leases, locks and elections against the fake gateway: the helpers new in issue 16
(``Lease.refresh()``, ``Lock.is_acquired()``, ``timeout=``) on the threaded classes, and
the asyncio classes (aio_lease.py, aio_concurrency.py): their shapes (``async with``,
``await``, async iteration), the keep-alive task, and waits on the asyncio watch. The
behaviours both share are tested once, on the algorithms (test_lease_core.py), and by the
client tests parametrized over both clients."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, Awaitable, Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import FakeServer, FakeStore  # noqa: E402
from protocol.client.aio_concurrency import AsyncElection, AsyncLock, AsyncSession  # noqa: E402
from protocol.client.aio_lease import AsyncLease  # noqa: E402
from protocol.client.lockcore import ElectionNoLeader, Locked, LockTimeout  # noqa: E402
from protocol.client.aio import AsyncClient  # noqa: E402
from protocol.errors import LeaseNotFound  # noqa: E402


async def until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait for ``cond()`` to be true (a deadline, no bare sleeps in assertions)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def run(srv: Any, body: Callable[[Any], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with AsyncClient([srv.endpoint], timeout=kw.pop("timeout", 3.0), **kw) as c:
            await body(c)

    asyncio.run(main())


def test_threaded_refresh_is_acquired_and_timeouts(client, srv):
    with client.lease(5) as lease:
        before = srv.ops_received("lease_keepalive")
        resp = lease.refresh(timeout=2)
        assert (resp.id, resp.ttl) == (lease.id, 5) and srv.ops_received("lease_keepalive") == before + 1
        assert lease.time_to_live(timeout=2).granted_ttl == 5
    with client.lock("h", ttl=5) as lock:
        assert lock.is_acquired(timeout=2)
        client.delete(lock.key)  # another party deleted it
        assert not lock.is_acquired()  # the key went: we no longer hold it
    with client.session(5) as s:
        lock = client.lock("t", session=s)
        assert not lock.is_acquired()  # never acquired: no call needed
        lock.try_acquire(timeout=2)
        lock.release(timeout=2)


def test_lease_async_with_keeps_alive_then_revokes(srv):
    async def body(c: Any) -> None:
        lease = c.lease(2)
        assert isinstance(lease, AsyncLease) and lease.id == 0  # nothing sent yet
        async with lease:
            await c.put("svc/me", "addr", lease=lease.id)
            await until(lambda: lease.keepalives >= 2, 5, "two keep-alives")
            assert lease.alive and (await c.get("svc/me")).count == 1
            resp = await lease.refresh()
            assert resp.id == lease.id and resp.ttl == 2
            assert (await lease.time_to_live(keys=True)).keys == [b"svc/me"]
        assert not lease.alive and lease.lost_reason == "revoked"
        assert (await c.get("svc/me")).count == 0

    run(srv, body)


def test_awaited_lease_lost_when_revoked_elsewhere(srv):
    async def body(c: Any) -> None:
        lost: list[Any] = []
        lease = await c.lease(2, on_lost=lost.append)
        assert lease.id > 0 and lease.granted_ttl == 2
        await c.lease_revoke(lease.id)
        await asyncio.wait_for(lease.done.wait(), 4)
        assert "not found" in lease.lost_reason and lost == [lease]
        await lease.close()  # already lost: nothing to revoke, no error
        with pytest.raises(LeaseNotFound):
            await c.lease_keepalive_once(lease.id)

    run(srv, body)


def test_async_keepalive_follows_the_not_leader_hint():
    store = FakeStore()
    with FakeServer(store=store) as leader, FakeServer(store=store) as follower:
        follower.leader_urls = [leader.endpoint]

        async def main() -> None:
            async with AsyncClient([follower.endpoint], timeout=3) as c:
                lid = (await c.lease_grant(10)).id
                assert await c.lease_keepalive_once(lid) == (lid, 10)
                assert leader.ops_received("lease_keepalive") == 1
                await c.lease_keepalive_once(lid)  # the router remembers the leader
                assert follower.ops_received("lease_keepalive") == 1

        asyncio.run(main())


def test_lock_async_with_fencing_and_try_acquire(srv):
    async def body(c: Any) -> None:
        async with c.lock("x", ttl=5) as lock:
            assert isinstance(lock, AsyncLock)
            assert await lock.is_acquired()
            assert (await c.txn([lock.holds_lock()], [], [])).succeeded
            async with c.session(5) as s:
                other = AsyncLock(s, "x")
                with pytest.raises(Locked):
                    await other.try_acquire()
                assert (await c.get("x/", prefix=True)).count == 1  # the loser left no key
        assert not await lock.is_acquired() and lock.revision == 0
        assert srv.store.leases == {}  # the lock's own session was revoked

    run(srv, body)


def test_lock_waiters_in_tasks_fifo_and_timeout(srv):
    async def body(c: Any) -> None:
        sessions = [await c.session(10) for _ in range(3)]
        locks = [AsyncLock(s, "q") for s in sessions]
        order: list[int] = []
        try:
            await locks[0].acquire()
            with pytest.raises(LockTimeout):
                await locks[1].acquire(timeout=0.3)

            async def waiter(i: int) -> None:
                await locks[i].acquire()
                order.append(i)
                await locks[i].release()

            tasks = []
            for i in (1, 2):
                tasks.append(asyncio.create_task(waiter(i)))
                await until(lambda: srv.store.kv and sum(k.startswith(b"q/") for k in srv.store.kv) == i + 1,
                            5, f"waiter {i} in the queue")
            assert order == []
            await locks[0].release()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert order == [1, 2]
        finally:
            for s in sessions:
                await s.close()

    run(srv, body)


def test_election_campaign_observe_resign(srv):
    async def body(c: Any) -> None:
        async with c.session(10) as s1, c.session(10) as s2:
            e1, e2 = AsyncElection(s1, "el"), AsyncElection(s2, "el")
            with pytest.raises(ElectionNoLeader):
                await e1.leader()
            seen: list[bytes] = []

            async def observe() -> None:
                async with e1.observe() as obs:
                    async for kv in obs:
                        seen.append(kv.value)
                        if len(seen) == 3:
                            return

            watcher = asyncio.create_task(observe())
            await e1.campaign("a")
            second = asyncio.create_task(e2.campaign("b"))
            await until(lambda: seen[:1] == [b"a"], 5, "the observer to see a")
            await e1.proclaim("a2")
            assert (await e1.leader()).value == b"a2" and not second.done()
            await e1.resign()
            await asyncio.wait_for(second, 5)
            await asyncio.wait_for(watcher, 5)
            assert seen == [b"a", b"a2", b"b"]

    run(srv, body)


def test_unawaited_session_is_granted_by_the_first_lock_call(srv):
    async def body(c: Any) -> None:
        s = AsyncSession(c, 5)
        assert s.lease_id == 0
        lock = AsyncLock(s, "lazy")
        await lock.try_acquire()
        assert s.lease_id > 0 and lock.key == f"lazy/{s.lease_id:x}".encode()
        await lock.release()
        await s.close()
        assert srv.store.leases == {}

    run(srv, body)
