"""Watch: follow a key range through a node's PUB/SUB channel, with etcd's guarantees.

The threaded transport of SPEC.md section 5's consumer, behind ``Client.watch``; the
protocol itself (D, the consumer rule, history catch-up, covering channels, silence ->
probe -> failover) is ``WatchState`` in watchcore.py, shared with the asyncio side.

Multiplexed: a ``Client`` has one SUB socket per endpoint (a *hub*), shared by all its
watchers attached to that endpoint, as etcd's clients multiplex every watch over one
stream (1,000 watches are 1 SUB, not 1,000: libzmq allows 1,023 sockets per context).
- the hub's thread owns the SUB (sockets are not thread-safe); watchers hand it
  subscribe/unsubscribe through a queue and an inproc wake socket. N watchers of one
  topic subscribe N times (libzmq counts them; the last unsubscribe goes upstream);
- the hub routes each message by its topic to the inboxes of that topic's watchers; an
  inbox is bounded (``rcvhwm`` frames): a full one drops the frame and marks a hole, which
  history fills, so a slow watcher never grows memory nor holds up the others;
- each watcher keeps its own D and applies the consumer rule in its own thread (the one
  iterating it); ``status`` and ``history`` go through the hub's one client for its
  endpoint (with the client's keys and token);
- failover moves one watcher to the hub of the next endpoint; the others stay. A hub that
  heard nothing at all during a watcher's probe is retired (the next attach makes a new
  SUB; its last watcher closes it);
- a hub closes when its last watcher leaves, or once the client is closed (its watchers
  then end: their iterator stops);
- under auth the SUB socket is a CURVE client with the client's key (authenticate
  registers it for the watch port: done again whenever a hub is made) and history
  requests carry the token. The broadcaster silently drops a subscription its user may
  not read, so a watch under auth asks ``history`` first (checked like a range) and
  raises ``PermissionDenied`` at once instead of waiting for events that never come.

One Watcher is used by one thread at a time (its iterator); ``cancel()`` and
``request_progress()`` may be called from any thread.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterator

import zmq

from protocol.client.core import reachable
from protocol.client.types import key_range
from protocol.client.watchcore import (  # noqa: F401  (re-exported: the protocol's names)
    FATAL_CODES, HIST_ENDED, HIST_RAISE, HISTORY_PAGE_REVISIONS, IDLE_FAILOVER, INBOX_FRAMES,
    MAX_TOPIC_KEY, PROBE_S, SILENCE_S, TOPIC_HEAD, Event, Inbox, Routes, WatchResponse, WatchState,
    covering_range, failover_pause, hub_install, hub_release, hub_retire, hub_use, in_range,
    parse_filters, watch_topic,
)
from protocol.errors import QkvError, Unavailable

_reachable = reachable  # the old private name (lease.py)

HUB_RCVHWM = 100_000     # the shared SUB's queue: the hub thread drains it into the inboxes
HUB_POLL_MS = 500        # the hub thread looks at its client (closed?) this often
HUB_BATCH = 1000         # frames routed per wake-up before looking at the queue of changes
ATTACH_TIMEOUT_S = 3.0   # status/history calls of a hub's client
_hub_ids = itertools.count(1)
_registry_lock = threading.Lock()  # every client's hub table and hub use counts


class _Inbox(Inbox):
    """An ``Inbox`` whose watcher thread sleeps until the hub's thread puts a frame."""

    __slots__ = ("wake",)

    def __init__(self, bound: int) -> None:
        super().__init__(bound)
        self.wake = threading.Event()

    def put(self, frames: list[bytes]) -> None:
        super().put(frames)
        self.wake.set()

    def wait(self, timeout: float) -> None:
        """Until something is there, or the hub goes, or ``timeout`` s."""
        if not self.frames and not self.closed and timeout > 0:
            self.wake.wait(timeout)
        self.wake.clear()


