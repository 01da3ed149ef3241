"""The watch protocol, without sockets or clocks: the consumer side of SPEC.md section 5.

``WatchState`` is one watch's state and every decision about it; the threaded
``Watcher`` (watch.py) and the asyncio ``AsyncWatcher`` (aio_watch.py) only move frames
and replies in and out of it and wait. Time is passed in (``now``, monotonic seconds).

- ``delivered`` = D: every matching event <= D has been delivered, nothing above D has.
  A live message at revision r with ``prev_revision`` p is delivered when p <= D (then
  D = r); r <= D is a duplicate; p > D means a hole: catch up from history [D+1, ...].
  A progress message (R, L) with L <= D moves D to R; L > D is a hole as well;
- never delivers a revision <= D, whatever the node says (etcd bug #15271);
- a key or range_end longer than MAX_TOPIC_KEY (256) bytes is watched through its
  *covering* channel (``covering_range``), whose events are filtered to the watched range;
  a revision with no event left moves D like a progress message. A covering channel the
  user may not read (auth) is refused, so the live path stays silent: the watch then
  follows the range from ``history`` after each silence;
- silence (no message, not even the broadcaster's heartbeat) for SILENCE_S makes it ask
  for progress (a repeated subscribe), PROBE_S more makes it move to another endpoint
  and resume from D+1;
- a compacted start (or hole) ends the watch with ``canceled`` and ``compact_revision``;
- a frame that cannot be decoded (a forged or damaged message) is treated as a lost
  message: history fills whatever it was, nothing is delivered from it; a history reply
  that is not what SPEC section 4 says raises ``Internal`` (another member may serve it).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, TypeVar

import msgpack

from protocol.client.types import FROM_KEY_END, KeyValue, ResponseHeader, prefix_end
from protocol.errors import Internal, QkvError

TOPIC_HEAD = b"W1"
FLAG_PREV_KV, FLAG_NO_PUT, FLAG_NO_DELETE = 1, 2, 4
MAX_TOPIC_KEY = 256      # SPEC section 5: a channel's key and range_end are at most this long
SILENCE_S = 5.0          # no message for this long: ask the broadcaster for progress
PROBE_S = 2.0            # and no answer this long after: move to another endpoint
HISTORY_PAGE_REVISIONS = 5000
INBOX_FRAMES = 10_000    # a watcher's queue of live frames; overflow is a hole (history fills it)
TAKE_BATCH = 1000        # frames a watcher takes from its inbox per step
FAILOVER_PAUSE_S = 0.1   # between attach rounds when no endpoint answers, doubling...
FAILOVER_PAUSE_MAX_S = 1.0  # ...up to this
# history errors that no other endpoint or retry can cure: raised to the caller.
FATAL_CODES = frozenset({"unknown_op", "invalid_argument", "key_not_provided", "malformed",
                         "permission_denied", "auth_failed", "user_empty", "invalid_auth_token",
                         "auth_old_revision"})

# What the transport does after an idle wait (``WatchState.idle``).
IDLE_WAIT, IDLE_PROBE, IDLE_FAILOVER, IDLE_CATCH_UP = "wait", "probe", "failover", "catch_up"
TOOK_FRAMES, TOOK_CLOSED = "frames", "closed"  # and the IDLE_* above (``WatchState.take``)
# What the transport does after a history error (``WatchState.history_failed``).
HIST_ENDED, HIST_RAISE, HIST_FAILOVER = "ended", "raise", "failover"


def watch_topic(key: bytes, range_end: bytes = b"", *, prev_kv: bool = False,
                no_put: bool = False, no_delete: bool = False) -> bytes:
    """The channel topic of SPEC section 5 (same encoding as actors/watch/channels.py)."""
    flags = (FLAG_PREV_KV if prev_kv else 0) | (FLAG_NO_PUT if no_put else 0) \
        | (FLAG_NO_DELETE if no_delete else 0)
    return b"".join((TOPIC_HEAD, bytes((flags,)), len(key).to_bytes(4, "big"), key,
                     len(range_end).to_bytes(4, "big"), range_end))


def covering_range(key: bytes, range_end: bytes = b"") -> tuple[bytes, bytes]:
    """The channel range to subscribe to for ``[key, range_end)`` (SPEC section 5, "Long
    keys"; the same rule as actors/watch/channels.py): the range itself when key and
    range_end are each at most MAX_TOPIC_KEY bytes; else key[:MAX] and, as the end, a
    single key's prefix_end(key[:MAX]), ``"\\x00"`` as is, a short range_end as is, a long
    one's prefix_end(range_end[:MAX])."""
    n = MAX_TOPIC_KEY
    if len(key) <= n and len(range_end) <= n:
        return key, range_end
    k = key[:n]
    if not range_end:
        return k, prefix_end(k)
    if range_end == FROM_KEY_END or len(range_end) <= n:
        return k, range_end
    return k, prefix_end(range_end[:n])


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Whether ``key`` is in ``[start, end)`` (end "" = the key alone, "\\x00" = no end)."""
    if not end:
        return key == start
    return key >= start and (end == FROM_KEY_END or key < end)


def parse_filters(filters: Iterable[Any]) -> tuple[bool, bool]:
    """``("NOPUT", "NODELETE")`` (any case, ``-``/``_``) -> ``(no_put, no_delete)``."""
    flt = {str(f).upper().replace("-", "_") for f in filters}
    unknown = flt - {"NOPUT", "NO_PUT", "NODELETE", "NO_DELETE"}
    if unknown:
        raise ValueError(f"unknown watch filters: {sorted(unknown)}")
    return bool(flt & {"NOPUT", "NO_PUT"}), bool(flt & {"NODELETE", "NO_DELETE"})


def failover_pause(rounds: int) -> float:
    """The pause after ``rounds`` (>= 1) attach rounds in which no endpoint answered."""
    return min(FAILOVER_PAUSE_MAX_S, FAILOVER_PAUSE_S * 2 ** min(rounds - 1, 16))


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``type`` "PUT" or "DELETE", the key's ``kv`` after it, ``prev_kv``
    (with ``prev_kv=True``) before it."""

    type: str  # "PUT" | "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @classmethod
    def from_wire(cls, wire: dict) -> "Event":
        """An event map of SPEC section 5 (``type``, ``kv``, optional ``prev_kv``)."""
        prev = wire.get("prev_kv")
        return cls(wire["type"], KeyValue.from_wire(wire["kv"]),
                   KeyValue.from_wire(prev) if prev else None)


@dataclass(slots=True)
class WatchResponse:
    """What a watch delivers: the events of one revision, a progress notification
    (``progress_notify``, no events: every event <= ``revision`` was delivered), or the
    end (``canceled``; ``compact_revision`` when history was compacted past it)."""

    header: ResponseHeader
    events: list[Event] = field(default_factory=list)
    compact_revision: int = 0
    canceled: bool = False
    progress_notify: bool = False
    cancel_reason: str = ""

    @property
    def revision(self) -> int:
        """The revision this response is about (the header's)."""
        return self.header.revision


class Inbox:
    """A watcher's bounded queue of live frames (its hub puts, the watcher takes). A frame
    that finds it full is dropped and counted: the watcher treats it as a hole."""

    __slots__ = ("frames", "bound", "dropped", "seen_dropped", "closed")

    def __init__(self, bound: int = INBOX_FRAMES) -> None:
        self.frames: collections.deque[list[bytes]] = collections.deque()
        self.bound = max(1, int(bound))
        self.dropped = 0        # frames dropped on a full inbox (the putting side's count)
        self.seen_dropped = 0   # how many of them the watcher has seen
        self.closed = False     # the hub went away (its client was closed)

    def put(self, frames: list[bytes]) -> None:
        """One frame from the hub (dropped and counted when the inbox is full)."""
        if len(self.frames) >= self.bound:
            self.dropped += 1
        else:
            self.frames.append(frames)

    def drain(self) -> list[list[bytes]]:
        """What has arrived, at most TAKE_BATCH frames."""
        out: list[list[bytes]] = []
        frames = self.frames
        while frames and len(out) < TAKE_BATCH:
            out.append(frames.popleft())
        return out


class Routes:
    """A hub's table: topic -> the inboxes of the watchers of that topic."""

    def __init__(self) -> None:
        self.by_topic: dict[bytes, list[Inbox]] = {}

    def add(self, topic: bytes, inbox: Inbox) -> None:
        """Route ``topic`` to ``inbox`` too (the transport subscribes once more)."""
        self.by_topic.setdefault(topic, []).append(inbox)

    def remove(self, topic: bytes, inbox: Inbox) -> bool:
        """Stop routing ``topic`` to ``inbox``; whether it was routed (then the transport
        takes back one subscribe)."""
        inboxes = self.by_topic.get(topic)
        if inboxes is None or inbox not in inboxes:
            return False
        inboxes.remove(inbox)
        if not inboxes:
            del self.by_topic[topic]
        return True

    def dispatch(self, frames: list[bytes]) -> bool:
        """A message off the SUB to its topic's inboxes; whether any took it."""
        inboxes = self.by_topic.get(frames[0]) if len(frames) == 2 else None
        if not inboxes:
            return False
        for inbox in inboxes:
            inbox.put(frames)
        return True

    def close(self) -> list[Inbox]:
        """The hub is going: every inbox is closed (and returned, to be woken)."""
        out = [i for inboxes in self.by_topic.values() for i in inboxes]
        for inbox in out:
            inbox.closed = True
        self.by_topic.clear()
        return out


class HubLike(Protocol):
    endpoint: str
    users: int
    stopping: bool


H = TypeVar("H", bound=HubLike)


def hub_use(hubs: dict[str, H], endpoint: str) -> H | None:
    """One more use of the running hub on ``endpoint`` in a client's table, if any."""
    hub = hubs.get(endpoint)
    if hub is None or hub.stopping:
        return None
    hub.users += 1
    return hub


def hub_install(hubs: dict[str, H], hub: H) -> H:
    """Put a hub just made in the table and use it; when another was made meanwhile, that
    one is used instead (the caller closes the returned-over one: ``result is not hub``)."""
    current = hub_use(hubs, hub.endpoint)
    if current is not None:
        return current
    hubs[hub.endpoint] = hub
    hub.users += 1
    return hub


def hub_release(hubs: dict[str, H], hub: H) -> bool:
    """One use less; True when it was the last (the caller closes the hub)."""
    hub.users -= 1
    if hub.users > 0:
        return False
    hub_retire(hubs, hub)
    return True


def hub_retire(hubs: dict[str, H], hub: H) -> None:
    """Out of the table (dead, or closing): the next attach there makes a new hub."""
    if hubs.get(hub.endpoint) is hub:
        del hubs[hub.endpoint]


class _Malformed(Exception):
    """A live frame that is not a channel message of SPEC section 5."""


def _events(wire: Any) -> list[Event]:
    if not isinstance(wire, list):
        raise _Malformed("events is not a list")
    try:
        return [Event.from_wire(e) for e in wire]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _Malformed(f"bad event: {exc!r:.100}") from None


def _int(body: dict, name: str, optional: bool = False) -> int | None:
    v = body.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _Malformed(f"{name} is not a revision: {v!r:.50}")
    return v


class WatchState:
    """One watch: its range and topic, D (``delivered``), the responses ready to hand
    out (``ready``), and the consumer rule. Not thread-safe: one consumer drives it."""

    def __init__(self, key: bytes, range_end: bytes, *, prev_kv: bool = False,
                 no_put: bool = False, no_delete: bool = False, progress_notify: bool = False,
                 progress_interval_s: float = 0.0, auth: bool = False) -> None:
        """``auth``: the client has a user (history is checked first, and a silent covering
        channel is followed from history)."""
        self.key, self.range_end = key, range_end
        self.prev_kv, self.no_put, self.no_delete = prev_kv, no_put, no_delete
        self.progress_notify = progress_notify
        self.progress_interval_s = progress_interval_s
        self.auth = auth
        ckey, cend = covering_range(key, range_end)
        # A covering channel sends more than this range: its events are filtered.
        self.covering = (ckey, cend) != (key, range_end)
        self.topic = watch_topic(ckey, cend, prev_kv=prev_kv, no_put=no_put, no_delete=no_delete)
        self.delivered = 0
        self.start_revision = 1
        self.header = ResponseHeader()
        self.ready: collections.deque[WatchResponse] = collections.deque()
        self.need_catchup = True
        self.catching = False
        self.done = False
        self.last_msg_at = 0.0
        self.probe_at: float | None = None
        self.progress_wanted = False
        self.resubscribe = False
        self.progress_sent_at = 0.0
        self.resumes = 0    # times it moved to another endpoint (for tests and logs)
        self.catchups = 0   # history catch-ups after a hole
        self.malformed = 0  # live frames that could not be decoded (each one a hole)

    # --- attaching -------------------------------------------------------------------
    def begin(self, start_revision: int, current_revision: int) -> None:
        """Set D from the watch's ``start_revision`` (0 = from now: the first revision
        delivered is the member's current + 1, as etcd's)."""
        self.delivered = start_revision - 1 if start_revision and start_revision > 0 else current_revision
        self.start_revision = self.delivered + 1

    def attached(self, header: ResponseHeader, now: float) -> None:
        """Now subscribed on a member whose ``status`` answered ``header``: read history
        from D+1 before anything live."""
        self.header = ResponseHeader(header.cluster_id, header.member_id, 0, header.raft_term)
        self.need_catchup = True
        self.catching = False
        self.last_msg_at = now
        self.probe_at = None

    def failing_over(self) -> None:
        """The member is silent or failing: the transport moves to another endpoint."""
        self.resumes += 1

    def hdr(self, revision: int) -> ResponseHeader:
        """A response header of the attached member at ``revision``."""
        h = self.header
        return ResponseHeader(h.cluster_id, h.member_id, revision, h.raft_term)

    # --- history -----------------------------------------------------------------------
    def history_request(self) -> dict[str, Any]:
        """The next page of history from D+1 (a ``history`` request map)."""
        if not self.catching:
            self.catching = True
            self.catchups += 1
        req: dict[str, Any] = {"op": "history", "key": self.key, "range_end": self.range_end,
                               "start_revision": self.delivered + 1,
                               "limit_revisions": HISTORY_PAGE_REVISIONS}
        if self.prev_kv:
            req["prev_kv"] = True
        if self.no_put:
            req["no_put"] = True
        if self.no_delete:
            req["no_delete"] = True
        return req

    def on_history(self, reply: dict[str, Any]) -> None:
        """A page of history: its revisions above D become ready; the hole is filled once
        a page says there is no more. Raises ``Internal`` for a reply that is not one."""
        try:
            groups = reply["revisions"]
            if not isinstance(groups, list):
                raise _Malformed("revisions is not a list")
            page: list[tuple[int, list[Event]]] = []
            last = self.delivered
            for group in groups:
                if not isinstance(group, dict):
                    raise _Malformed("a revision group is not a map")
                rev = _int(group, "revision")
                assert rev is not None
                if rev <= last:
                    continue
                page.append((rev, _events(group.get("events"))))
                last = rev
            last_revision = _int(reply, "last_revision")
            assert last_revision is not None
        except (_Malformed, KeyError, TypeError) as exc:
            raise Internal(f"malformed history reply: {exc}") from None
        for rev, events in page:
            self.ready.append(WatchResponse(self.hdr(rev), events))
        self.delivered = max(last, last_revision)
        if not reply.get("more"):
            self.need_catchup = self.catching = False

    def history_failed(self, exc: QkvError) -> str:
        """A history request failed: ``HIST_ENDED`` (compacted: the end is ready),
        ``HIST_RAISE`` (no retry can cure it: raise it) or ``HIST_FAILOVER``."""
        if exc.code == "compacted":
            details = exc.details if isinstance(exc.details, dict) else {}
            try:
                compact = int(details.get("compact_revision") or 0)
            except (TypeError, ValueError):
                compact = 0
            self.end(WatchResponse(self.hdr(self.delivered), canceled=True,
                                   compact_revision=compact, cancel_reason=exc.message))
            return HIST_ENDED
        if exc.code in FATAL_CODES:
            return HIST_RAISE
        return HIST_FAILOVER

    def end(self, resp: WatchResponse) -> None:
        """The last response: after it the watch is over."""
        self.ready.append(resp)
        self.done = True

    # --- live messages -------------------------------------------------------------------
    def heard(self, now: float) -> None:
        """Something arrived on this watch's channel: it is not silent."""
        self.last_msg_at = now
        self.probe_at = None

    def on_overflow(self) -> None:
        """The transport dropped live frames of this watch (its queue was full): a hole."""
        self.need_catchup = True

    def on_message(self, frames: list[bytes], now: float) -> None:
        """A live message ``[topic, payload]`` of this watch's channel (the consumer rule).
        Ignored while a hole is being filled: history covers everything sent before it."""
        if len(frames) != 2 or frames[0] != self.topic or self.need_catchup or self.done:
            return
        payload = frames[1]
        if not payload or payload[0] != 1:
            return  # another payload version: not for this client
        try:
            body = msgpack.unpackb(payload[1:], raw=False)
            if not isinstance(body, dict):
                raise _Malformed("not a map")
            self._apply(body, now)
        except Exception:  # undecodable or not SPEC's: a lost message, history fills it
            self.malformed += 1
            self.need_catchup = True

    def _apply(self, body: dict, now: float) -> None:
        if "progress_revision" in body:
            progress = _int(body, "progress_revision")
            last = _int(body, "last_event_revision", optional=True)
            assert progress is not None
            if last is None or last > self.delivered:
                self.need_catchup = True
                return
            if progress > self.delivered:
                self.delivered = progress
            due = self.progress_notify and now - self.progress_sent_at >= self.progress_interval_s
            if due or self.progress_wanted:
                self.progress_wanted = False
                self.progress_sent_at = now
                self.ready.append(WatchResponse(self.hdr(self.delivered), progress_notify=True))
            return
        rev = _int(body, "revision")
        assert rev is not None
        if rev <= self.delivered:
            return  # a duplicate (already delivered through history or earlier)
        prev = _int(body, "prev_revision", optional=True)
        if prev is None or prev > self.delivered:
            self.need_catchup = True  # a hole: (delivered, prev] may hold events
            return
        wire = body.get("events")
        if self.covering:
            if not isinstance(wire, list):
                raise _Malformed("events is not a list")
            wire = [e for e in wire if isinstance(e, dict) and isinstance(e.get("kv"), dict)
                    and in_range(e["kv"].get("key", b""), self.key, self.range_end)]
            if not wire:  # nothing of this range at rev: like a progress message
                self.delivered = rev
                return
        events = _events(wire)
        self.ready.append(WatchResponse(self.hdr(rev), events))
        self.delivered = rev

    # --- silence and progress --------------------------------------------------------
    def idle(self, now: float) -> str:
        """Nothing arrived: ``IDLE_WAIT``, ``IDLE_PROBE`` (a repeated subscribe is due:
        ``take_resubscribe``), ``IDLE_CATCH_UP`` (follow from history: under auth a covering
        channel wider than the user's permission is refused, so it stays silent) or
        ``IDLE_FAILOVER`` (the member did not answer the probe)."""
        if self.probe_at is None:
            if now - self.last_msg_at > SILENCE_S:
                self.probe_at = now
                self.resubscribe = True
                return IDLE_PROBE
            return IDLE_WAIT
        if now - self.probe_at <= PROBE_S:
            return IDLE_WAIT
        if self.covering and self.auth:
            self.last_msg_at, self.probe_at = now, None
            self.need_catchup = True
            return IDLE_CATCH_UP
        return IDLE_FAILOVER

    def take(self, inbox: Inbox, now: float) -> str:
        """Apply what ``inbox`` holds now: ``TOOK_FRAMES`` (messages applied),
        ``TOOK_CLOSED`` (the hub went away: the watch is over) or, when nothing came,
        what ``idle`` says."""
        batch = inbox.drain()
        if inbox.dropped != inbox.seen_dropped:
            inbox.seen_dropped = inbox.dropped
            self.on_overflow()
        if not batch:
            if inbox.closed:
                self.done = True
                return TOOK_CLOSED
            return self.idle(now)
        self.heard(now)
        for frames in batch:
            self.on_message(frames, now)
        return TOOK_FRAMES

    def request_progress(self) -> None:
        """Ask for a progress notification: a repeated subscribe, which the broadcaster
        answers with a progress message (the transport sends it: ``take_resubscribe``)."""
        self.progress_wanted = True
        self.resubscribe = True

    def take_resubscribe(self) -> bool:
        """Whether a repeated subscribe is due (and it is now taken)."""
        due, self.resubscribe = self.resubscribe, False
        return due
