"""What the gateway holds for one client connection, bounded in bytes (issue 12; SPEC
section 1 "Per-connection limits").

A ROUTER tells its connections apart by identity. For each identity that has something
going on, `Conns` keeps:
- requests in progress: started (validated, sent on to consensus or storage) and not yet
  answered; at most a *window* of them;
- requests waiting: received but not started, oldest first, bounded in count
  (`max_waiting`) and bytes (`queue_bytes`); past that a request is refused with
  `too_many_requests`, and one that waited `wait_timeout` seconds is refused the same way;
- reply bytes held: replies given to libzmq that it has not released yet (sent zero-copy
  with a `MessageTracker`: `tracker.done` says libzmq let go of the bytes, i.e. they are
  in the kernel or the connection closed) plus replies parked in an outbox because the
  connection's pipe was at its high-water mark (the client does not read). Replies
  smaller than the socket's copy threshold are copied into libzmq and are not counted
  here: the ROUTER's per-pipe SNDHWM bounds them (SNDHWM x threshold).

The rules:
- a request starts when nothing waits before it, fewer than `window` requests are in
  progress and less than half of `queue_bytes` is held. The window adapts to the size of
  the connection's replies (`queue_bytes // 2 // estimate`, between 1 and
  `max_requests`; `first_window` before any reply), so what is in transit for the
  connection (built by storage, on its way back) is about half the bound too;
- a reply is delivered (sent, or parked) when the connection holds nothing, or when it
  fits under `queue_bytes` (each message counted with MESSAGE_OVERHEAD bytes for its
  Python objects, so many tiny replies count too); otherwise it is dropped and counted;
- the first dropped reply or expired waiting request of an episode is reported
  (`on_slow(conn, reason)`, logged rate-limited by the actor); the episode ends when the
  connection holds nothing and has nothing waiting;
- a connection whose identity is gone (ROUTER_MANDATORY's EHOSTUNREACH) loses its
  parked replies and waiting requests at once;
- a connection with nothing in progress, waiting, parked or held is forgotten: state
  exists only while a connection is busy, so identities that never come back leave
  nothing behind.

Nothing here scans all connections: work that waits for time (libzmq to drain, a waiting
request to expire) is scheduled on a heap, each connection at most once, with a backoff
while it makes no progress.

Pure logic: the socket is behind `send(frames)`, which returns a tracker (an object with
`done`) while libzmq holds the bytes or None when they were copied, and raises `PipeFull`
or `PeerGone`. Times come from the caller.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any, Callable

ADMIT = "admit"
WAIT = "wait"
REFUSE = "refuse"

SENT = "sent"
PARKED = "parked"
DROPPED = "dropped"
GONE = "gone"

MESSAGE_OVERHEAD = 256  # bytes counted per request or reply on top of its payload (Python objects)
FIRST_WINDOW = 2  # requests of a connection started before any of its replies is seen
RETRY_MIN_S = 0.002  # first retry of a parked reply / check of a tracked one
RETRY_MAX_S = 0.2  # backoff ceiling while a connection makes no progress


class PipeFull(Exception):
    """The connection's pipe is at its high-water mark (EAGAIN under ROUTER_MANDATORY)."""


class PeerGone(Exception):
    """No connection has this identity (EHOSTUNREACH under ROUTER_MANDATORY)."""


class Conn:
    __slots__ = ("identity", "peer", "user", "in_progress", "waiting", "waiting_bytes", "outbox",
                 "tracked", "held", "estimate", "reported", "dropped", "due", "delay")

    def __init__(self, identity: bytes, peer: str, user: str) -> None:
        self.identity = identity
        self.peer = peer
        self.user = user
        self.in_progress = 0
        self.waiting: deque[tuple[float, Any, int]] = deque()  # (arrived, item, nbytes)
        self.waiting_bytes = 0
        self.outbox: deque[tuple[list[bytes], int]] = deque()  # (frames, nbytes)
        self.tracked: deque[tuple[Any, int]] = deque()  # (tracker, nbytes)
        self.held = 0  # bytes in the outbox + bytes libzmq has not released
        self.estimate = 0  # reply size estimate; 0 = no reply seen yet
        self.reported = False  # in a slow episode (reported once)
        self.dropped = 0
        self.due: float | None = None  # when this connection is scheduled for service
        self.delay = RETRY_MIN_S

    def busy(self) -> bool:
        return bool(self.in_progress or self.waiting or self.outbox or self.tracked)


