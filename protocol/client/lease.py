"""Leases on the client side (protocol/SPEC.md section 3, "Leases").

- ``LeaderRouter``: ``lease_keepalive`` and ``lease_timetolive`` are served by the leader
  only. A member that is not the leader answers ``not_leader`` with the leader's client
  URLs in its details: the router goes there; without a hint (or when the hinted member
  does not answer) it tries the client's other endpoints in turn, until the deadline. It
  remembers the leader it found, so the next keep-alive goes straight there. Both ops are
  idempotent (a keep-alive sent twice only refreshes the TTL twice), so a timeout is
  retried elsewhere, unlike a write.
- ``Lease``: a granted lease kept alive by a background thread, one keep-alive every
  TTL/3 seconds (etcd's clientv3 does the same), which survives failover to another
  endpoint. ``done`` is set once the lease is lost: revoked, expired (the server said
  ``lease_not_found`` / TTL <= 0), or no keep-alive got through before the lease's
  deadline as the client computes it (time of the last successful keep-alive *sent* +
  its TTL: never later than the server's own deadline). Used as a context manager, the
  lease is revoked on exit.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from protocol.client.types import (
    LEASE_ID_FIELD, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseTimeToLiveResponse,
)
from protocol.errors import LeaseNotFound, NotLeader, QkvError, Timeout, Unavailable

if TYPE_CHECKING:
    from protocol.client.client import Client

ATTEMPT_TIMEOUT_S = 2.0   # one keep-alive attempt at one endpoint
RETRY_PAUSE_S = 0.1        # between rounds over every endpoint (an election in progress)


def _reachable(url: str, asked: str) -> str:
    from protocol.client.watch import _reachable as reach

    return reach(url, asked)


class LeaderRouter:
    """Sends leader-only lease ops to the leader; thread-safe."""

    def __init__(self, client: "Client", attempt_timeout: float | None = None) -> None:
        self.client = client
        self.attempt_timeout = float(attempt_timeout or min(client.timeout, ATTEMPT_TIMEOUT_S))
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self.leader_url: str | None = None
        self.redirects = 0  # not_leader answers followed (for tests)

    def _client_for(self, url: str) -> Any:
        with self._lock:
            c = self._clients.get(url)
            if c is None:  # same keys, user and token as the client (auth.py)
                c = self._clients[url] = self.client._derive([url], timeout=self.attempt_timeout)
            return c

    def _candidates(self) -> list[str]:
        eps = self.client.endpoints
        start = self.client._preferred % len(eps)
        order = eps[start:] + eps[:start]
        lead = self.leader_url
        if lead is not None:
            order = [lead] + [e for e in order if e != lead]
        return order

    def call(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` to the leader; the reply map. Non-retryable errors raise at once;
        otherwise the last error (or ``Timeout``) once ``timeout`` passes."""
        from protocol.client.client import normalize_endpoint

        deadline = time.monotonic() + (self.client.timeout if timeout is None else timeout)
        last: QkvError | None = None
        while True:
            queue = self._candidates()
            tried: set[str] = set()
            while queue:
                url = queue.pop(0)
                if url in tried:
                    continue
                tried.add(url)
                if time.monotonic() >= deadline:
                    break
                try:
                    reply = self._client_for(url)._call(dict(req), write=False)
                except NotLeader as exc:
                    last = exc
                    hints = [normalize_endpoint(_reachable(str(u), url))
                             for u in exc.details.get("leader_client_urls") or ()]
                    hints = [h for h in hints if h not in tried]
                    if self.leader_url == url:
                        self.leader_url = None
                    if hints:
                        self.redirects += 1
                        queue = hints[:1] + [u for u in queue if u != hints[0]]
                    continue
                except QkvError as exc:
                    if not (exc.retryable or isinstance(exc, Timeout)):
                        raise
                    last = exc
                    if self.leader_url == url:
                        self.leader_url = None
                    continue
                self.leader_url = url
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(RETRY_PAUSE_S, remaining))
        if last is not None:
            raise last
        raise Timeout(f"no leader answered within the timeout (endpoints: {', '.join(self.client.endpoints)})")

    def keepalive(self, lease_id: int, timeout: float | None = None) -> LeaseKeepAliveResponse:
        return LeaseKeepAliveResponse.from_wire(
            self.call({"op": "lease_keepalive", LEASE_ID_FIELD: int(lease_id)}, timeout))

    def time_to_live(self, lease_id: int, keys: bool = False,
                     timeout: float | None = None) -> LeaseTimeToLiveResponse:
        req: dict[str, Any] = {"op": "lease_timetolive", LEASE_ID_FIELD: int(lease_id)}
        if keys:
            req["keys"] = True
        return LeaseTimeToLiveResponse.from_wire(self.call(req, timeout))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


