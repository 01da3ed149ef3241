"""Watch: follow a key range through a node's PUB/SUB channel, with etcd's guarantees.

The consumer side of SPEC.md section 5, hidden behind ``Client.watch``:
- subscribe FIRST (a SUB socket on the node's watch URL, topic = the channel), then
  read history from the start revision over the client DEALER (``history`` op), then
  the live messages, dropping revisions already delivered;
- ``delivered`` = D: every matching event <= D has been delivered, nothing above D has.
  A live message at revision r with ``prev_revision`` p is delivered when p <= D (then
  D = r); r <= D is a duplicate; p > D means a hole: catch up from history [D+1, ...].
  A progress message (R, L) with L <= D moves D to R; L > D is a hole as well;
- never delivers a revision <= D, whatever the node says (etcd bug #15271);
- a key or range_end longer than MAX_TOPIC_KEY (256) bytes is watched through its
  *covering* channel (``covering_range``: bounds cut to 256 bytes, a range that holds the
  watched one), whose events are filtered to the watched range; a revision with no event
  left after filtering moves D like a progress message (SPEC section 5, "Long keys").
  So no topic is ever long (libzmq's SUB crashes on topics of 256 KiB or more). A
  covering channel the user may not read (auth) is refused, so the live path stays
  silent: the watcher then follows the range from ``history`` after each silence;
- silence (no message, not even the broadcaster's heartbeat) makes it ask for progress,
  then move to the next endpoint and resume from D+1: no gap, no duplicate;
- a compacted start (or hole) ends the watch with ``canceled`` and ``compact_revision``;
- under auth the history requests carry the client's token and the SUB socket is a CURVE
  client with the client's key (the one ``authenticate`` registered for the watch port).
  The broadcaster silently drops a subscription its user may not read, so the watcher
  asks ``history`` first (checked like a range) and raises ``PermissionDenied`` at once
  instead of waiting for events that never come.

One Watcher is used by one thread at a time (its iterator); ``cancel()`` may be called
from any thread.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack
import zmq

from protocol.client.types import FROM_KEY_END, KeyValue, ResponseHeader, key_range, prefix_end
from protocol.errors import QkvError

TOPIC_HEAD = b"W1"
FLAG_PREV_KV, FLAG_NO_PUT, FLAG_NO_DELETE = 1, 2, 4
MAX_TOPIC_KEY = 256      # SPEC section 5: a channel's key and range_end are at most this long
SILENCE_S = 5.0          # no message for this long: ask the broadcaster for progress
PROBE_S = 2.0            # and no answer this long after: move to another endpoint
HISTORY_PAGE_REVISIONS = 5000
# history errors that no other endpoint or retry can cure: raised to the caller.
FATAL_CODES = frozenset({"unknown_op", "invalid_argument", "key_not_provided", "malformed",
                         "permission_denied", "auth_failed", "user_empty", "invalid_auth_token",
                         "auth_old_revision"})


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


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    return key >= start and (end == FROM_KEY_END or key < end)


def _reachable(watch_url: str, client_endpoint: str) -> str:
    """A watch URL bound to every interface (``0.0.0.0``, ``*``) is reached at the host
    the client endpoint names."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"):
        if watch_url.startswith(wildcard) and client_endpoint.startswith("tcp://"):
            host = client_endpoint[len("tcp://"):].rsplit(":", 1)[0]
            return f"tcp://{host}:{watch_url[len(wildcard):]}"
    return watch_url


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @classmethod
    def from_wire(cls, wire: dict) -> "Event":
        prev = wire.get("prev_kv")
        return cls(wire["type"], KeyValue.from_wire(wire["kv"]),
                   KeyValue.from_wire(prev) if prev else None)


@dataclass(slots=True)
class WatchResponse:
    header: ResponseHeader
    events: list[Event] = field(default_factory=list)
    compact_revision: int = 0
    canceled: bool = False
    progress_notify: bool = False
    cancel_reason: str = ""

    @property
    def revision(self) -> int:
        return self.header.revision


