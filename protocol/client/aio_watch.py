"""``AsyncWatcher``: the watch of ``AsyncClient`` (asyncio), with the threaded
``Watcher``'s guarantees and the same protocol: ``WatchState`` (watchcore.py) holds D, the
consumer rule, history catch-up, covering channels and the silence -> probe -> failover
policy; this module only moves frames and replies and waits.

Multiplexed as the threaded one (watch.py): an ``AsyncClient`` has one SUB socket per
endpoint (a hub: a task reading a ``zmq.asyncio`` SUB and routing each message by topic to
the bounded inboxes of that topic's watchers, ``watchcore.Routes``), shared by all its
watchers there, with one endpoint client for ``status``/``history``. Everything runs on
the client's one event loop, so subscribe/unsubscribe are plain calls on the socket. A
full inbox drops the frame and marks a hole (history fills it); failover moves one
watcher to the next endpoint's hub; a hub closes with its last watcher or once the client
is closed (its watchers then end).

Usage::

    async with client.watch("k/", prefix=True) as w:   # or: w = await client.watch(...)
        async for resp in w:
            ...
    resp = await w.get(timeout=1.0)   # None when nothing came in time
    w.cancel()                        # plain def, from any task of the loop
    await w.aclose()
"""
from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any, AsyncIterator, Callable

import zmq
import zmq.asyncio

from protocol.client.core import reachable
from protocol.client.types import key_range
from protocol.client.watchcore import (
    HIST_ENDED, HIST_RAISE, IDLE_FAILOVER, INBOX_FRAMES, Event, Inbox, Routes, WatchResponse,
    WatchState, failover_pause, hub_install, hub_release, hub_retire, hub_use, parse_filters,
)
from protocol.errors import QkvError, Timeout, Unavailable

HUB_RCVHWM = 100_000     # the shared SUB's queue: the hub task drains it into the inboxes
HUB_POLL_MS = 500        # the hub task looks at its client (closed?) this often
HUB_BATCH = 1000         # frames routed before yielding to the loop
ATTACH_TIMEOUT_S = 3.0   # status/history calls of a hub's client
_background: set[asyncio.Task[Any]] = set()  # closes in flight (a task must be referenced)


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


class _AsyncInbox(Inbox):
    """An ``Inbox`` whose watcher task sleeps until the hub task puts a frame."""

    __slots__ = ("wake",)

    def __init__(self, bound: int) -> None:
        super().__init__(bound)
        self.wake = asyncio.Event()

    def put(self, frames: list[bytes]) -> None:
        super().put(frames)
        self.wake.set()

    async def wait(self, timeout: float) -> None:
        """Until something is there, or the hub goes, or ``timeout`` s."""
        if not self.frames and not self.closed and timeout > 0:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        self.wake.clear()


class _AsyncHub:
    """One SUB socket on one endpoint's watch URL, shared by a client's watchers there."""

    def __init__(self, client: Any, endpoint: str, ep_client: Any, url: str) -> None:
        self.endpoint, self.url, self.ep_client = endpoint, url, ep_client
        self.users = 0
        self.stopping = False
        self._client = client
        self._loop = asyncio.get_running_loop()
        self.last_rx = self._loop.time()  # when the SUB last delivered anything
        self.routes = Routes()
        sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            ep_client._security.configure(sub)  # CURVE with the client's key when security is on
            sub.setsockopt(zmq.RCVHWM, HUB_RCVHWM)
            sub.connect(url)
        except zmq.ZMQError as exc:
            sub.close(linger=0)
            raise QkvError(f"cannot open the watch socket for {url}: {exc}") from None
        self.sub = sub
        self.task = self._loop.create_task(self._run(), name=f"qkv-watch-hub {endpoint}")
        self.task.add_done_callback(self._finish)  # (runs even if canceled before it ran)

    def add(self, topic: bytes, inbox: Inbox) -> None:
        """Route ``topic``'s messages to ``inbox`` (and subscribe once more to it)."""
        if self.stopping:
            inbox.closed = True
            return
        self.routes.add(topic, inbox)
        self.sub.subscribe(topic)

    def remove(self, topic: bytes, inbox: Inbox) -> None:
        """Stop routing ``topic`` to ``inbox`` (and take back one subscribe)."""
        if not self.stopping and self.routes.remove(topic, inbox):
            self.sub.unsubscribe(topic)

    def resubscribe(self, topic: bytes) -> None:
        """A repeated subscribe to ``topic``: the broadcaster answers with progress."""
        if not self.stopping and topic in self.routes.by_topic:
            self.sub.subscribe(topic)
            self.sub.unsubscribe(topic)

    def close(self) -> None:
        """Stop the task; it closes the socket and ends its watchers' inboxes."""
        if not self.stopping:
            self.stopping = True
            self.task.cancel()

    async def _run(self) -> None:
        sub, routes = self.sub, self.routes
        while not self.stopping:
            if await sub.poll(HUB_POLL_MS, zmq.POLLIN):  # type: ignore[call-arg]
                for _ in range(HUB_BATCH):
                    try:
                        frames = await sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    routes.dispatch(frames)
                self.last_rx = self._loop.time()
                await asyncio.sleep(0)  # let the watchers run between batches
            if self._client._closed:
                hub_retire(_hubs(self._client), self)
                return

    def _finish(self, _task: Any) -> None:
        self.stopping = True
        for inbox in self.routes.close():
            if isinstance(inbox, _AsyncInbox):
                inbox.wake.set()
        self.sub.close(linger=0)
        # (its client is closed by the last watcher out: one may be using it now)


