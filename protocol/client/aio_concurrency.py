"""Sessions, locks and elections for the asyncio client (protocol/client/aio.py).

    async with client.lock("jobs/lock") as lock:           # waits its turn (FIFO)
        await client.txn([lock.holds_lock()], [Op.put("k", "v")], [])   # fenced write

    async with client.session(10) as s:
        e = AsyncElection(s, "leader")
        await e.campaign("me")
        async for kv in e.observe(): ...

The algorithms (etcd's mutex.go / election.go) are the threaded client's, in
protocol/client/lockcore.py, run here by an awaiting driver (protocol/client/effects.py);
read protocol/client/concurrency.py for why every protected write must be fenced with
``holds_lock()``. These objects belong to the client's event loop (not thread-safe).
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Generator

from protocol.client.aio_lease import AsyncLease, perform_basic
from protocol.client.effects import WATCH_ENDED, Algo, WatchClose, WatchGet, WatchOpen, run_async
from protocol.client.lockcore import (
    DEFAULT_SESSION_TTL, ElectionCore, LockCore, ObserverCore, SessionCore,
)
from protocol.client.types import KeyValue
from protocol.errors import QkvError

__all__ = ["AsyncSession", "AsyncLock", "AsyncElection", "AsyncObserver"]


async def perform(client: Any, effect: Any) -> Any:
    """Run one effect of a lock/election algorithm, awaiting."""
    if isinstance(effect, WatchGet):
        try:
            return await effect.handle.get(effect.timeout)
        except (StopAsyncIteration, StopIteration):
            return WATCH_ENDED
    if isinstance(effect, WatchOpen):
        w = client.watch(effect.key, effect.range_end or None, start_revision=effect.start_revision,
                         filters=effect.filters)
        await w  # attached: events from start_revision on
        return w
    if isinstance(effect, WatchClose):
        aclose = getattr(effect.handle, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            effect.handle.cancel()
        return None
    return await perform_basic(client, effect)


async def _run(client: Any, algo: Algo[Any]) -> Any:
    return await run_async(algo, lambda effect: perform(client, effect))


class AsyncSession(SessionCore):
    """A lease kept alive (by a task) for as long as the session is open (etcd's
    ``Session``); granted on ``await session`` / ``async with session``."""

    def __init__(self, client: Any, ttl: int = DEFAULT_SESSION_TTL, lease_id: int = 0, *,
                 timeout: float | None = None) -> None:
        """Nothing is sent yet: the lease is granted when the session is awaited/entered."""
        self.client = client
        self.lease = AsyncLease(client, ttl, lease_id, timeout=timeout)

    async def start(self) -> "AsyncSession":
        """Grant the lease and start keeping it alive (once)."""
        await self.lease.start()
        return self

    def __await__(self) -> Generator[Any, None, "AsyncSession"]:
        return self.start().__await__()

    @property
    def lease_id(self) -> int:  # type: ignore[override]
        """The session's lease id (0 before it is granted)."""
        return self.lease.id

    @property
    def ttl(self) -> int:  # type: ignore[override]
        """The lease's granted TTL."""
        return self.lease.granted_ttl

    @property
    def done(self) -> asyncio.Event:
        """Set once the lease is lost (or the session closed)."""
        return self.lease.done

    @property
    def alive(self) -> bool:
        """False once the lease is lost (or the session closed)."""
        return self.lease.alive

    async def close(self, timeout: float | None = None) -> None:
        """Revoke the lease: every lock and candidacy of this session goes with it."""
        await self.lease.close(timeout)

    async def orphan(self) -> None:
        """Stop the keep-alives without revoking: the lease expires after its TTL."""
        await self.lease.stop_keepalive()

    async def __aenter__(self) -> "AsyncSession":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncLock(LockCore):
    """A fair distributed mutex on ``name`` (as ``concurrency.Lock``), for asyncio:
    ``async with``, or ``await acquire()`` / ``await release()``. **Fence every
    protected write** with ``holds_lock()``."""

    _session_class = AsyncSession

    def __init__(self, session: AsyncSession, name: Any) -> None:
        """A lock on ``name`` held through ``session``'s lease (nothing is sent)."""
        super().__init__(session, name)

    async def _run(self, algo: Algo[Any]) -> Any:
        await self.session.start()
        return await _run(self.client, algo)

    async def acquire(self, timeout: float | None = None) -> "AsyncLock":
        """Wait for the lock (FIFO among waiters); ``timeout`` None = forever. Raises
        ``LockTimeout`` (and leaves the queue) or ``SessionExpired``."""
        return await self._run(self.acquire_algo(timeout))  # type: ignore[no-any-return]

    lock = acquire

    async def try_acquire(self, timeout: float | None = None) -> "AsyncLock":
        """Take the lock if it is free, else raise ``Locked`` at once (etcd's TryLock)."""
        return await self._run(self.try_acquire_algo(timeout))  # type: ignore[no-any-return]

    async def release(self, timeout: float | None = None) -> None:
        """Delete our key: the next waiter gets the lock."""
        await self._run(self.release_algo(timeout))

    unlock = release

    async def is_acquired(self, timeout: float | None = None) -> bool:
        """Whether we still hold the lock: our key exists with our create revision (a
        linearizable read; a check, not a fence: use ``holds_lock()`` in writes)."""
        return await self._run(self.is_acquired_algo(timeout))  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the lock's own session (``for_client`` without a session)."""
        if self._owned_session:
            await self.session.close()

    async def __aenter__(self) -> "AsyncLock":
        try:
            return await self.acquire()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.revision:
                try:
                    await self.release()
                except QkvError:
                    pass  # the lease revoke below (or its expiry) deletes the key
        finally:
            await self.close()


