"""Leases for the asyncio client (protocol/client/aio.py): ``AsyncLeaderRouter`` and
``AsyncLease``, whose keep-alive is an asyncio task.

    async with client.lease(10) as lease:     # granted here, revoked on exit
        await client.put("service/me", "addr", lease=lease.id)

    lease = await client.lease(10)            # or granted by awaiting it
    ...
    await lease.close()                       # revokes

The algorithms (leader routing, keep-alive timing, when a lease counts as lost) are the
threaded client's, in protocol/client/leasecore.py, run here by an awaiting driver
(protocol/client/effects.py). Like ``AsyncClient``, these objects belong to the event
loop the client runs on; they are not thread-safe.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Generator

from protocol.client.effects import Algo, Call, Idle, Now, Send, Sleep, run_async
from protocol.client.leasecore import (
    LOST_CLOSED, LOST_REVOKED, LeaseCore, RouterCore, attempt_timeout_for,
)
from protocol.client.types import LeaseGrantResponse, LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from protocol.errors import LeaseNotFound, QkvError

__all__ = ["AsyncLeaderRouter", "AsyncLease", "perform_basic"]


async def perform_basic(client: Any, effect: Any) -> Any:
    """The effects every asyncio algorithm uses: Now, Sleep, Call."""
    if isinstance(effect, Now):
        return time.monotonic()
    if isinstance(effect, Sleep):
        await asyncio.sleep(max(0.0, effect.seconds))
        return None
    if isinstance(effect, Call):
        return await client._call(effect.req, write=effect.write, timeout=effect.timeout)
    raise TypeError(f"unknown effect {effect!r}")


class AsyncLeaderRouter(RouterCore):
    """Sends leader-only lease ops to the leader (leasecore.RouterCore), for an
    ``AsyncClient``; one derived client per member it talks to."""

    def __init__(self, client: Any, attempt_timeout: float | None = None) -> None:
        super().__init__(client, attempt_timeout)
        self._clients: dict[str, Any] = {}

    def _client_for(self, url: str) -> Any:
        c = self._clients.get(url)
        if c is None:  # same keys, user and token as the client (auth.py)
            c = self._clients[url] = self.client._derive([url], timeout=self.attempt_timeout)
        return c

    async def perform(self, effect: Any) -> Any:
        """Run one effect of the routing algorithm."""
        if isinstance(effect, Send):
            return await self._client_for(effect.url)._call(effect.req, write=False,
                                                            timeout=effect.timeout)
        return await perform_basic(self.client, effect)

    async def run(self, algo: Algo[Any]) -> Any:
        """Run a routing algorithm (``route``, ``keepalive_algo``...)."""
        return await run_async(algo, self.perform)

    async def call(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` to the leader; the reply map. Non-retryable errors raise at once;
        otherwise the last error (or ``Timeout``) once ``timeout`` passes."""
        return await self.run(self.route(req, timeout))  # type: ignore[no-any-return]

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> LeaseKeepAliveResponse:
        """Refresh ``lease_id`` once at the leader (TTL <= 0 in the answer: not found)."""
        return await self.run(self.keepalive_algo(lease_id, timeout))  # type: ignore[no-any-return]

    async def time_to_live(self, lease_id: int, keys: bool = False,
                           timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """``lease_timetolive`` at the leader."""
        return await self.run(self.time_to_live_algo(lease_id, keys, timeout))  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the per-member clients."""
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()


class AsyncLease(LeaseCore):
    """A lease kept alive by an asyncio task until ``await close()`` (which revokes it)
    or until it is lost (``done`` is set, ``lost_reason`` says why). Granted on
    ``await lease`` or ``async with lease``."""

    def __init__(self, client: Any, ttl: int, id: int = 0, *, keepalive: bool = True,
                 on_lost: Callable[["AsyncLease"], Any] | None = None,
                 timeout: float | None = None) -> None:
        """Nothing is sent yet: the grant happens when the lease is awaited/entered."""
        self._init_state(client, on_lost)
        self.done = asyncio.Event()
        self._stop = asyncio.Event()
        self._want = (int(ttl), int(id), timeout)
        self._keepalive = keepalive
        self._grant_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._leader: AsyncLeaderRouter | None = None

    # -- granting -----------------------------------------------------------------------
    async def start(self) -> "AsyncLease":
        """Grant the lease and start its keep-alive task (once; later calls return it)."""
        if self._leader is not None:
            return self
        if self._grant_lock is None:
            self._grant_lock = asyncio.Lock()
        async with self._grant_lock:
            if self._leader is not None:
                return self
            ttl, id, timeout = self._want
            sent = time.monotonic()
            resp: LeaseGrantResponse = await self.client.lease_grant(ttl, id, timeout=timeout)
            self._granted(resp, sent)
            self._router = self._leader = AsyncLeaderRouter(
                self.client, attempt_timeout=attempt_timeout_for(self.client.timeout, self.granted_ttl))
            if self._keepalive:
                self._task = asyncio.get_running_loop().create_task(
                    run_async(self.keepalive_loop(), self._perform), name=f"qkv-lease-{self.id:x}")
        return self

    def __await__(self) -> Generator[Any, None, "AsyncLease"]:
        return self.start().__await__()

    async def __aenter__(self) -> "AsyncLease":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _set_done(self) -> None:
        self.done.set()

    def _is_done(self) -> bool:
        return self.done.is_set()

    def _router_or_fail(self) -> AsyncLeaderRouter:
        if self._leader is None:
            raise RuntimeError("the lease is not granted yet: await it (or use async with) first")
        return self._leader

    async def _perform(self, effect: Any) -> Any:
        if isinstance(effect, Idle):
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, effect.seconds))
            except asyncio.TimeoutError:
                return False
            return True
        return await self._router_or_fail().perform(effect)

    # -- calls ------------------------------------------------------------------------
    async def keepalive_once(self, timeout: float | None = None) -> LeaseKeepAliveResponse:
        """Refresh the lease now, at the leader (the keep-alive task goes on)."""
        self._router_or_fail()
        return await run_async(self.keepalive_once_algo(timeout), self._perform)

    refresh = keepalive_once

    async def time_to_live(self, keys: bool = False, timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """The lease's remaining TTL (-1 once gone), its granted TTL and, if asked, keys."""
        return await self._router_or_fail().time_to_live(self.id, keys, timeout)

    async def stop_keepalive(self) -> None:
        """Stop keeping the lease alive without revoking it (etcd's ``Orphan``): it
        expires TTL seconds after the last keep-alive."""
        self._stop.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            try:
                await task
            except Exception:
                pass

    orphan = stop_keepalive

    async def revoke(self, timeout: float | None = None) -> None:
        """Stop the keep-alives and revoke the lease: its keys are deleted. A lease the
        server no longer knows is fine."""
        await self.stop_keepalive()
        try:
            await self.client.lease_revoke(self.id, timeout=timeout)
        except LeaseNotFound:
            pass
        finally:
            self._lose(LOST_REVOKED)

    async def close(self, timeout: float | None = None) -> None:
        """Stop the keep-alives and revoke the lease (its keys are deleted). A lease the
        server no longer knows is fine; an unreachable cluster lets it expire. A lease
        never granted is only marked closed."""
        if self._leader is None:
            self._stop.set()
            self._lose("closed before it was granted")
            return
        try:
            if not (self._stop.is_set() and self.done.is_set()):
                try:
                    await self.revoke(timeout)
                except QkvError:
                    self._lose(LOST_CLOSED)
        finally:
            await self._leader.close()