class Lease:
    """A granted lease, kept alive in the background until ``close()`` (which revokes
    it) or until it is lost (``done`` is set, ``lost_reason`` says why).

        with client.lease(10) as lease:
            client.put("service/me", "addr", lease=lease.id)
            ...                      # the key lives while this block runs
    """

    def __init__(self, client: "Client", ttl: int, id: int = 0, *, keepalive: bool = True,
                 on_lost: Callable[["Lease"], Any] | None = None) -> None:
        self.client = client
        sent = time.monotonic()
        resp: LeaseGrantResponse = client.lease_grant(ttl, id)
        self.id = resp.id
        self.granted_ttl = resp.ttl
        self.ttl = resp.ttl
        self.header = resp.header
        self.deadline = sent + resp.ttl  # the client's view: never later than the server's
        self.done = threading.Event()
        self.lost_reason = ""
        self.keepalives = 0      # successful keep-alives (for tests and logs)
        self.failures = 0        # failed attempts
        self._on_lost = on_lost
        self._stop = threading.Event()
        # One attempt at one member lasts at most TTL/4 (and 2 s): a dead leader leaves
        # time for the other members before the lease's deadline.
        self._router = LeaderRouter(client, attempt_timeout=min(client.timeout, ATTEMPT_TIMEOUT_S,
                                                                 max(0.25, resp.ttl / 4.0)))
        self._thread: threading.Thread | None = None
        if keepalive:
            self._thread = threading.Thread(target=self._run, name=f"qkv-lease-{self.id:x}",
                                            daemon=True)
            self._thread.start()

    # -- the keep-alive loop ---------------------------------------------------------
    def _interval(self) -> float:
        return max(self.ttl / 3.0, 0.05)

    def _run(self) -> None:
        wait = self._interval()
        while not self._stop.wait(wait):
            now = time.monotonic()
            if now >= self.deadline:
                self._lose("the lease expired: no keep-alive got through before its deadline")
                return
            try:
                resp = self._router.keepalive(self.id, timeout=max(0.05, self.deadline - now))
            except LeaseNotFound:
                self._lose("the lease was not found (revoked or expired)")
                return
            except QkvError:
                self.failures += 1
                wait = min(RETRY_PAUSE_S * 2, max(0.01, self.deadline - time.monotonic()))
                continue
            except Exception as exc:  # the client was closed under us, a bug: stop cleanly
                self._lose(f"keep-alive failed: {exc!r}")
                return
            if resp.ttl <= 0:
                self._lose("the lease was not found (revoked or expired)")
                return
            self.keepalives += 1
            self.ttl = resp.ttl
            self.deadline = now + resp.ttl
            wait = self._interval()

    def _lose(self, reason: str) -> None:
        if self.done.is_set():
            return
        self.lost_reason = reason
        self.done.set()
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                pass

    @property
    def alive(self) -> bool:
        return not self.done.is_set()

    # -- calls ------------------------------------------------------------------------
    def keepalive_once(self) -> LeaseKeepAliveResponse:
        now = time.monotonic()
        resp = self._router.keepalive(self.id)
        if resp.ttl > 0:
            self.ttl = resp.ttl
            self.deadline = max(self.deadline, now + resp.ttl)
        return resp

    def time_to_live(self, keys: bool = False) -> LeaseTimeToLiveResponse:
        return self._router.time_to_live(self.id, keys)

    def stop_keepalive(self) -> None:
        """Stop keeping the lease alive without revoking it (etcd's ``Orphan``): it
        expires TTL seconds after the last keep-alive."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(self.client.timeout + 1)

    orphan = stop_keepalive

    def revoke(self) -> None:
        self.stop_keepalive()
        try:
            self.client.lease_revoke(self.id)
        except LeaseNotFound:
            pass
        finally:
            self._lose("revoked")

    def close(self) -> None:
        """Stop the keep-alives and revoke the lease (its keys are deleted). A lease the
        server no longer knows is fine; an unreachable cluster lets it expire."""
        if self._stop.is_set() and self.done.is_set():
            self._router.close()
            return
        try:
            self.revoke()
        except (Unavailable, Timeout, QkvError):
            self._lose("closed (the revoke did not get through: the lease expires by itself)")
        finally:
            self._router.close()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lease(id={self.id:x}, ttl={self.ttl}, alive={self.alive})"
