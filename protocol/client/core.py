"""The client's failover, backoff and token-retry policy, shared by ``Client`` (threads)
and ``AsyncClient`` (asyncio). Pure: no zmq, no clock reads (times are passed in), no
sleeping; the transports move bytes and wait where this module tells them to.

One call (``Failover``):
- endpoints are tried in order from the client's preferred one; each attempt gets an
  equal share of what is left of the call's deadline among the endpoints not yet tried
  in this round (a "round" = every endpoint tried once);
- "could not connect" (nothing left this process) and a retryable refusal (the server
  says the request did not take effect) move on to the next endpoint, for any request;
- "sent, no reply": a read moves on; a write raises ``Timeout(outcome_unknown=True)``
  and is never sent again (it may have taken effect);
- ``too_many_requests``: the same member again after its own short, growing, jittered
  pause (25 ms doubling to 500 ms), only while the time left after the pause is at least
  twice the refused round trip and a tenth of the call's timeout; else the refusal is
  raised (a resend with no time for its reply would turn a write's clean refusal into an
  unknown outcome);
- a retryable refusal from every endpoint no longer raises at once: the call goes on
  with the next round (after the client's backoff) until its deadline.

The client (``Backoff``, one per client, shared by all its calls, threads and tasks):
consecutive failed attempts of the whole client are counted, and any reply from a server
resets them. Once ``k >= 1`` full rounds have failed (``failures >= k * n`` with ``n``
endpoints), the client is backing off: its sends are spaced at least
``pause(k) / n`` apart, ``pause(k)`` = full jitter in [0.5, 1] x
``min(backoff_max, backoff_base * 2**(k-1))``: the pause between two rounds, spread over
the round's sends. Hence the bound: after ``k`` failed rounds a client sends at most
``n`` requests per ``0.5 * min(backoff_max, backoff_base * 2**(k-1))`` seconds, whatever
the number of threads or tasks calling (with the defaults 0.05 and 1.0: after 6 failed
rounds at most ``2n`` requests per second). A call whose deadline falls before its next
send could go sends nothing more: it raises its last error at its deadline.
"""
from __future__ import annotations

import contextlib
import random  # only random.Random: a seeded instance
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Sequence

from protocol.errors import (
    AuthOldRevision, InvalidAuthToken, NotLeader, QkvError, Timeout, TooManyRequests, Unavailable,
    UserEmpty,
)

BUSY_BACKOFF_S = 0.025  # first pause after too_many_requests; doubles up to BUSY_BACKOFF_MAX_S
BUSY_BACKOFF_MAX_S = 0.5
BUSY_MIN_LEFT_FRACTION = 0.1  # of the call's timeout: left after a pause, or no resend
DEFAULT_BACKOFF_BASE_S = 0.05
DEFAULT_BACKOFF_MAX_S = 1.0
# Errors after which the request was refused untouched and a fresh token may help.
REAUTH_ERRORS = (InvalidAuthToken, UserEmpty, AuthOldRevision)


def reachable(url: str, asked_endpoint: str) -> str:
    """A URL bound to every interface (``0.0.0.0``, ``*``, ``[::]``) is reached at the host
    the endpoint the client asked (``asked_endpoint``) names; other URLs are unchanged."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"):
        if url.startswith(wildcard) and asked_endpoint.startswith("tcp://"):
            host = asked_endpoint[len("tcp://"):].rsplit(":", 1)[0]
            return f"tcp://{host}:{url[len(wildcard):]}"
    return url


def normalize_endpoint(endpoint: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``tcp://``/``ipc://``/``inproc://`` unchanged.
    ``http://`` (etcd habit) is taken as tcp."""
    e = endpoint.strip()
    if not e:
        raise ValueError("empty endpoint")
    for scheme in ("http://", "https://"):
        if e.startswith(scheme):
            return "tcp://" + e[len(scheme):]
    if "://" in e:
        return e
    return "tcp://" + e


def endpoints_from_members(members: Iterable[Any], asked_endpoint: str) -> list[str]:
    """The endpoint list auto-sync takes from a ``member_list`` answer (clientv3's Sync):
    the client URLs of the members that have started (they have a name) and are not
    learners, normalized, wildcard hosts made reachable at ``asked_endpoint``'s host, in
    order, without duplicates. Empty when there is none (the caller keeps its list)."""
    out: list[str] = []
    for m in members:
        if not getattr(m, "name", "") or getattr(m, "is_learner", False):
            continue
        for url in getattr(m, "client_urls", None) or ():
            if not isinstance(url, str) or not url.strip():
                continue
            try:
                ep = reachable(normalize_endpoint(url), asked_endpoint)
            except ValueError:
                continue
            if ep not in out:
                out.append(ep)
    return out


_RNG = random.Random()  # seeded from the OS; tests pass their own ``rng``


def _default_rng() -> Callable[[], float]:
    return _RNG.random


