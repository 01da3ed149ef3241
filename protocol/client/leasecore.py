"""Leases, the pure part shared by ``Lease``/``LeaderRouter`` (lease.py, threads) and
``AsyncLease``/``AsyncLeaderRouter`` (aio_lease.py, asyncio): the algorithms as effect
generators (protocol/client/effects.py), no I/O, no clock, no sleeping.

- Leader routing (``RouterCore.route``): ``lease_keepalive`` and ``lease_timetolive`` are
  served by the leader only. A member that is not the leader answers ``not_leader`` with
  the leader's client URLs in its details: the router goes there; without a hint (or when
  the hinted member does not answer) it tries the client's other endpoints in turn, a
  round after another with a short pause between them, until the deadline. It remembers
  the leader it found, so the next keep-alive goes straight there. Both ops are
  idempotent (a keep-alive sent twice only refreshes the TTL twice), so a timeout is
  retried elsewhere, unlike a write.
- Keep-alive (``LeaseCore.keepalive_loop``): one keep-alive every TTL/3 seconds (etcd's
  clientv3 does the same), across failovers. The lease is lost when revoked or expired
  (the server says ``lease_not_found`` / TTL <= 0), or when no keep-alive got through
  before the lease's deadline as the client computes it: the time the last successful
  keep-alive was *sent* + its TTL, never later than the server's own deadline.
"""
from __future__ import annotations

from typing import Any, Callable

from protocol.client.core import normalize_endpoint, reachable
from protocol.client.effects import Algo, Idle, Now, Send, Sleep
from protocol.client.types import (
    LEASE_ID_FIELD, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseTimeToLiveResponse,
)
from protocol.errors import Internal, LeaseNotFound, NotLeader, QkvError, Timeout

ATTEMPT_TIMEOUT_S = 2.0    # one attempt at one member
RETRY_PAUSE_S = 0.1        # between rounds over every endpoint (an election in progress)
MIN_INTERVAL_S = 0.05      # keep-alives never closer than this
MAX_HINTS = 16             # leader URLs read from one not_leader answer (a forged one is long)

LOST_EXPIRED = "the lease expired: no keep-alive got through before its deadline"
LOST_NOT_FOUND = "the lease was not found (revoked or expired)"
LOST_REVOKED = "revoked"
LOST_CLOSED = "closed (the revoke did not get through: the lease expires by itself)"


def keepalive_req(lease_id: int) -> dict[str, Any]:
    """The ``lease_keepalive`` request (the lease id travels as ``ID``)."""
    return {"op": "lease_keepalive", LEASE_ID_FIELD: int(lease_id)}


def timetolive_req(lease_id: int, keys: bool = False) -> dict[str, Any]:
    """The ``lease_timetolive`` request."""
    req: dict[str, Any] = {"op": "lease_timetolive", LEASE_ID_FIELD: int(lease_id)}
    if keys:
        req["keys"] = True
    return req


def attempt_timeout_for(client_timeout: float, ttl: float | None = None) -> float:
    """How long one attempt at one member may last: at most 2 s and the client's timeout;
    for a lease's keep-alives also TTL/4 (at least 0.25 s), so that a dead leader leaves
    time for the other members before the lease's deadline."""
    t = min(float(client_timeout), ATTEMPT_TIMEOUT_S)
    if ttl is not None:
        t = min(t, max(0.25, ttl / 4.0))
    return t


def parse(parser: Callable[[dict[str, Any]], Any], reply: dict[str, Any]) -> Any:
    """``parser(reply)``; a reply that does not have the expected shape (a forged or
    broken server) raises ``Internal`` instead of a KeyError/TypeError deep inside."""
    try:
        return parser(reply)
    except QkvError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise Internal(f"malformed reply from the server: {exc!r:.200}") from None