class Watcher:
    """Iterate it for ``WatchResponse``s (one per revision, or a progress notification)."""

    def __init__(self, client: Any, key: Any, range_end: Any = None, *, prefix: bool = False,
                 start_revision: int = 0, prev_kv: bool = False, filters: tuple = (),
                 progress_notify: bool = False, progress_interval_s: float = 0.0,
                 rcvhwm: int = 10_000, rcvbuf: int = -1) -> None:
        """``progress_notify``: deliver progress notifications (bookmarks), at most one per
        ``progress_interval_s`` (0 = each one the broadcaster sends: every ~0.2 s while
        revisions are made, every 2 s when idle). ``rcvhwm``/``rcvbuf``: the SUB
        socket's queue (a small one loses messages sooner; history fills the holes)."""
        self.key, self.range_end = key_range(key, range_end, prefix=prefix)
        flt = {str(f).upper().replace("-", "_") for f in filters}
        unknown = flt - {"NOPUT", "NO_PUT", "NODELETE", "NO_DELETE"}
        if unknown:
            raise ValueError(f"unknown watch filters: {sorted(unknown)}")
        self.no_put = bool(flt & {"NOPUT", "NO_PUT"})
        self.no_delete = bool(flt & {"NODELETE", "NO_DELETE"})
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.progress_interval_s = progress_interval_s
        self._progress_sent_at = 0.0
        ckey, cend = covering_range(self.key, self.range_end)
        # A covering channel sends more than this range: its events are filtered.
        self.covering = (ckey, cend) != (self.key, self.range_end)
        self.topic = watch_topic(ckey, cend, prev_kv=prev_kv, no_put=self.no_put,
                                 no_delete=self.no_delete)
        self._client = client
        self._endpoints: list[str] = list(client.endpoints)
        self._timeout = client.timeout
        self._idx = client._preferred % len(self._endpoints)
        self._rcvhwm, self._rcvbuf = rcvhwm, rcvbuf
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self._ep_client: Any = None
        self._header = ResponseHeader()
        self._ready: collections.deque[WatchResponse] = collections.deque()
        self._need_catchup = True
        self._catching = False
        self._last_msg_at = time.monotonic()
        self._probe_at: float | None = None
        self._progress_wanted = False
        self._resubscribe = False
        self._iterating = 0  # threads inside get(): only they touch the sockets
        self._cancel = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None
        self.resumes = 0  # times it moved to another endpoint (for tests and logs)
        self.catchups = 0  # history catch-ups after a hole
        status_rev = self._attach_any()
        if start_revision and start_revision > 0:
            self.delivered = start_revision - 1
        else:
            self.delivered = status_rev  # etcd: "from now" = current revision + 1
        self.start_revision = self.delivered + 1  # the first revision this watch delivers
        if getattr(client, "_security", None) is not None and client._security.user:
            # Under auth: the first catch-up page now, so that a range the user may not
            # read raises PermissionDenied here (the watch port would just stay silent).
            try:
                self._catch_up()
            except QkvError:
                self._detach()
                raise

    # --- attaching to a node -------------------------------------------------------
    def _attach_any(self) -> int:
        """Attach to the first endpoint that answers ``status``, starting at the current
        one; its revision. Raises the last error when none answers."""
        last_err: Exception | None = None
        for i in range(len(self._endpoints)):
            idx = (self._idx + i) % len(self._endpoints)
            try:
                rev = self._attach(idx)
                return rev
            except QkvError as exc:
                last_err = exc
        assert last_err is not None
        raise last_err

    def _attach(self, idx: int) -> int:
        self._detach()
        client = self._client._derive([self._endpoints[idx]], timeout=min(self._timeout, 3.0))
        sec = client._security
        try:
            if sec.curve and sec.user:
                # The watch port knows this client's key from its last authenticate, for one
                # token TTL after it (SPEC "Security"): authenticate again on every attach,
                # so a watch that reconnects after hours is still recognized.
                sec.refresh(client, sec._gen)
            st = client.status()
        except QkvError:
            client.close()
            raise
        urls = st.watch_urls if hasattr(st, "watch_urls") else []
        if not urls:
            client.close()
            raise QkvError(f"{self._endpoints[idx]} advertises no watch url")
        url = _reachable(urls[0], self._endpoints[idx])
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        client._security.configure(sub)  # CURVE with the client's key when security is on
        sub.setsockopt(zmq.RCVHWM, self._rcvhwm)
        sub.setsockopt(zmq.RCVBUF, self._rcvbuf)
        sub.connect(url)
        sub.subscribe(self.topic)
        self._sub, self._ep_client, self._idx = sub, client, idx
        self._header = ResponseHeader(st.header.cluster_id, st.header.member_id, 0, st.header.raft_term)
        self._need_catchup = True
        self._catching = False
        self._last_msg_at = time.monotonic()
        self._probe_at = None
        return st.header.revision

    def _detach(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close(linger=0)
        client, self._ep_client = self._ep_client, None
        if client is not None:
            client.close()

    def _fail_over(self) -> None:
        """The node is silent or failing: resume on the next endpoint that answers."""
        self.resumes += 1
        self._idx = (self._idx + 1) % len(self._endpoints)
        pause = 0.1
        while not self._cancel.is_set():  # as etcd's watcher: retry until canceled
            try:
                self._attach_any()
                return
            except QkvError:
                time.sleep(pause)
                pause = min(1.0, pause * 2)

    # --- the protocol --------------------------------------------------------------
    def _hdr(self, revision: int) -> ResponseHeader:
        h = self._header
        return ResponseHeader(h.cluster_id, h.member_id, revision, h.raft_term)

    def _catch_up(self) -> None:
        """One page of history from delivered+1; the hole is filled once a page says
        there is no more (the caller drains the ready queue between pages)."""
        if not self._catching:
            self._catching = True
            self.catchups += 1
        req = {"op": "history", "key": self.key, "range_end": self.range_end,
               "start_revision": self.delivered + 1,
               "limit_revisions": HISTORY_PAGE_REVISIONS}
        if self.prev_kv:
            req["prev_kv"] = True
        if self.no_put:
            req["no_put"] = True
        if self.no_delete:
            req["no_delete"] = True
        reply = self._ep_client._call(req, write=False)
        for group in reply["revisions"]:
            rev = group["revision"]
            if rev <= self.delivered:
                continue
            self._ready.append(WatchResponse(self._hdr(rev),
                                             [Event.from_wire(e) for e in group["events"]]))
            self.delivered = rev
        self.delivered = max(self.delivered, int(reply["last_revision"]))
        if not reply.get("more"):
            self._need_catchup = self._catching = False

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[0] != self.topic:
            return
        payload = frames[1]
        if not payload or payload[0] != 1:
            return
        body = msgpack.unpackb(payload[1:], raw=False)
        if "progress_revision" in body:
            progress = int(body["progress_revision"])
            last = body.get("last_event_revision")
            if last is None or last > self.delivered:
                self._need_catchup = True
                return
            if progress > self.delivered:
                self.delivered = progress
            now = time.monotonic()
            due = self.progress_notify and now - self._progress_sent_at >= self.progress_interval_s
            if due or self._progress_wanted:
                self._progress_wanted = False
                self._progress_sent_at = now
                self._ready.append(WatchResponse(self._hdr(self.delivered), progress_notify=True))
            return
        rev = int(body["revision"])
        if rev <= self.delivered:
            return  # a duplicate (already delivered through history or earlier)
        prev = body.get("prev_revision")
        if prev is None or prev > self.delivered:
            self._need_catchup = True  # a hole: (delivered, prev] may hold events
            return
        events = body["events"]
        if self.covering:
            events = [e for e in events if _in_range(e["kv"]["key"], self.key, self.range_end)]
            if not events:  # nothing of this range at rev: like a progress message
                self.delivered = rev
                return
        self._ready.append(WatchResponse(self._hdr(rev), [Event.from_wire(e) for e in events]))
        self.delivered = rev

    def _step(self, timeout_s: float) -> None:
        """Receive what is there (waiting at most timeout_s) into the ready queue."""
        if self._need_catchup:
            try:
                self._catch_up()
            except QkvError as exc:
                if exc.code == "compacted":
                    self._end(WatchResponse(self._hdr(self.delivered), canceled=True,
                                            compact_revision=int(exc.details.get("compact_revision") or 0),
                                            cancel_reason=exc.message))
                    return
                if exc.code in FATAL_CODES:
                    raise  # the caller's mistake, a server without `history`, or a refusal: no retry helps
                self._fail_over()
            return
        sub = self._sub
        assert sub is not None
        if self._resubscribe:
            # A repeated subscribe: the broadcaster answers with a progress message.
            self._resubscribe = False
            sub.subscribe(self.topic)
            sub.unsubscribe(self.topic)
        if not sub.poll(int(timeout_s * 1000)):
            now = time.monotonic()
            if self._probe_at is None and now - self._last_msg_at > SILENCE_S:
                self._probe_at = now
                self._resubscribe = True
            elif self._probe_at is not None and now - self._probe_at > PROBE_S:
                sec = getattr(self._client, "_security", None)
                if self.covering and sec is not None and sec.user:
                    # Under auth a covering channel wider than the user's permission is
                    # refused (no message ever comes): follow the range from history,
                    # which is checked for the range itself, once per silence.
                    self._last_msg_at, self._probe_at = now, None
                    self._need_catchup = True
                    return
                self._fail_over()
            return
        self._last_msg_at = time.monotonic()
        self._probe_at = None
        for _ in range(1000):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_message(frames)
            if self._need_catchup:
                break

    def _end(self, resp: WatchResponse) -> None:
        self._ready.append(resp)
        self._done = True

    # --- public API ----------------------------------------------------------------
    def get(self, timeout: float | None = None) -> WatchResponse | None:
        """The next response; None when ``timeout`` passes first. Raises StopIteration
        once the watch is over (canceled, or ended by compaction)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._iterating += 1
        stepped = False
        try:
            while True:
                if self._ready:
                    return self._ready.popleft()
                if self._done or self._cancel.is_set():
                    self._close()
                    raise StopIteration
                remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if remaining <= 0:
                    if stepped:
                        return None
                    remaining = 0  # timeout 0: take what has arrived, without waiting
                self._step(remaining)
                stepped = True
        finally:
            self._iterating -= 1

    def __iter__(self) -> Iterator[WatchResponse]:
        return self

    def __next__(self) -> WatchResponse:
        resp = self.get()
        assert resp is not None
        return resp

    def events(self) -> Iterator[Event]:
        """Every event, one at a time."""
        for resp in self:
            yield from resp.events

    def request_progress(self) -> None:
        """Ask for a progress notification (etcd's RequestProgress). It is sent as a
        repeated subscribe, which the broadcaster answers with a progress message; the
        iterating thread does it (sockets are not thread-safe), so any thread may call."""
        self._progress_wanted = True
        self._resubscribe = True

    def start(self, callback: Callable[[WatchResponse], Any]) -> "Watcher":
        """Deliver every response to ``callback`` from a background thread."""
        def run() -> None:
            try:
                for resp in self:
                    callback(resp)
            finally:
                self._close()

        self._thread = threading.Thread(target=run, name="qkv-watch", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                self._thread.join(5)
        elif not self._iterating:
            self._close()
        # else: the thread inside get() closes the sockets within 0.2 s

    close = cancel

    def _close(self) -> None:
        self._done = True
        self._detach()

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()