class Backoff:
    """The client-wide failure count and send pacing (see the module docstring).
    ``lock``: held around each change (the threaded client's lock; asyncio needs none)."""

    def __init__(self, base: float = DEFAULT_BACKOFF_BASE_S, maximum: float = DEFAULT_BACKOFF_MAX_S,
                 rng: Callable[[], float] | None = None, lock: ContextManager[Any] | None = None) -> None:
        if base <= 0 or maximum <= 0:
            raise ValueError("backoff_base and backoff_max must be > 0")
        self.base = float(base)
        self.maximum = float(maximum)
        self._rng = rng or _default_rng()
        self._lock: ContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
        self.failures = 0          # consecutive failed attempts of the client
        self._next_send_at = 0.0   # while backing off: no send before this time

    def rounds(self, n: int) -> int:
        """Full rounds of ``n`` endpoints failed in a row."""
        return self.failures // max(1, n)

    def cap(self, k: int) -> float:
        """The pause after ``k >= 1`` failed rounds, before jitter."""
        return min(self.maximum, self.base * (2.0 ** min(k - 1, 62)))

    def reserve(self, now: float, deadline: float, n: int) -> float | None:
        """When the next send may go (>= ``now``), reserving that slot; None when that is
        after ``deadline`` (nothing is reserved then)."""
        with self._lock:
            k = self.rounds(n)
            if k < 1:
                return now
            at = max(now, self._next_send_at)
            if at > deadline:
                return None
            jitter = 0.5 + self._rng() / 2
            self._next_send_at = at + jitter * self.cap(k) / max(1, n)
            return at

    def failed(self) -> None:
        """An attempt failed (no connection, no reply, a retryable refusal)."""
        with self._lock:
            self.failures += 1

    def succeeded(self) -> None:
        """A server answered: the client is not backing off any more."""
        if self.failures:
            with self._lock:
                self.failures = 0
                self._next_send_at = 0.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send the transport is to make: to ``endpoint`` (index ``index`` of the call's
    list), not before ``send_at``; wait for a connection until ``connect_deadline`` and
    for the reply until ``reply_deadline``."""
    index: int
    endpoint: str
    send_at: float
    connect_deadline: float
    reply_deadline: float


class Failover:
    """The failover state machine of one call. The transport loops::

        while True:
            a = fo.next(now())          # raises the call's final error when done
            if a is None: sleep until fo.deadline; continue
            sleep until a.send_at; wait for a connection until a.connect_deadline
            if none: fo.not_connected(why); continue
            send; wait for the reply until a.reply_deadline
            if none: fo.no_reply(); continue   # raises for a write
            ok = fo.reply(reply_map)           # raises a non-retryable error
            if ok is not None: return ok

    ``fail_over(endpoint)`` is called when an endpoint failed (the client moves its
    preferred endpoint on); ``backoff`` is the client's, shared by all its calls."""

    def __init__(self, endpoints: Sequence[str], preferred: int, *, write: bool, now: float,
                 timeout: float, backoff: Backoff, fail_over: Callable[[str], None] | None = None,
                 rng: Callable[[], float] | None = None) -> None:
        if not endpoints:
            raise ValueError("no endpoint")
        self.endpoints = list(endpoints)
        self.n = len(self.endpoints)
        self.write = write
        self.timeout = timeout
        self.deadline = now + timeout
        self._backoff = backoff
        self._fail_over = fail_over or (lambda endpoint: None)
        self._rng = rng or _default_rng()
        self._next = preferred % self.n
        self._in_round = 0                 # attempts made in the current round
        self._refused = 0                  # retryable refusals in the current round
        self._round_refused = 0            # ... in the round that ended last
        self._current: Attempt | None = None
        self._busy_pause = BUSY_BACKOFF_S
        self._busy_until = 0.0
        self._retry_same = False
        self.last_error: QkvError | None = None
        self.refusal: QkvError | None = None  # the last retryable refusal a server gave
        self.handshake: str | None = None  # why a CURVE handshake failed, if one did
        self.sent_any = False
        self.attempts = 0

    # -- what to do next ----------------------------------------------------------------
    def next(self, now: float) -> Attempt | None:
        """The next attempt; None when the client's backoff lets this call send nothing
        before its deadline (wait until ``deadline``: then this raises); raises the
        call's error once the deadline has passed. Waiting out the deadline rather than
        failing at once keeps a loop of calls from spinning while the client backs off."""
        if now >= self.deadline:
            raise self.final_error()
        if self._retry_same and self._current is not None:
            idx = self._current.index
            earliest = max(now, self._busy_until)
        else:
            idx = self._next
            earliest = now
        self._retry_same = False
        at = self._backoff.reserve(earliest, self.deadline, self.n)
        if at is None or at >= self.deadline:
            self._retry_same = False
            return None
        untried = max(1, self.n - self._in_round)
        remaining = self.deadline - at
        attempt_deadline = at + remaining / untried
        a = Attempt(idx, self.endpoints[idx], at, attempt_deadline,
                    self.deadline if self.write else attempt_deadline)
        self._current = a
        self.attempts += 1
        return a

    def _advance(self, failed: bool) -> None:
        a = self._current
        assert a is not None, "no attempt in progress"
        self._next = (a.index + 1) % self.n
        self._in_round += 1
        if self._in_round >= self.n:
            self._in_round = 0
            self._round_refused, self._refused = self._refused, 0
        if failed:
            self._backoff.failed()
            self._fail_over(a.endpoint)

    # -- what happened ------------------------------------------------------------------
    def not_connected(self, handshake_failure: str | None = None) -> None:
        """No connection came up to the attempt's endpoint (nothing was sent)."""
        a = self._current
        assert a is not None
        if handshake_failure:
            self.handshake = f"CURVE handshake with {a.endpoint} failed: {handshake_failure}"
            self.last_error = Unavailable(self.handshake)
        else:
            self.last_error = Unavailable(f"could not connect to {a.endpoint}")
        self._advance(failed=True)

    def sent(self) -> None:
        """The request left this process (from now on a write's outcome can be unknown)."""
        self.sent_any = True

    def no_reply(self) -> None:
        """The request was sent and no reply came in time. Raises for a write."""
        a = self._current
        assert a is not None
        self._advance(failed=True)
        if self.write:
            raise Timeout(
                f"no reply from {a.endpoint} within {self.timeout:g}s: the write was sent "
                "and its outcome is unknown (it may or may not have taken effect)",
                endpoint=a.endpoint, outcome_unknown=True)
        self.last_error = Timeout(f"no reply from {a.endpoint} within the timeout",
                                  endpoint=a.endpoint)

    def reply(self, reply: dict[str, Any], now: float) -> dict[str, Any] | None:
        """A reply map for the attempt: the ok reply to return, None to go on (a
        retryable refusal, ``too_many_requests``), or raises a non-retryable error."""
        if reply.get("ok") is True:
            self._backoff.succeeded()
            return reply
        err = QkvError.from_wire(reply.get("error"))
        if isinstance(err, TooManyRequests):
            # The member holds too much for this connection; the request did nothing.
            # Pause, then send it again to the same member (within the deadline).
            self.last_error = err
            self._busy_until = now + self._busy_pause * (0.5 + self._rng() / 2)
            self._busy_pause = min(BUSY_BACKOFF_MAX_S, self._busy_pause * 2)
            self._retry_same = True
            a = self._current
            round_trip = max(0.0, now - a.send_at) if a is not None else 0.0
            if self._busy_until + max(2 * round_trip, BUSY_MIN_LEFT_FRACTION * self.timeout) >= self.deadline:
                raise err
            return None
        if not err.retryable or isinstance(err, REAUTH_ERRORS):
            # A member is up and answering. A refusal for the token is the caller's to
            # handle (Reauth: authenticate again, resend once), not another member's.
            self._backoff.succeeded()
            raise err
        # The server says it did not take effect: another member may serve it.
        self.last_error = self.refusal = err
        self._refused += 1
        self._advance(failed=True)
        if self._in_round == 0 and self._round_refused >= self.n:
            if isinstance(err, NotLeader) and err.details.get("leader_client_urls"):
                # Every endpoint refused and the last names the leader elsewhere: the
                # caller (the lease router) follows the hint; another round would not.
                raise err
        return None

    def final_error(self) -> QkvError:
        """The error the call ends with at its deadline. A server's refusal (``no_leader``...)
        says more than a last attempt that ran out of time: it wins over a ``Timeout``."""
        last = self.last_error
        if isinstance(last, Timeout) and self.refusal is not None:
            return self.refusal
        if last is None:
            if self.attempts:
                return Timeout(f"request timed out after {self.timeout:g}s "
                               f"(endpoints: {', '.join(self.endpoints)})")
            return Unavailable(
                f"the client is backing off after {self._backoff.failures} failed attempts in a row "
                f"and this call's deadline ({self.timeout:g}s) ends before its next send "
                f"(endpoints: {', '.join(self.endpoints)})")
        if isinstance(last, Unavailable) and not self.sent_any:
            return Unavailable(f"could not connect to any endpoint within {self.timeout:g}s "
                               f"({', '.join(self.endpoints)})"
                               + (f": {self.handshake}" if self.handshake else ""))
        if last.retryable:
            return last
        return Timeout(f"request timed out after {self.timeout:g}s "
                       f"(endpoints: {', '.join(self.endpoints)})")


class Reauth:
    """The token policy of one call: a refusal for the token (``REAUTH_ERRORS``) is
    answered by authenticating again and resending ONCE per kind (an old revision and a
    bad token are different causes); each refusal is before the request did anything."""

    __slots__ = ("_retried",)

    def __init__(self) -> None:
        self._retried: set[type] = set()

    def again(self, exc: BaseException) -> bool:
        """True: authenticate again and resend; False: raise ``exc``."""
        if not isinstance(exc, REAUTH_ERRORS):
            return False
        kind = AuthOldRevision if isinstance(exc, AuthOldRevision) else InvalidAuthToken
        if kind in self._retried:
            return False
        self._retried.add(kind)
        return True


def with_token(req: dict[str, Any], token: str) -> dict[str, Any]:
    """``req`` carrying ``token`` ("" = none needed)."""
    return {**req, "token": token} if token else req