def _hubs(client: Any) -> dict[str, _AsyncHub]:
    hubs: dict[str, _AsyncHub] = client.__dict__.setdefault("_watch_hubs", {})
    return hubs


async def _acquire_hub(client: Any, endpoint: str) -> tuple[_AsyncHub, Any]:
    """The client's hub on ``endpoint`` (made when there is none, which asks ``status``
    there first) and one use of it; with the status when it was just made (else None)."""
    if client._closed:
        raise Unavailable("the client is closed")
    hub = hub_use(_hubs(client), endpoint)
    if hub is not None:
        return hub, None
    ep_client = client._derive([endpoint], timeout=min(client.timeout, ATTACH_TIMEOUT_S))
    try:
        sec = ep_client._security
        if sec.curve and sec.user:
            # The watch port knows this client's key from its last authenticate (see
            # watch.py): authenticate again for every new SUB.
            loop = ep_client._bind()  # (a client derived just now has not run a call yet)
            await ep_client._token(loop.time() + ep_client.timeout, sec.current()[1])
        st = await ep_client.status()
        urls = getattr(st, "watch_urls", None) or []
        if not urls:
            raise QkvError(f"{endpoint} advertises no watch url")
        made = _AsyncHub(client, endpoint, ep_client, reachable(str(urls[0]), endpoint))
    except BaseException:
        await ep_client.close()
        raise
    hub = hub_install(_hubs(client), made)
    if hub is not made:  # another task made one meanwhile: that one is used
        made.close()
        await made.ep_client.close()
        return hub, None
    return hub, st


def _release_hub(client: Any, hub: _AsyncHub) -> None:
    """One use of ``hub`` less; the last one closes it (its endpoint client in a task)."""
    if hub_release(_hubs(client), hub):
        hub.close()
        _spawn(hub.ep_client.close())


def _drop_orphan(client: Any, topic: bytes, held: list[Any]) -> None:
    """An ``AsyncWatcher`` dropped without ``cancel()`` (its finalizer): its subscription
    and its use of the hub go."""
    hub, inbox = held
    held[:] = [None, None]
    if hub is None:
        return
    hub.remove(topic, inbox)
    if hub_release(_hubs(client), hub):
        hub.close()
        try:
            _spawn(hub.ep_client.close())
        except RuntimeError:
            pass  # no loop running (the loop is gone): its sockets go with their objects


def close_hubs(client: Any) -> None:
    """Close every watch hub of ``client`` (``AsyncClient.close`` may call it): their
    watchers end. A hub also notices by itself, within HUB_POLL_MS."""
    hubs = client.__dict__.pop("_watch_hubs", None) or {}
    for hub in list(hubs.values()):
        hub.close()


def hub_count(client: Any) -> int:
    """How many watch hubs (SUB sockets) ``client`` has open now (for tests and stats)."""
    return sum(1 for h in (client.__dict__.get("_watch_hubs") or {}).values() if not h.stopping)