class RouterCore:
    """The leader routing state and algorithm (one per client, or per lease)."""

    def __init__(self, client: Any, attempt_timeout: float | None = None) -> None:
        self.client = client
        self.attempt_timeout = float(attempt_timeout or attempt_timeout_for(client.timeout))
        self.leader_url: str | None = None
        self.redirects = 0  # not_leader answers followed (for tests)

    def candidates(self) -> list[str]:
        """The endpoints in the order to try: the known leader first, then the client's
        endpoints from its preferred one."""
        eps = list(self.client.endpoints)
        start = self.client._preferred % len(eps)
        order = eps[start:] + eps[:start]
        lead = self.leader_url
        if lead is not None:
            order = [lead] + [e for e in order if e != lead]
        return order

    def hints(self, exc: NotLeader, asked: str) -> list[str]:
        """The leader URLs of a not_leader answer from ``asked``, as endpoints."""
        urls = exc.details.get("leader_client_urls")
        if not isinstance(urls, (list, tuple)):
            return []
        out = []
        for u in urls[:MAX_HINTS]:
            if isinstance(u, str) and u.strip():
                try:
                    out.append(normalize_endpoint(reachable(u, asked)))
                except ValueError:
                    continue
        return out

    def route(self, req: dict[str, Any], timeout: float | None = None) -> Algo[dict[str, Any]]:
        """Send ``req`` to the leader; the reply map. Non-retryable errors raise at once;
        otherwise the last error (or ``Timeout``) once ``timeout`` (None: the client's)
        passes."""
        start = yield Now()
        deadline = start + (self.client.timeout if timeout is None else timeout)
        last: QkvError | None = None
        while True:
            queue = self.candidates()
            tried: set[str] = set()
            while queue:
                url = queue.pop(0)
                if url in tried:
                    continue
                tried.add(url)
                now = yield Now()
                if now >= deadline:
                    break
                try:
                    reply = yield Send(url, dict(req), min(self.attempt_timeout, deadline - now))
                except NotLeader as exc:
                    last = exc
                    if self.leader_url == url:
                        self.leader_url = None
                    hints = [h for h in self.hints(exc, url) if h not in tried]
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
                return reply  # type: ignore[no-any-return]
            now = yield Now()
            if now >= deadline:
                break
            yield Sleep(min(RETRY_PAUSE_S, deadline - now))
        if last is not None:
            raise last
        raise Timeout("no leader answered within the timeout "
                      f"(endpoints: {', '.join(self.client.endpoints)})")

    def keepalive_algo(self, lease_id: int, timeout: float | None = None) -> Algo[LeaseKeepAliveResponse]:
        """One keep-alive at the leader."""
        reply = yield from self.route(keepalive_req(lease_id), timeout)
        return parse(LeaseKeepAliveResponse.from_wire, reply)  # type: ignore[no-any-return]

    def time_to_live_algo(self, lease_id: int, keys: bool = False,
                          timeout: float | None = None) -> Algo[LeaseTimeToLiveResponse]:
        """``lease_timetolive`` at the leader."""
        reply = yield from self.route(timetolive_req(lease_id, keys), timeout)
        return parse(LeaseTimeToLiveResponse.from_wire, reply)  # type: ignore[no-any-return]


class LeaseCore:
    """A granted lease's state and keep-alive algorithm. The subclasses give ``_done``
    (set once the lease is lost) and run the algorithms with their driver."""

    id: int
    ttl: int
    granted_ttl: int
    deadline: float

    def _init_state(self, client: Any, on_lost: Callable[[Any], Any] | None) -> None:
        self.client = client
        self.id = 0
        self.ttl = self.granted_ttl = 0
        self.header: Any = None
        self.deadline = 0.0
        self.lost_reason = ""
        self.keepalives = 0      # successful keep-alives (for tests and logs)
        self.failures = 0        # failed attempts
        self._on_lost = on_lost
        self._router: RouterCore | None = None

    def _granted(self, resp: LeaseGrantResponse, sent: float) -> None:
        """The grant's answer, for a request sent at ``sent``."""
        self.id = resp.id
        self.granted_ttl = self.ttl = resp.ttl
        self.header = resp.header
        self.deadline = sent + resp.ttl  # the client's view: never later than the server's

    def _set_done(self) -> None:  # the subclass's event
        raise NotImplementedError

    def _is_done(self) -> bool:
        raise NotImplementedError

    def _lose(self, reason: str) -> None:
        """The lease is lost (or closed): record why, set ``done``, call ``on_lost`` once."""
        if self._is_done():
            return
        self.lost_reason = reason
        self._set_done()
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                pass

    @property
    def alive(self) -> bool:
        """False once the lease is lost or closed."""
        return not self._is_done()

    def interval(self) -> float:
        """The pause between two keep-alives: TTL/3."""
        return max(self.ttl / 3.0, MIN_INTERVAL_S)

    def _route(self) -> RouterCore:
        assert self._router is not None, "the lease is not granted yet"
        return self._router

    def keepalive_loop(self) -> Algo[None]:
        """Keep the lease alive until told to stop (an ``Idle`` answered True) or until
        it is lost (``_lose`` says why)."""
        wait = self.interval()
        while True:
            stopped = yield Idle(wait)
            if stopped:
                return
            now = yield Now()
            if now >= self.deadline:
                self._lose(LOST_EXPIRED)
                return
            try:
                resp = yield from self._route().keepalive_algo(self.id, timeout=max(0.05, self.deadline - now))
            except LeaseNotFound:
                self._lose(LOST_NOT_FOUND)
                return
            except QkvError:
                self.failures += 1
                later = yield Now()
                wait = min(RETRY_PAUSE_S * 2, max(0.01, self.deadline - later))
                continue
            except Exception as exc:  # the client was closed under us, a bug: stop cleanly
                self._lose(f"keep-alive failed: {exc!r}")
                return
            if resp.ttl <= 0:
                self._lose(LOST_NOT_FOUND)
                return
            self.keepalives += 1
            self.ttl = resp.ttl
            self.deadline = now + resp.ttl
            wait = self.interval()

    def keepalive_once_algo(self, timeout: float | None = None) -> Algo[LeaseKeepAliveResponse]:
        """One keep-alive now (the background loop goes on as it was)."""
        now = yield Now()
        resp = yield from self._route().keepalive_algo(self.id, timeout)
        if resp.ttl > 0:
            self.ttl = resp.ttl
            self.deadline = max(self.deadline, now + resp.ttl)
        return resp

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id:x}, ttl={self.ttl}, alive={self.alive})"