class _Hub:
    """One SUB socket on one endpoint's watch URL, shared by a client's watchers there."""

    def __init__(self, client: Any, endpoint: str, ep_client: Any, url: str) -> None:
        self.endpoint, self.url, self.ep_client = endpoint, url, ep_client
        self.users = 0            # watchers attached (under _registry_lock)
        self.stopping = False
        self.last_rx = time.monotonic()  # when the SUB last delivered anything
        self._client = weakref.ref(client)
        self._lock = threading.Lock()   # the change queue and the wake socket's sending end
        self._ops: collections.deque[tuple[str, bytes, _Inbox | None]] = collections.deque()
        self._routes = Routes()  # the hub thread's only
        ctx: zmq.Context = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        wake_rx = ctx.socket(zmq.PAIR)
        wake_tx = ctx.socket(zmq.PAIR)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            ep_client._security.configure(sub)  # CURVE with the client's key when security is on
            sub.setsockopt(zmq.RCVHWM, HUB_RCVHWM)
            sub.connect(url)
            addr = f"inproc://qkv-watch-hub-{next(_hub_ids)}-{id(self):x}"
            for s in (wake_rx, wake_tx):
                s.setsockopt(zmq.LINGER, 0)
            wake_rx.bind(addr)
            wake_tx.connect(addr)
        except zmq.ZMQError as exc:
            for s in (sub, wake_rx, wake_tx):
                s.close(linger=0)
            raise QkvError(f"cannot open the watch socket for {url}: {exc}") from None
        self._sub, self._wake_rx, self._wake_tx = sub, wake_rx, wake_tx
        self._thread = threading.Thread(target=self._run, name=f"qkv-watch-hub {endpoint}", daemon=True)
        self._thread.start()

    # --- any thread ------------------------------------------------------------------
    def _request(self, op: str, topic: bytes, inbox: _Inbox | None = None) -> None:
        with self._lock:
            if self.stopping:
                if inbox is not None and op == "add":
                    inbox.closed = True
                    inbox.wake.set()
                return
            self._ops.append((op, topic, inbox))
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # wake-ups are pending already

    def add(self, topic: bytes, inbox: _Inbox) -> None:
        """Route ``topic``'s messages to ``inbox`` (and subscribe once more to it)."""
        self._request("add", topic, inbox)

    def remove(self, topic: bytes, inbox: _Inbox) -> None:
        """Stop routing ``topic`` to ``inbox`` (and take back one subscribe)."""
        self._request("remove", topic, inbox)

    def resubscribe(self, topic: bytes) -> None:
        """A repeated subscribe to ``topic``: the broadcaster answers with progress."""
        self._request("resub", topic)

    def close(self) -> None:
        """Stop the thread; it closes the sockets and ends its watchers' inboxes."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    # --- the hub's thread ----------------------------------------------------------------
    def _apply_ops(self) -> None:
        sub, routes = self._sub, self._routes
        while True:
            with self._lock:
                if not self._ops:
                    return
                op, topic, inbox = self._ops.popleft()
            if op == "add":
                assert inbox is not None
                routes.add(topic, inbox)
                sub.subscribe(topic)
            elif op == "remove":
                assert inbox is not None
                if routes.remove(topic, inbox):
                    sub.unsubscribe(topic)
            elif topic in routes.by_topic:  # "resub"
                sub.subscribe(topic)
                sub.unsubscribe(topic)

    def _client_closed(self) -> bool:
        client = self._client()
        return client is None or bool(getattr(client, "_closed", False))

    def _run(self) -> None:
        sub, wake_rx, routes = self._sub, self._wake_rx, self._routes
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
        try:
            while not self.stopping:
                ready = dict(poller.poll(HUB_POLL_MS))
                if wake_rx in ready:
                    while True:
                        try:
                            wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._apply_ops()
                if sub in ready:
                    for _ in range(HUB_BATCH):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        routes.dispatch(frames)
                    self.last_rx = time.monotonic()
                if self._client_closed():
                    _forget_hub(self)
                    break
        finally:
            with self._lock:
                self.stopping = True
                for inbox in routes.close():
                    assert isinstance(inbox, _Inbox)
                    inbox.wake.set()
                for _op, _topic, pending in self._ops:
                    if pending is not None:
                        pending.closed = True
                        pending.wake.set()
                self._ops.clear()
                for s in (sub, wake_rx, self._wake_tx):
                    s.close(linger=0)
            # (its client is closed by the last watcher out: one may be using it now)


# --- a client's hubs -----------------------------------------------------------------------
def _hubs(client: Any) -> dict[str, _Hub]:
    """The client's hub table (under _registry_lock). After a fork the child starts an
    empty one: the parent's hub threads are not in it, and their sockets are not touched."""
    d = client.__dict__
    if d.get("_watch_hubs_pid") != os.getpid():
        d["_watch_hubs"], d["_watch_hubs_pid"] = {}, os.getpid()
    hubs: dict[str, _Hub] = d["_watch_hubs"]
    return hubs