class Conns:
    def __init__(
        self,
        send: Callable[[list[bytes]], Any],
        *,
        queue_bytes: int,
        max_requests: int,
        max_waiting: int,
        wait_timeout: float,
        on_slow: Callable[[Conn, str], None] = lambda conn, reason: None,
        first_window: int = FIRST_WINDOW,
    ) -> None:
        self._send = send
        self.queue_bytes = queue_bytes
        self.max_requests = max_requests
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.first_window = first_window
        self.on_slow = on_slow
        self.conns: dict[bytes, Conn] = {}
        self.ready: deque[Any] = deque()  # waiting items that may start now (the actor takes them)
        self.expired: deque[Any] = deque()  # waiting items that waited too long (to refuse)
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self.dropped = 0  # replies dropped because their connection was over its bound
        self.gone = 0  # replies dropped because their connection had gone
        self.refused = 0  # requests refused at arrival (too many waiting)
        self.expired_count = 0  # requests refused after waiting wait_timeout

    # --- requests ------------------------------------------------------------------
    def request(self, identity: bytes, item: Any, nbytes: int, now: float, peer: str = "", user: str = "") -> str:
        """A request arrived. ADMIT: start it now (it is in progress); WAIT: `item` comes
        back through `ready` (or `expired`) later; REFUSE: answer it `too_many_requests`."""
        conn = self.conns.get(identity)
        if conn is None:
            conn = self.conns[identity] = Conn(identity, peer, user)
        self._release(conn)
        if not conn.waiting and self._may_start(conn):
            conn.in_progress += 1
            return ADMIT
        nbytes += MESSAGE_OVERHEAD
        if len(conn.waiting) >= self.max_waiting or conn.waiting_bytes + nbytes > self.queue_bytes:
            self.refused += 1
            self._forget_if_idle(conn)
            return REFUSE
        conn.waiting.append((now, item, nbytes))
        conn.waiting_bytes += nbytes
        self._schedule(conn, now + self.wait_timeout)
        return WAIT

    def window(self, conn: Conn) -> int:
        if conn.estimate == 0:
            return min(self.first_window, self.max_requests)
        return max(1, min(self.max_requests, (self.queue_bytes // 2) // conn.estimate))

    def _may_start(self, conn: Conn) -> bool:
        return conn.in_progress < self.window(conn) and conn.held < self.queue_bytes // 2

    def _start_waiting(self, conn: Conn) -> None:
        while conn.waiting and self._may_start(conn):
            _, item, nbytes = conn.waiting.popleft()
            conn.waiting_bytes -= nbytes
            conn.in_progress += 1
            self.ready.append(item)

    # --- replies -------------------------------------------------------------------
    def reply(self, identity: bytes, frames: list[bytes], now: float, admitted: bool = True) -> str:
        """Send a reply to `identity` (`frames` = the ROUTER frames, identity first).
        `admitted`: it answers a request that was in progress (else: a refusal, or an
        answer to a request that was never counted)."""
        nbytes = len(frames[-1]) + MESSAGE_OVERHEAD
        conn = self.conns.get(identity)
        if conn is None:
            # Nothing counted for this identity: a refusal of a frame that was never
            # admitted. Send it if the pipe takes it; never park it.
            try:
                tracker = self._send(frames)
            except PipeFull:
                self.dropped += 1
                return DROPPED
            except PeerGone:
                self.gone += 1
                return GONE
            if tracker is not None and not tracker.done:
                conn = self.conns[identity] = Conn(identity, "", "")
                conn.tracked.append((tracker, nbytes))
                conn.held += nbytes
                self._schedule(conn, now + conn.delay)
            return SENT
        if admitted and conn.in_progress > 0:
            conn.in_progress -= 1
            conn.estimate = max(nbytes, conn.estimate // 2)
        self._release(conn)
        result = self._deliver(conn, frames, nbytes, now)
        if result != GONE:
            self._start_waiting(conn)
        self._forget_if_idle(conn)
        return result

    def _deliver(self, conn: Conn, frames: list[bytes], nbytes: int, now: float) -> str:
        if conn.held > 0 and conn.held + nbytes > self.queue_bytes:
            self._drop(conn)
            return DROPPED
        if conn.outbox:
            self._park(conn, frames, nbytes, now)
            return PARKED
        try:
            tracker = self._send(frames)
        except PipeFull:
            self._park(conn, frames, nbytes, now)
            return PARKED
        except PeerGone:
            self._gone(conn)
            return GONE
        self._track(conn, tracker, nbytes, now)
        return SENT

    def _park(self, conn: Conn, frames: list[bytes], nbytes: int, now: float) -> None:
        conn.outbox.append((frames, nbytes))
        conn.held += nbytes
        self._schedule(conn, now + conn.delay)

    def _track(self, conn: Conn, tracker: Any, nbytes: int, now: float) -> None:
        if tracker is not None and not tracker.done:
            conn.tracked.append((tracker, nbytes))
            conn.held += nbytes
            self._schedule(conn, now + conn.delay)

    def _drop(self, conn: Conn) -> None:
        self.dropped += 1
        conn.dropped += 1
        self._report(conn, "replies_dropped")

    def _report(self, conn: Conn, reason: str) -> None:
        if not conn.reported:
            conn.reported = True
            self.on_slow(conn, reason)

    def _gone(self, conn: Conn) -> None:
        """The identity is not connected: nothing parked or waiting can reach it."""
        self.gone += 1 + len(conn.outbox)
        for _, nbytes in conn.outbox:
            conn.held -= nbytes
        conn.outbox.clear()
        conn.waiting.clear()
        conn.waiting_bytes = 0

    # --- progress ------------------------------------------------------------------
    def _release(self, conn: Conn) -> bool:
        """Forget the bytes libzmq let go of; True if any."""
        progressed = False
        while conn.tracked and conn.tracked[0][0].done:
            _, nbytes = conn.tracked.popleft()
            conn.held -= nbytes
            progressed = True
        if conn.held == 0 and not conn.waiting:
            conn.reported = False  # the episode is over: a new one is reported again
        return progressed

    def _flush_outbox(self, conn: Conn) -> bool:
        progressed = False
        while conn.outbox:
            frames, nbytes = conn.outbox[0]
            try:
                tracker = self._send(frames)
            except PipeFull:
                break
            except PeerGone:
                self._gone(conn)
                return progressed
            conn.outbox.popleft()
            conn.held -= nbytes
            progressed = True
            if tracker is not None and not tracker.done:
                conn.tracked.append((tracker, nbytes))
                conn.held += nbytes
        return progressed

    def service(self, now: float) -> None:
        """Run what is due: release bytes libzmq let go of, retry parked replies, start
        waiting requests that may start, expire those that waited too long."""
        while self._heap and self._heap[0][0] <= now:
            due, _, identity = heapq.heappop(self._heap)
            conn = self.conns.get(identity)
            if conn is None or conn.due != due:
                continue  # a stale entry: forgotten or scheduled again since
            conn.due = None
            progressed = self._release(conn)
            progressed = self._flush_outbox(conn) or progressed
            progressed = self._release(conn) or progressed
            while conn.waiting and conn.waiting[0][0] + self.wait_timeout <= now:
                _, item, nbytes = conn.waiting.popleft()
                conn.waiting_bytes -= nbytes
                self.expired.append(item)
                self.expired_count += 1
                self._report(conn, "requests_expired")
            self._start_waiting(conn)
            conn.delay = RETRY_MIN_S if progressed else min(RETRY_MAX_S, conn.delay * 2)
            if not self._forget_if_idle(conn):
                self._reschedule(conn, now)

    def _reschedule(self, conn: Conn, now: float) -> None:
        if conn.outbox or conn.tracked:
            self._schedule(conn, now + conn.delay)
        if conn.waiting:
            self._schedule(conn, conn.waiting[0][0] + self.wait_timeout)

    def _schedule(self, conn: Conn, at: float) -> None:
        if conn.due is not None and conn.due <= at:
            return
        conn.due = at
        heapq.heappush(self._heap, (at, next(self._seq), conn.identity))

    def _forget_if_idle(self, conn: Conn) -> bool:
        if conn.busy():
            return False
        conn.held = 0
        self.conns.pop(conn.identity, None)
        return True

    def next_due(self) -> float | None:
        """When `service` has work next (None: nothing scheduled)."""
        while self._heap:
            due, _, identity = self._heap[0]
            conn = self.conns.get(identity)
            if conn is not None and conn.due == due:
                return due
            heapq.heappop(self._heap)  # stale
        return None

    def held_bytes(self) -> int:
        return sum(c.held for c in self.conns.values())
