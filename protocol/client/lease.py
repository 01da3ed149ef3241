"""Leases on the client side (protocol/SPEC.md section 3, "Leases"), threaded.

- ``LeaderRouter``: sends the leader-only lease ops (``lease_keepalive``,
  ``lease_timetolive``) to the leader, following ``not_leader`` hints; thread-safe.
- ``Lease``: a granted lease kept alive by a background thread, one keep-alive every
  TTL/3 seconds, which survives failover to another endpoint. ``done`` is set once the
  lease is lost (``lost_reason`` says why). Used as a context manager, the lease is
  revoked on exit.

The algorithms (routing, keep-alive timing, when a lease counts as lost) live in
protocol/client/leasecore.py, shared with the asyncio classes of aio_lease.py; this
module runs them with blocking effects (protocol/client/effects.py).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from protocol.client.effects import Algo, Call, Idle, Now, Send, Sleep, run_sync
from protocol.client.leasecore import (
    ATTEMPT_TIMEOUT_S, LOST_CLOSED, LOST_REVOKED, RETRY_PAUSE_S, LeaseCore, RouterCore,
    attempt_timeout_for,
)
from protocol.client.types import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from protocol.errors import LeaseNotFound, QkvError

if TYPE_CHECKING:
    from protocol.client.client import Client

__all__ = ["LeaderRouter", "Lease", "ATTEMPT_TIMEOUT_S", "RETRY_PAUSE_S"]


def perform_basic(client: Any, effect: Any) -> Any:
    """The blocking effects every threaded algorithm uses: Now, Sleep, Call."""
    if isinstance(effect, Now):
        return time.monotonic()
    if isinstance(effect, Sleep):
        if effect.seconds > 0:
            time.sleep(effect.seconds)
        return None
    if isinstance(effect, Call):
        return client._call(effect.req, write=effect.write, timeout=effect.timeout)
    raise TypeError(f"unknown effect {effect!r}")


class LeaderRouter(RouterCore):
    """Sends leader-only lease ops to the leader (leasecore.RouterCore); thread-safe.
    One client per member it talks to, derived from the client (same keys, user, token)."""

    def __init__(self, client: "Client", attempt_timeout: float | None = None) -> None:
        super().__init__(client, attempt_timeout)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _client_for(self, url: str) -> Any:
        with self._lock:
            c = self._clients.get(url)
            if c is None:  # same keys, user and token as the client (auth.py)
                c = self._clients[url] = self.client._derive([url], timeout=self.attempt_timeout)
            return c

    def perform(self, effect: Any) -> Any:
        """Run one effect of the routing algorithm (blocking)."""
        if isinstance(effect, Send):
            return self._client_for(effect.url)._call(effect.req, write=False, timeout=effect.timeout)
        return perform_basic(self.client, effect)

    def run(self, algo: Algo[Any]) -> Any:
        """Run a routing algorithm (``route``, ``keepalive``...) in this thread."""
        return run_sync(algo, self.perform)

    def call(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` to the leader; the reply map. Non-retryable errors raise at once;
        otherwise the last error (or ``Timeout``) once ``timeout`` passes."""
        return self.run(self.route(req, timeout))  # type: ignore[no-any-return]

    def keepalive(self, lease_id: int, timeout: float | None = None) -> LeaseKeepAliveResponse:
        """Refresh ``lease_id`` once at the leader (TTL <= 0 in the answer: not found)."""
        return self.run(self.keepalive_algo(lease_id, timeout))  # type: ignore[no-any-return]

    def time_to_live(self, lease_id: int, keys: bool = False,
                     timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """``lease_timetolive`` at the leader."""
        return self.run(self.time_to_live_algo(lease_id, keys, timeout))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the per-member clients."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


class Lease(LeaseCore):
    """A granted lease, kept alive in the background until ``close()`` (which revokes
    it) or until it is lost (``done`` is set, ``lost_reason`` says why).

        with client.lease(10) as lease:
            client.put("service/me", "addr", lease=lease.id)
            ...                      # the key lives while this block runs
    """

    def __init__(self, client: "Client", ttl: int, id: int = 0, *, keepalive: bool = True,
                 on_lost: Callable[["Lease"], Any] | None = None,
                 timeout: float | None = None) -> None:
        """Grant the lease (``timeout``: of the grant) and start keeping it alive."""
        self._init_state(client, on_lost)
        self.done = threading.Event()
        self._stop = threading.Event()
        sent = time.monotonic()
        self._granted(client.lease_grant(ttl, id, timeout=timeout), sent)
        self._router = self._leader = LeaderRouter(
            client, attempt_timeout=attempt_timeout_for(client.timeout, self.granted_ttl))
        self._thread: threading.Thread | None = None
        if keepalive:
            self._thread = threading.Thread(target=self._run, name=f"qkv-lease-{self.id:x}",
                                            daemon=True)
            self._thread.start()

    def _set_done(self) -> None:
        self.done.set()

    def _is_done(self) -> bool:
        return self.done.is_set()

    def _perform(self, effect: Any) -> Any:
        if isinstance(effect, Idle):
            return self._stop.wait(effect.seconds)
        return self._leader.perform(effect)

    def _run(self) -> None:
        run_sync(self.keepalive_loop(), self._perform)

    # -- calls ------------------------------------------------------------------------
    def keepalive_once(self, timeout: float | None = None) -> LeaseKeepAliveResponse:
        """Refresh the lease now, at the leader (the background keep-alives go on)."""
        return run_sync(self.keepalive_once_algo(timeout), self._perform)

    refresh = keepalive_once

    def time_to_live(self, keys: bool = False, timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """The lease's remaining TTL (-1 once gone), its granted TTL and, if asked, keys."""
        return self._leader.time_to_live(self.id, keys, timeout)

    def stop_keepalive(self) -> None:
        """Stop keeping the lease alive without revoking it (etcd's ``Orphan``): it
        expires TTL seconds after the last keep-alive."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(self.client.timeout + 1)

    orphan = stop_keepalive

    def revoke(self, timeout: float | None = None) -> None:
        """Stop the keep-alives and revoke the lease: its keys are deleted. A lease the
        server no longer knows is fine."""
        self.stop_keepalive()
        try:
            self.client.lease_revoke(self.id, timeout=timeout)
        except LeaseNotFound:
            pass
        finally:
            self._lose(LOST_REVOKED)

    def close(self, timeout: float | None = None) -> None:
        """Stop the keep-alives and revoke the lease (its keys are deleted). A lease the
        server no longer knows is fine; an unreachable cluster lets it expire."""
        try:
            if not (self._stop.is_set() and self.done.is_set()):
                try:
                    self.revoke(timeout)
                except QkvError:
                    self._lose(LOST_CLOSED)
        finally:
            self._leader.close()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