def _acquire_hub(client: Any, endpoint: str) -> tuple[_Hub, Any]:
    """The client's hub on ``endpoint`` (made when there is none, which asks ``status``
    there first) and one use of it; with the status when it was just made (else None)."""
    if getattr(client, "_closed", False):
        raise Unavailable("the client is closed")
    with _registry_lock:
        hub = hub_use(_hubs(client), endpoint)
    if hub is not None:
        return hub, None
    ep_client = client._derive([endpoint], timeout=min(client.timeout, ATTACH_TIMEOUT_S))
    try:
        sec = ep_client._security
        if sec.curve and sec.user:
            # The watch port knows this client's key from its last authenticate, for one
            # token TTL after it (SPEC "Security"): authenticate again for every new SUB,
            # so a watch that reconnects after hours is still recognized.
            sec.refresh(ep_client, sec._gen)
        st = ep_client.status()
        urls = getattr(st, "watch_urls", None) or []
        if not urls:
            raise QkvError(f"{endpoint} advertises no watch url")
        made = _Hub(client, endpoint, ep_client, reachable(str(urls[0]), endpoint))
    except BaseException:
        ep_client.close()
        raise
    with _registry_lock:
        hub = hub_install(_hubs(client), made)
    if hub is not made:  # another thread made one meanwhile: that one is used
        made.close()
        made.ep_client.close()
        return hub, None
    return hub, st


def _release_hub(client: Any, hub: _Hub) -> None:
    """One use of ``hub`` less; the last one closes it."""
    with _registry_lock:
        last = hub_release(_hubs(client), hub)
    if last:
        hub.close()
        hub.ep_client.close()


def _retire_hub(client: Any, hub: _Hub) -> None:
    """``hub`` seems dead: the next attach to its endpoint makes a new one."""
    with _registry_lock:
        hub_retire(_hubs(client), hub)


def _drop_orphan(client: Any, topic: bytes, held: list[Any]) -> None:
    """A watcher dropped without ``cancel()`` (its finalizer): its subscription and its
    use of the hub go, as its own SUB socket used to with it."""
    hub, inbox = held
    held[:] = [None, None]
    if hub is not None:
        hub.remove(topic, inbox)
        _release_hub(client, hub)


def _forget_hub(hub: _Hub) -> None:
    """Take ``hub`` out of its client's table (the client was closed)."""
    client = hub._client()
    if client is not None:
        _retire_hub(client, hub)


def close_hubs(client: Any) -> None:
    """Close every watch hub of ``client`` (``Client.close`` calls it): their watchers end
    (each closes the hub's endpoint client as it leaves). A hub also notices by itself,
    within HUB_POLL_MS."""
    with _registry_lock:
        table = _hubs(client)
        hubs = list(table.values())
        table.clear()
    for hub in hubs:
        hub.close()


def hub_count(client: Any) -> int:
    """How many watch hubs (SUB sockets) ``client`` has open now (for tests and stats)."""
    with _registry_lock:
        return sum(1 for h in _hubs(client).values() if not h.stopping)