class AsyncElection(ElectionCore):
    """A leader election on the prefix ``name`` (as ``concurrency.Election``), for asyncio."""

    _session_class = AsyncSession

    def __init__(self, session: AsyncSession, name: Any) -> None:
        """An election on the prefix ``name`` held through ``session``'s lease (nothing is sent)."""
        super().__init__(session, name)

    async def _run(self, algo: Algo[Any]) -> Any:
        await self.session.start()
        return await _run(self.client, algo)

    async def campaign(self, value: Any, timeout: float | None = None) -> "AsyncElection":
        """Put our candidacy and wait until we lead (FIFO by create revision). Raises
        ``LockTimeout`` (and withdraws) or ``SessionExpired``."""
        return await self._run(self.campaign_algo(value, timeout))  # type: ignore[no-any-return]

    async def proclaim(self, value: Any, timeout: float | None = None) -> None:
        """Change the leader's value without a new election; only the leader may."""
        await self._run(self.proclaim_algo(value, timeout))

    async def resign(self, timeout: float | None = None) -> None:
        """Give up leadership (or the candidacy): the next candidate takes over."""
        await self._run(self.resign_algo(timeout))

    async def leader(self, timeout: float | None = None) -> KeyValue:
        """The current leader's key-value; raises ``ElectionNoLeader``."""
        return await _run(self.client, self.leader_algo(timeout))  # type: ignore[no-any-return]

    def observe(self) -> "AsyncObserver":
        """An async iterator of ``KeyValue``s, one per leader change, in revision order
        (it starts on the first ``async for`` step); ``cancel()`` ends it."""
        return AsyncObserver(self.client, self.prefix)

    async def close(self) -> None:
        """Close the election's own session (``for_client`` without a session)."""
        if self._owned_session:
            await self.session.close()

    async def __aenter__(self) -> "AsyncElection":
        await self.session.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.key:
                try:
                    await self.resign()
                except QkvError:
                    pass
        finally:
            await self.close()


class AsyncObserver(ObserverCore):
    """Follows an election prefix (lockcore.ObserverCore): ``async for kv in obs``."""

    def __init__(self, client: Any, prefix: bytes) -> None:
        self._init_observer(client, prefix)
        self._cancel = False
        self._started = False

    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancel

    async def start(self) -> "AsyncObserver":
        """Read the prefix and start watching it (once)."""
        if not self._started:
            self._started = True
            await _run(self.client, self.start_algo())
        return self

    async def get(self, timeout: float | None = None) -> KeyValue | None:
        """The next leader; None when ``timeout`` passes first; StopAsyncIteration once
        canceled."""
        await self.start()
        kv = await _run(self.client, self.next_algo(timeout))
        if kv is WATCH_ENDED:
            raise StopAsyncIteration
        return kv  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[KeyValue]:
        return self

    async def __anext__(self) -> KeyValue:
        kv = await self.get()
        assert kv is not None
        return kv

    def cancel(self) -> None:
        """End the iteration (the iterating task stops within 0.2 s)."""
        self._cancel = True

    async def aclose(self) -> None:
        """Cancel and close the watch now."""
        self._cancel = True
        if self._watcher is not None:
            w, self._watcher = self._watcher, None
            await perform(self.client, WatchClose(w))

    async def __aenter__(self) -> "AsyncObserver":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