class AsyncWatcher:
    """``async for`` it for ``WatchResponse``s (one per revision, or a progress
    notification). Attached (subscribed, start revision fixed) on ``await w``,
    ``async with w`` or the first ``async for``/``get``."""

    def __init__(self, client: Any, key: Any, range_end: Any = None, *, prefix: bool = False,
                 start_revision: int = 0, prev_kv: bool = False, filters: tuple = (),
                 progress_notify: bool = False, progress_interval_s: float = 0.0,
                 rcvhwm: int = INBOX_FRAMES, rcvbuf: int = -1) -> None:
        """As ``Watcher`` (watch.py): ``rcvhwm`` is this watcher's inbox of live frames,
        ``rcvbuf`` is accepted for compatibility."""
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
        self._start_arg = start_revision
        self._endpoints: list[str] = list(client.endpoints)
        self._idx = client._preferred % len(self._endpoints)
        self._bound = rcvhwm
        self._inbox: _AsyncInbox | None = None
        self._hub: _AsyncHub | None = None
        self._held: list[Any] = [None, None]  # [hub, inbox] for the finalizer
        weakref.finalize(self, _drop_orphan, client, self.topic, self._held)
        self._attach_lock: asyncio.Lock | None = None
        self._attached = False
        self._canceled = False
        self._iterating = 0
        self._task: asyncio.Task[None] | None = None

    # --- what the state knows -------------------------------------------------------
    @property
    def delivered(self) -> int:
        """D: every matching event <= it has been delivered, none above it."""
        return self._state.delivered

    @property
    def start_revision(self) -> int:
        """The first revision this watch delivers (known once attached)."""
        return self._state.start_revision

    @property
    def resumes(self) -> int:
        """Times it moved to another endpoint."""
        return self._state.resumes

    @property
    def catchups(self) -> int:
        """History catch-ups after a hole."""
        return self._state.catchups

    # --- attaching -------------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._attached:
            return
        if self._attach_lock is None:
            self._attach_lock = asyncio.Lock()
        async with self._attach_lock:
            if self._attached:
                return
            status_rev = await self._attach_any()
            self._state.begin(self._start_arg, status_rev)
            self._attached = True
            if self._state.auth:
                # Under auth: the first catch-up page now, so that a range the user may
                # not read raises PermissionDenied here (the watch port stays silent).
                try:
                    await self._catch_up()
                except QkvError:
                    self._detach()
                    self._state.done = True
                    raise

    def __await__(self) -> Any:
        async def attached() -> "AsyncWatcher":
            await self._ensure()
            return self
        return attached().__await__()

    async def __aenter__(self) -> "AsyncWatcher":
        await self._ensure()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _attach_any(self) -> int:
        last_err: QkvError | None = None
        for i in range(len(self._endpoints)):
            idx = (self._idx + i) % len(self._endpoints)
            try:
                return await self._attach(idx)
            except QkvError as exc:
                last_err = exc
        assert last_err is not None
        raise last_err

    async def _attach(self, idx: int) -> int:
        self._detach()
        hub, st = await _acquire_hub(self._client, self._endpoints[idx])
        try:
            if st is None:
                st = await hub.ep_client.status()
        except BaseException:
            _release_hub(self._client, hub)
            raise
        if self._canceled:
            _release_hub(self._client, hub)
            return int(st.header.revision)
        self._state.attached(st.header, asyncio.get_running_loop().time())
        self._inbox = _AsyncInbox(self._bound)  # nothing from the last member is kept
        hub.add(self.topic, self._inbox)
        self._hub, self._idx = hub, idx
        self._held[:] = [hub, self._inbox]
        return int(st.header.revision)

    def _detach(self) -> None:
        hub, self._hub = self._hub, None
        self._held[:] = [None, None]
        if hub is not None:
            assert self._inbox is not None
            hub.remove(self.topic, self._inbox)
            _release_hub(self._client, hub)

    async def _fail_over(self) -> None:
        self._state.failing_over()
        self._idx = (self._idx + 1) % len(self._endpoints)
        rounds = 0
        while not self._canceled and not self._client._closed:
            try:
                await self._attach_any()
                return
            except QkvError:
                rounds += 1
                await asyncio.sleep(failover_pause(rounds))
        self._state.done = True

    # --- the protocol --------------------------------------------------------------
    async def _catch_up(self) -> None:
        hub = self._hub
        assert hub is not None
        self._state.on_history(await hub.ep_client._call(self._state.history_request(), write=False))

    async def _step(self, timeout_s: float) -> None:
        state, hub, inbox = self._state, self._hub, self._inbox
        if hub is None or inbox is None:
            await self._fail_over()
            return
        if state.need_catchup:
            try:
                await self._catch_up()
            except QkvError as exc:
                what = state.history_failed(exc)
                if what == HIST_RAISE:
                    raise
                if what != HIST_ENDED:
                    await self._fail_over()
            return
        if state.take_resubscribe():
            hub.resubscribe(self.topic)
        await inbox.wait(timeout_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if state.take(inbox, now) == IDLE_FAILOVER:
            if hub.last_rx < (state.probe_at or now):
                hub_retire(_hubs(self._client), hub)  # it heard nothing at all: a dead SUB
            await self._fail_over()
        elif state.take_resubscribe():  # the probe
            hub.resubscribe(self.topic)

    # --- public API ----------------------------------------------------------------
    async def get(self, timeout: float | None = None) -> WatchResponse | None:
        """The next response; None when ``timeout`` passes first. Raises
        ``StopAsyncIteration`` once the watch is over (canceled, ended by compaction, or
        its client closed)."""
        await self._ensure()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        state = self._state
        self._iterating += 1
        stepped = False
        try:
            while True:
                if state.ready:
                    return state.ready.popleft()
                if state.done or self._canceled:
                    self._close()
                    raise StopAsyncIteration
                remaining = 0.5 if deadline is None else min(0.5, deadline - loop.time())
                if remaining <= 0:
                    if stepped:
                        return None
                    remaining = 0
                await self._step(remaining)
                stepped = True
        finally:
            self._iterating -= 1

    def __aiter__(self) -> "AsyncWatcher":
        return self

    async def __anext__(self) -> WatchResponse:
        resp = await self.get()
        assert resp is not None
        return resp

    async def events(self) -> AsyncIterator[Event]:
        """Every event, one at a time."""
        async for resp in self:
            for ev in resp.events:
                yield ev

    def request_progress(self) -> None:
        """Ask for a progress notification (etcd's RequestProgress): a repeated subscribe,
        which the broadcaster answers with a progress message."""
        self._state.request_progress()
        if self._inbox is not None:
            self._inbox.wake.set()

    def start(self, callback: Callable[[WatchResponse], Any]) -> "AsyncWatcher":
        """Deliver every response to ``callback`` (a function or a coroutine function)
        from a task of the running loop."""
        async def run() -> None:
            try:
                async for resp in self:
                    res = callback(resp)
                    if inspect.isawaitable(res):
                        await res
            finally:
                self._close()

        self._task = asyncio.get_running_loop().create_task(run(), name="qkv-watch")
        return self

    def cancel(self) -> None:
        """End the watch (plain def: from any task of the loop); the other watchers of
        the client are not disturbed."""
        self._canceled = True
        if self._inbox is not None:
            self._inbox.wake.set()
        if not self._iterating and (self._task is None or self._task.done()):
            self._close()
        # else: the task inside get() wakes up and detaches

    async def aclose(self) -> None:
        """Cancel, and wait for the ``start`` task (if any) to end."""
        self.cancel()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        self._close()

    def _close(self) -> None:
        self._state.done = True
        self._detach()


async def watch_once(client: Any, key: Any, range_end: Any = None, *, timeout: float | None = None,
                     **watch_kw: Any) -> Event:
    """The first event of a watch (then it is canceled); raises ``Timeout`` when none comes
    within ``timeout`` (None = the client's). ``AsyncClient.watch_once``."""
    limit = client.timeout if timeout is None else float(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    w = client.watch(key, range_end, **watch_kw)
    try:
        await asyncio.wait_for(w._ensure(), limit)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                resp = await w.get(timeout=left)
            except StopAsyncIteration:
                raise Timeout("the watch ended before an event came") from None
            if resp is None:
                break
            if resp.canceled:
                raise Timeout(f"the watch was canceled before an event came: {resp.cancel_reason}")
            if resp.events:
                return resp.events[0]
    except (asyncio.TimeoutError, TimeoutError):
        pass
    finally:
        await w.aclose()
    raise Timeout(f"no event within {limit:g}s")