class Watcher:
    """Iterate it for ``WatchResponse``s (one per revision, or a progress notification)."""

    def __init__(self, client: Any, key: Any, range_end: Any = None, *, prefix: bool = False,
                 start_revision: int = 0, prev_kv: bool = False, filters: tuple = (),
                 progress_notify: bool = False, progress_interval_s: float = 0.0,
                 rcvhwm: int = INBOX_FRAMES, rcvbuf: int = -1) -> None:
        """``progress_notify``: deliver progress notifications (bookmarks), at most one per
        ``progress_interval_s`` (0 = each one the broadcaster sends: every ~0.2 s while
        revisions are made, every 2 s when idle). ``rcvhwm``: this watcher's queue of live
        frames (a small one loses messages sooner; history fills the holes). ``rcvbuf`` is
        accepted for compatibility: the kernel buffer belongs to the client's shared SUB."""
        k, end = key_range(key, range_end, prefix=prefix)
        no_put, no_delete = parse_filters(filters)
        sec = getattr(client, "_security", None)
        self._state = WatchState(k, end, prev_kv=prev_kv, no_put=no_put, no_delete=no_delete,
                                 progress_notify=progress_notify,
                                 progress_interval_s=progress_interval_s,
                                 auth=sec is not None and bool(sec.user))
        self.key, self.range_end, self.topic = k, end, self._state.topic
        self.prev_kv, self.no_put, self.no_delete = prev_kv, no_put, no_delete
        self.covering = self._state.covering
        self._client = client
        self._endpoints: list[str] = list(client.endpoints)
        self._idx = client._preferred % len(self._endpoints)
        self._inbox = _Inbox(rcvhwm)
        self._hub: _Hub | None = None
        self._held: list[Any] = [None, None]  # [hub, inbox] for the finalizer
        weakref.finalize(self, _drop_orphan, client, self.topic, self._held)
        self._lock = threading.Lock()  # attach/detach
        self._iterating = 0  # threads inside get(): only they attach and detach
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        status_rev = self._attach_any()
        self._state.begin(start_revision, status_rev)
        if self._state.auth:
            # Under auth: the first catch-up page now, so that a range the user may not
            # read raises PermissionDenied here (the watch port would just stay silent).
            try:
                self._catch_up()
            except QkvError:
                self._detach()
                raise

    # --- what the state knows -------------------------------------------------------
    @property
    def delivered(self) -> int:
        """D: every matching event <= it has been delivered, none above it."""
        return self._state.delivered

    @property
    def start_revision(self) -> int:
        """The first revision this watch delivers."""
        return self._state.start_revision

    @property
    def resumes(self) -> int:
        """Times it moved to another endpoint."""
        return self._state.resumes

    @property
    def catchups(self) -> int:
        """History catch-ups after a hole."""
        return self._state.catchups

    # --- attaching to a node -------------------------------------------------------
    def _attach_any(self) -> int:
        """Attach to the first endpoint that answers ``status``, starting at the current
        one; its revision. Raises the last error when none answers."""
        last_err: QkvError | None = None
        for i in range(len(self._endpoints)):
            idx = (self._idx + i) % len(self._endpoints)
            try:
                return self._attach(idx)
            except QkvError as exc:
                last_err = exc
        assert last_err is not None
        raise last_err

    def _attach(self, idx: int) -> int:
        self._detach()
        endpoint = self._endpoints[idx]
        hub, st = _acquire_hub(self._client, endpoint)
        try:
            if st is None:
                st = hub.ep_client.status()
        except BaseException:
            _release_hub(self._client, hub)
            raise
        with self._lock:
            if self._cancel.is_set():
                _release_hub(self._client, hub)
                return int(st.header.revision)
            self._state.attached(st.header, time.monotonic())
            self._inbox = _Inbox(self._inbox.bound)  # nothing from the last member is kept
            hub.add(self.topic, self._inbox)
            self._hub, self._idx = hub, idx
            self._held[:] = [hub, self._inbox]
        return int(st.header.revision)

    def _detach(self) -> None:
        with self._lock:
            hub, self._hub = self._hub, None
            self._held[:] = [None, None]
        if hub is not None:
            hub.remove(self.topic, self._inbox)
            _release_hub(self._client, hub)

    def _fail_over(self) -> None:
        """The node is silent or failing: resume on the next endpoint that answers."""
        self._state.failing_over()
        self._idx = (self._idx + 1) % len(self._endpoints)
        rounds = 0
        # as etcd's watcher: retry until canceled (or the client is closed)
        while not self._cancel.is_set() and not getattr(self._client, "_closed", False):
            try:
                self._attach_any()
                return
            except QkvError:
                rounds += 1
                self._cancel.wait(failover_pause(rounds))
        self._state.done = True

    # --- the protocol --------------------------------------------------------------
    def _catch_up(self) -> None:
        """One page of history from D+1 (the caller drains the ready queue between pages)."""
        hub = self._hub
        assert hub is not None
        self._state.on_history(hub.ep_client._call(self._state.history_request(), write=False))

    def _step(self, timeout_s: float) -> None:
        """Receive what is there (waiting at most timeout_s) into the ready queue."""
        state, hub = self._state, self._hub
        if hub is None:
            self._fail_over()
            return
        if state.need_catchup:
            try:
                self._catch_up()
            except QkvError as exc:
                what = state.history_failed(exc)
                if what == HIST_RAISE:
                    raise  # the caller's mistake, a server without `history`, or a refusal
                if what != HIST_ENDED:
                    self._fail_over()
            return
        if state.take_resubscribe():
            hub.resubscribe(self.topic)
        self._inbox.wait(timeout_s)
        now = time.monotonic()
        if state.take(self._inbox, now) == IDLE_FAILOVER:
            if hub.last_rx < (state.probe_at or now):
                _retire_hub(self._client, hub)  # it heard nothing at all: a dead SUB
            self._fail_over()
        elif state.take_resubscribe():  # the probe
            hub.resubscribe(self.topic)

    # --- public API ----------------------------------------------------------------
    def get(self, timeout: float | None = None) -> WatchResponse | None:
        """The next response; None when ``timeout`` passes first. Raises StopIteration
        once the watch is over (canceled, ended by compaction, or its client closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._state
        self._iterating += 1
        stepped = False
        try:
            while True:
                if state.ready:
                    return state.ready.popleft()
                if state.done or self._cancel.is_set():
                    self._close()
                    raise StopIteration
                remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
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
        repeated subscribe, which the broadcaster answers with a progress message; any
        thread may call it."""
        self._state.request_progress()
        self._inbox.wake.set()

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
        """End the watch: its iterator stops; its subscription is taken back (the other
        watchers of the client are not disturbed). Any thread may call it."""
        self._cancel.set()
        self._inbox.wake.set()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                self._thread.join(5)
        elif not self._iterating:
            self._close()
        # else: the thread inside get() wakes up and detaches

    close = cancel

    def _close(self) -> None:
        self._state.done = True
        self._detach()

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()

