"""etcdserverpb.Watch: etcd 3.4's bidirectional watch stream, each gRPC watch one native
watch (``AsyncWatcher``, protocol/client/aio_watch.py, SPEC section 5) of the Backend's
client, so the native guarantees hold over gRPC: no event lost or duplicated, revisions in
order, from the start revision, a hole (a lost live message, an overflow) filled from
``history``, a compacted start reported.

etcd's semantics (etcdserver/api/v3rpc/watch.go, mvcc/watcher.go of etcd 3.4):
- ``create_request``: ``key`` "" is "\\x00"; ``range_end`` "" = the key alone, "\\x00" =
  every key >= key. ``watch_id`` 0 (or negative) = the stream assigns the lowest unused id
  from a counter starting at 0, as etcd's; a used one gets ``created`` + ``canceled``,
  ``watch_id`` -1 and "mvcc: duplicate watch ID provided on the WatchStream"; key >=
  range_end "mvcc: watcher range is empty". The ``created`` response's header revision R
  is the member's current revision, and a watch from now starts at R+1 (clientv3 resumes
  from it). ``start_revision`` below the compact revision: ``created``, then one
  response with ``compact_revision`` and ``canceled`` (header revision 0, as etcd's
  mvcc). Negative ``start_revision`` = 1 (etcd: all history).
- Events: live ones one response per revision, ``mvccpb.Event`` PUT/DELETE with ``kv``
  and, with ``prev_kv``, the key's previous value; header = this member, the revision, its
  term. A watch created with ``start_revision`` <= the member's revision R (etcd's
  "unsynced" watcher) gets its history up to R grouped as etcd's syncWatchers sends it
  (mvcc/watchable_store.go, watcher_group.go eventBatch): the events of up to
  WATCH_BATCH_MAX_REVS (1000) distinct revisions in one response whose header revision is R
  (the ``created`` one's), the next ones in the next response; events after R one response
  per revision (checked against etcd 3.4.23: 1,251 history revisions -> 1000 + 251 events
  under header R, then one response per live revision). etcd counts a batch's revisions
  before its filters, here after them (a filtered watch's batches hold up to 1000 revisions
  that have events for it); a slow reader's gap read from ``history`` (below) is sent one
  response per revision (etcd's victims are grouped too).
  ``fragment``: a response larger than --max-request-bytes + 512 KiB with two or more
  events is sent in fragments (``fragment`` true on all but the last), etcd's
  ``sendFragments``.
- ``cancel_request`` of a watch of the stream: ``canceled`` response (an unknown id:
  nothing, as etcd). ``progress_request``: one response with ``watch_id`` -1, no events,
  whose header revision R is the member's revision at the request, sent once every watch
  of the stream has sent its events up to R (a watch behind is asked for native progress,
  SPEC section 5, up to PROGRESS_WAIT_S; then R is the least revision they reached): R
  always promises that no event <= R is still to come (etcd 3.4.23 answers the store
  revision even for unsynced watchers, etcd bug #15271). With ``progress_notify``, a watch
  gets a progress response (its ``watch_id``) every 10 minutes from its create, elided
  after events (etcd's progressReportInterval).
- RequireLeader (metadata ``hasleader: true``, clientv3's WithRequireLeader, which
  etcdctl watch uses): a member without a leader refuses the stream, and ends an open one
  once LeaderMonitor saw no leader MAX_NO_LEADER_POLLS times in a row, with Unavailable
  "etcdserver: no leader" (etcd's stream interceptor and monitorLeader).
- Auth: a create is checked as the caller (its ``token`` metadata, or the TLS CN) by a
  ``range`` ``count_only`` of the watched range; a refusal is ``created`` + ``canceled``
  with ``watch_id`` -1 and etcd 3.4's cancel reason, the gRPC error's text ("rpc error:
  code = PermissionDenied desc = etcdserver: permission denied", as etcd 3.4.23 sends).
  A permitted watch is then served by a native watch of the member itself
  (``Backend.member``: its ``status``/``history`` and its watch port topics, SPEC 7.2,
  7.9), so the watch works under auth and whatever the caller's token does later (an
  etcd watch stream also outlives its token).

Bounds (a slow or hostile client holds a bounded amount here):
- responses for the client wait in one queue per stream of OUT_QUEUE responses; when it
  is full, the watch that wants to add blocks, stops reading its native watch, whose inbox
  of NATIVE_INBOX_FRAMES live frames then overflows: that is a hole, filled from
  ``history`` (pages of at most 5,000 revisions) once the client reads again. This is
  etcd's "unsynced watcher": a slow reader costs a history read, never unbounded memory;
  requests stop being read while the queue is full (gRPC flow control pushes back);
- at most MAX_WATCHES_PER_STREAM watches per stream; beyond, a create gets ``created`` +
  ``canceled`` with "etcdserver: too many requests" (etcd has no such bound);
- a create waits at most CREATE_TIMEOUT_S for its check and attach (then ``canceled``).
When the stream ends (the client closes or goes away), every native watch of it is
canceled.

MODULE LIMITS:
- auth enabled without --client-key-file: the watch port cannot tell the member from
  anybody (no CURVE key), so it serves the member's native watches nothing live: each one
  follows its range from ``history`` after every silence (about every 7 s), as the native
  client does (SPEC 7.9).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import grpc

from actors.grpcgw.backend import BIDI_STREAM, Backend, code_label, count_received, rpc
from actors.grpcgw.errors import status_of
from protocol import errors
from protocol.client.aio import AsyncClient
from protocol.client.types import FROM_KEY_END, KeyValue
from protocol.client.watchcore import Event, WatchResponse
from protocol.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

SERVICE = "etcdserverpb.Watch"
INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID
OUT_QUEUE = 256  # responses waiting for the client, per stream
NATIVE_INBOX_FRAMES = 256  # live frames a native watch holds; beyond: a hole, read from history
MAX_WATCHES_PER_STREAM = 1000
CREATE_TIMEOUT_S = 10.0
PROGRESS_WAIT_S = 5.0  # a progress request waits at most this long for the watches' progress
PROGRESS_ROUND_S = 0.5  # between two asks of a watch still behind
PROGRESS_NOTIFY_INTERVAL_S = 600.0  # etcd's progressReportInterval
GRPC_OVERHEAD_BYTES = 512 * 1024
REQUIRE_LEADER = ("hasleader", "true")  # clientv3.WithRequireLeader's metadata (etcdctl watch sends it)
NO_LEADER = "etcdserver: no leader"
LEADER_POLL_S = 1.0  # etcd: one election timeout (our default --election-timeout)
MAX_NO_LEADER_POLLS = 3  # etcd's maxNoLeaderCnt
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
WATCH_BATCH_MAX_REVS = 1000  # etcd's watchBatchMaxRevs: revisions of one unsynced watcher's response
SYNC_POLL_S = 0.1  # history still on its way (rare): look again after this long...
SYNC_WAIT_S = 10.0  # ...and send what is grouped after this long at most

ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
# The refusals of a create's auth check: etcd's cancel reason is the gRPC error's text
# (watch.go recvLoop; etcd 3.4.23 sends "rpc error: code = PermissionDenied desc =
# etcdserver: permission denied", "... Unauthenticated desc = etcdserver: invalid auth
# token" and, without a token, "... InvalidArgument desc = etcdserver: user name is empty").
AUTH_CODES = frozenset(("invalid_auth_token", "auth_old_revision", "user_empty", "permission_denied",
                        "user_not_found"))


# --- pure conversions ----------------------------------------------------------------
def normalize_range(key: bytes, range_end: bytes) -> tuple[bytes, bytes]:
    """etcd's create: an empty key is "\\x00" (the smallest key); range_end stays "" (the
    key alone) or "\\x00" (every key >= key), which is also the native encoding."""
    return (key or b"\x00"), range_end


def range_error(key: bytes, range_end: bytes) -> str | None:
    """etcd's ErrEmptyWatcherRange: a range_end (not "\\x00") that is not after key."""
    if range_end and range_end != FROM_KEY_END and key >= range_end:
        return ERR_EMPTY_RANGE
    return None


def filters_of(creq: rpc_pb2.WatchCreateRequest) -> tuple[str, ...]:
    """The native filter names of a create's filters (unknown values ignored, as etcd)."""
    names = []
    for f in creq.filters:
        if f == rpc_pb2.WatchCreateRequest.NOPUT and "NOPUT" not in names:
            names.append("NOPUT")
        elif f == rpc_pb2.WatchCreateRequest.NODELETE and "NODELETE" not in names:
            names.append("NODELETE")
    return tuple(names)


def start_of(start_revision: int, current: int) -> int:
    """The native start revision: 0 = from now (current + 1); negative = 1 (etcd's mvcc
    then reads all history)."""
    if start_revision == 0:
        return current + 1
    return max(1, start_revision)


def assign_id(requested: int, used: Any, next_id: int) -> tuple[int, int, str | None]:
    """(id, next counter, error) for a create asking ``requested`` (0 or negative: the
    lowest unused id from the counter, as etcd's watchStream.Watch)."""
    if requested <= 0:
        while next_id in used:
            next_id += 1
        return next_id, next_id + 1, None
    if requested in used:
        return INVALID_WATCH_ID, next_id, ERR_DUPLICATE_ID
    return requested, next_id, None


def cancel_reason(err: errors.QkvError) -> str:
    """The cancel reason of a create refused by its check: for auth errors etcd's, the
    gRPC error's text ("rpc error: code = PermissionDenied desc = etcdserver: permission
    denied"); any other error keeps etcd's status message."""
    code, message = status_of(err)
    if err.code in AUTH_CODES:
        return f"rpc error: code = {code_label(code)} desc = {message}"
    return message


def kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)


def event_pb(ev: Event) -> kv_pb2.Event:
    """A native event as mvccpb.Event."""
    out = kv_pb2.Event(type=kv_pb2.Event.DELETE if ev.type == "DELETE" else kv_pb2.Event.PUT, kv=kv_pb(ev.kv))
    if ev.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(ev.prev_kv))
    return out


def header_pb(cluster_id: int, member_id: int, revision: int, raft_term: int) -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(cluster_id=cluster_id, member_id=member_id, revision=revision,
                                  raft_term=raft_term)


def response_pb(resp: WatchResponse, watch_id: int, header: rpc_pb2.ResponseHeader) -> rpc_pb2.WatchResponse:
    """A native response (events of one revision, progress, or the compacted end) for
    ``watch_id``; ``header`` carries the member's ids and term (its revision is set here:
    the response's, or 0 for the compacted end as etcd's mvcc)."""
    out = rpc_pb2.WatchResponse(header=header, watch_id=watch_id)
    if resp.canceled:
        out.canceled = True
        if resp.compact_revision:
            out.compact_revision = resp.compact_revision
            out.header.revision = 0
        else:
            out.header.revision = resp.revision
            out.cancel_reason = resp.cancel_reason
        return out
    out.header.revision = resp.revision
    out.events.extend(event_pb(ev) for ev in resp.events)
    return out


def fragments(wr: rpc_pb2.WatchResponse, limit: int) -> list[rpc_pb2.WatchResponse]:
    """etcd's sendFragments: ``wr`` as is when smaller than ``limit`` or with fewer than
    two events; else pieces of as many events as fit under ``limit`` (at least one each),
    ``fragment`` true on all but the last."""
    if wr.ByteSize() < limit or len(wr.events) < 2:
        return [wr]
    out: list[rpc_pb2.WatchResponse] = []
    events = list(wr.events)
    base = rpc_pb2.WatchResponse()
    base.CopyFrom(wr)
    del base.events[:]
    base.fragment = True
    idx = 0
    while True:
        cur = rpc_pb2.WatchResponse()
        cur.CopyFrom(base)
        for ev in events[idx:]:
            cur.events.append(ev)
            if len(cur.events) > 1 and cur.ByteSize() >= limit:
                del cur.events[-1]
                break
            idx += 1
        if idx == len(events):
            cur.fragment = False
        out.append(cur)
        if not cur.fragment:
            return out


class HistoryBatch:
    """etcd's unsynced watcher (start revision <= the member's revision ``sync_rev`` at its
    create): its history responses (one per revision, each with events, revision <=
    ``sync_rev``) are grouped into responses of at most ``max_revs`` revisions whose header
    revision is ``sync_rev``; anything else (a later revision, progress, an end) is not
    grouped (``takes``). ``sync_rev`` 0: a watch from now, nothing grouped."""

    def __init__(self, sync_rev: int, max_revs: int = WATCH_BATCH_MAX_REVS) -> None:
        self.sync_rev = sync_rev
        self.max_revs = max(1, max_revs)
        self.pending: list[rpc_pb2.WatchResponse] = []
        self.revs: set[int] = set()  # the distinct revisions of what is pending

    @property
    def syncing(self) -> bool:
        return self.sync_rev > 0

    def takes(self, wr: rpc_pb2.WatchResponse) -> bool:
        """Whether ``wr`` is history to group (events of a revision <= ``sync_rev``)."""
        return (self.syncing and len(wr.events) > 0 and not wr.canceled and not wr.created
                and 0 < wr.header.revision <= self.sync_rev)

    def add(self, wr: rpc_pb2.WatchResponse) -> rpc_pb2.WatchResponse | None:
        """Group ``wr`` (``takes`` said yes); a full batch is returned, to be sent."""
        self.pending.append(wr)
        self.revs.update(ev.kv.mod_revision for ev in wr.events)  # each event once, not every add
        if len(self.revs) >= self.max_revs:
            return self.flush()
        return None

    def flush(self) -> rpc_pb2.WatchResponse | None:
        """The grouped response of what is pending (None: nothing is)."""
        if not self.pending:
            return None
        out = rpc_pb2.WatchResponse()
        out.CopyFrom(self.pending[0])
        out.header.revision = self.sync_rev
        out.header.raft_term = max(p.header.raft_term for p in self.pending)
        for p in self.pending[1:]:
            out.events.extend(p.events)
        self.pending = []
        self.revs.clear()
        return out

    def end(self) -> rpc_pb2.WatchResponse | None:
        """The watch is synced (or ends): what is pending, and no more grouping."""
        out = self.flush()
        self.sync_rev = 0
        return out


def last_event_revision(wr: rpc_pb2.WatchResponse) -> int:
    """The revision ``wr`` reports up to: its last event's, else its header's."""
    return wr.events[-1].kv.mod_revision if len(wr.events) else wr.header.revision


# --- the stream ------------------------------------------------------------------------
async def _attached(native: Any) -> Any:
    return await native


@dataclass(eq=False)
class _Watch:
    id: int
    native: Any  # AsyncWatcher
    fragment: bool
    last_rev: int  # every event <= it was queued for the client
    sync_rev: int = 0  # etcd's unsynced watcher: its history up to it is grouped (HistoryBatch)
    task: asyncio.Task[None] | None = None
    next_progress: float = 0.0  # progress_notify: no periodic progress before (loop time)
    progress_wanted: bool = False
    progress_done: asyncio.Event = field(default_factory=asyncio.Event)


class WatchStream:
    """One gRPC Watch stream: its watches, its outgoing queue, its progress requests."""

    def __init__(self, backend: Backend, context: Any, client: AsyncClient | None = None) -> None:
        self.backend = backend
        self.client = client or backend.member  # the native watches: the member's (module doc)
        self.context = context
        self.out: asyncio.Queue[rpc_pb2.WatchResponse] = asyncio.Queue(OUT_QUEUE)
        self.watches: dict[int, _Watch] = {}
        self.next_id = 0
        self.progress_asked = 0
        self.progress_task: asyncio.Task[None] | None = None
        self.serving: asyncio.Task[Any] | None = None  # the task yielding the responses
        self.no_leader = False
        self.fragment_limit = int(getattr(backend, "max_request_bytes", 0) or DEFAULT_MAX_REQUEST_BYTES) \
            + GRPC_OVERHEAD_BYTES

    def header(self, revision: int, raft_term: int = 0) -> rpc_pb2.ResponseHeader:
        b = self.backend
        return header_pb(b.cluster_id, b.member_id, revision, max(b.raft_term, raft_term))

    async def serve(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> AsyncIterator[rpc_pb2.WatchResponse]:
        self.serving = asyncio.current_task()
        recv = asyncio.get_running_loop().create_task(self._recv(requests), name="grpc-watch-recv")
        try:
            while True:
                yield await self.out.get()
        except asyncio.CancelledError:
            if self.no_leader:  # etcd's monitorLeader: the stream ends with Unavailable
                await self.context.abort(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
            raise
        finally:
            recv.cancel()
            self.close()

    def end_no_leader(self) -> None:
        """The member has had no leader for a while: end the stream (RequireLeader)."""
        self.no_leader = True
        if self.serving is not None:
            self.serving.cancel()

    def close(self) -> None:
        """Cancel every native watch of the stream (its end, or the client gone)."""
        for w in self.watches.values():
            self._stop(w)
        self.watches.clear()
        if self.progress_task is not None:
            self.progress_task.cancel()

    @staticmethod
    def _stop(w: _Watch) -> None:
        w.native.cancel()
        if w.task is not None:
            w.task.cancel()

    async def _recv(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> None:
        try:
            async for req in requests:
                count_received(SERVICE, "Watch", BIDI_STREAM)
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    await self._create(req.create_request)
                elif which == "cancel_request":
                    await self._cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    self._progress()
                # anything else: ignored, as etcd
        except asyncio.CancelledError:
            raise
        except Exception:
            # The client went away (or a request could not be handled): the stream ends,
            # as etcd's does when its recvLoop fails; its end cancels the watches.
            if self.serving is not None:
                self.serving.cancel()
            return
        # EOF (the client closed its side): etcd keeps sending until the stream ends

    async def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        """A native request as the stream's caller (the Backend's bound on calls applies)."""
        b = self.backend
        with b.slot():
            reply = await b.client.request({**req, **b.identity(self.context)}, timeout=CREATE_TIMEOUT_S)
        b.note_header(reply.get("header"))
        return reply

    def _refused(self, revision: int, reason: str) -> rpc_pb2.WatchResponse:
        return rpc_pb2.WatchResponse(header=self.header(revision), watch_id=INVALID_WATCH_ID, created=True,
                                     canceled=True, cancel_reason=reason)

    async def _create(self, creq: rpc_pb2.WatchCreateRequest) -> None:
        key, end = normalize_range(creq.key, creq.range_end)
        b = self.backend
        # The caller's read permission on the range, and the member's revision now.
        try:
            reply = await self._ask({"op": "range", "key": key, "range_end": end, "count_only": True,
                                     "serializable": True})
        except errors.QkvError as err:
            problem = range_error(key, end)
            await self.out.put(self._refused(b.revision, problem or cancel_reason(err)))
            return
        current = int((reply.get("header") or {}).get("revision") or b.revision)
        problem = range_error(key, end)
        if problem is None and len(self.watches) >= MAX_WATCHES_PER_STREAM:
            problem = f"etcdserver: too many requests: at most {MAX_WATCHES_PER_STREAM} watches per stream"
        wid = INVALID_WATCH_ID
        if problem is None:
            wid, self.next_id, problem = assign_id(creq.watch_id, self.watches, self.next_id)
        if problem is not None:
            await self.out.put(self._refused(current, problem))
            return
        start = start_of(creq.start_revision, current)
        native = self.client.watch(key, end, start_revision=start,
                                prev_kv=creq.prev_kv, filters=filters_of(creq),
                                progress_notify=creq.progress_notify,
                                progress_interval_s=PROGRESS_NOTIFY_INTERVAL_S, rcvhwm=NATIVE_INBOX_FRAMES)
        try:
            await asyncio.wait_for(_attached(native), CREATE_TIMEOUT_S)
        except (errors.QkvError, asyncio.TimeoutError, TimeoutError) as exc:
            native.cancel()
            if isinstance(exc, errors.QkvError):
                reason = cancel_reason(exc)
            else:
                reason = "etcdserver: request timed out"
            await self.out.put(self._refused(current, reason))
            return
        w = _Watch(wid, native, creq.fragment, start - 1, sync_rev=current if start <= current else 0)
        self.watches[wid] = w
        await self.out.put(rpc_pb2.WatchResponse(header=self.header(current), watch_id=wid, created=True))
        w.task = asyncio.get_running_loop().create_task(self._forward(w), name=f"grpc-watch {wid}")

    async def _forward(self, w: _Watch) -> None:
        """The native watch's responses, in order, to the stream's queue (its history up to
        ``w.sync_rev`` grouped as etcd's unsynced watcher: HistoryBatch)."""
        loop = asyncio.get_running_loop()
        w.next_progress = loop.time() + PROGRESS_NOTIFY_INTERVAL_S
        batch = HistoryBatch(w.sync_rev)
        sync_deadline = loop.time() + SYNC_WAIT_S
        try:
            while True:
                try:
                    if batch.syncing:
                        # What is ready now; nothing ready and D past sync_rev: synced.
                        resp = await w.native.get(timeout=0)
                        if resp is None:
                            if w.native.delivered >= batch.sync_rev or loop.time() >= sync_deadline:
                                await self._send(w, batch.end())
                                w.last_rev = max(w.last_rev, min(w.native.delivered, w.sync_rev))
                                continue
                            resp = await w.native.get(timeout=SYNC_POLL_S)
                            if resp is None:
                                continue
                    else:
                        resp = await w.native.get()
                except StopAsyncIteration:
                    await self._send(w, batch.end())
                    return
                except errors.QkvError as err:  # e.g. the range is no longer readable
                    await self._send(w, batch.end())
                    await self.out.put(rpc_pb2.WatchResponse(
                        header=self.header(w.last_rev), watch_id=w.id, canceled=True,
                        cancel_reason=cancel_reason(err)))
                    return
                if resp is None:
                    continue
                if resp.progress_notify:
                    await self._send(w, batch.flush())
                    w.last_rev = max(w.last_rev, resp.revision)
                    if w.progress_wanted:
                        w.progress_wanted = False
                        w.progress_done.set()
                    elif loop.time() >= w.next_progress:  # progress_notify's, etcd's interval
                        w.next_progress = loop.time() + PROGRESS_NOTIFY_INTERVAL_S
                        await self.out.put(rpc_pb2.WatchResponse(
                            header=self.header(resp.revision, resp.header.raft_term), watch_id=w.id))
                    continue
                wr = response_pb(resp, w.id, self.header(0, resp.header.raft_term))
                if batch.takes(wr):
                    await self._send(w, batch.add(wr))
                    continue
                await self._send(w, batch.end())
                await self._send(w, wr)
                w.last_rev = max(w.last_rev, resp.revision)
                if resp.canceled:
                    return
        finally:
            w.progress_done.set()
            w.native.cancel()

    async def _send(self, w: _Watch, wr: rpc_pb2.WatchResponse | None) -> None:
        """One response of ``w`` to the stream's queue (in fragments when it asked)."""
        if wr is None:
            return
        for piece in fragments(wr, self.fragment_limit) if w.fragment else [wr]:
            await self.out.put(piece)
        if len(wr.events):  # etcd elides the next progress after events
            w.next_progress = asyncio.get_running_loop().time() + PROGRESS_NOTIFY_INTERVAL_S
            w.last_rev = max(w.last_rev, last_event_revision(wr))

    async def _cancel(self, wid: int) -> None:
        w = self.watches.pop(wid, None)
        if w is None:
            return  # etcd: nothing for an unknown id
        self._stop(w)
        await self.out.put(rpc_pb2.WatchResponse(header=self.header(max(self.backend.revision, w.last_rev)),
                                                 watch_id=wid, canceled=True))

    def _progress(self) -> None:
        """A progress request: answered by one task (requests coming meanwhile are
        answered by it too, one response each)."""
        self.progress_asked += 1
        if self.progress_task is None or self.progress_task.done():
            self.progress_task = asyncio.get_running_loop().create_task(self._answer_progress(),
                                                                        name="grpc-watch-progress")

    async def _answer_progress(self) -> None:
        while self.progress_asked:
            asked, self.progress_asked = self.progress_asked, 0
            try:
                reply = await self.backend.member.request({"op": "status"}, timeout=CREATE_TIMEOUT_S)
                self.backend.note_header(reply.get("header"))
                target = int((reply.get("header") or {}).get("revision") or self.backend.revision)
            except errors.QkvError:
                target = self.backend.revision
            # etcd answers with the store's revision; here every watch must have sent all
            # its events up to it first: each one behind is asked for progress (its
            # member's broadcaster may not have that revision yet: asked again) until it
            # is there or PROGRESS_WAIT_S passed; the answer is the least any has reached.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PROGRESS_WAIT_S
            while True:
                behind = [w for w in self.watches.values()
                          if w.task is not None and not w.task.done() and w.last_rev < target]
                left = deadline - loop.time()
                if not behind or left <= 0:
                    break
                for w in behind:
                    w.progress_done.clear()
                    w.progress_wanted = True
                    w.native.request_progress()
                waits = [asyncio.ensure_future(w.progress_done.wait()) for w in behind]
                try:
                    await asyncio.wait(waits, timeout=min(left, PROGRESS_ROUND_S),
                                       return_when=asyncio.ALL_COMPLETED)
                finally:
                    for f in waits:
                        f.cancel()
            live = [w.last_rev for w in self.watches.values() if w.task is not None and not w.task.done()]
            revision = min([target, *live])
            for _ in range(asked):
                await self.out.put(rpc_pb2.WatchResponse(header=self.header(revision),
                                                         watch_id=INVALID_WATCH_ID))


def requires_leader(metadata: Any) -> bool:
    """Whether a stream's metadata carries clientv3's WithRequireLeader."""
    return any((k, v if isinstance(v, str) else v.decode("utf-8", "replace")) == REQUIRE_LEADER
               for k, v in metadata or ())


async def member_leader(backend: Backend) -> int | None:
    """The member's leader (0: none) from its ``status`` (asked as the member); None when
    it does not answer."""
    try:
        reply = await backend.member.request({"op": "status"}, timeout=LEADER_POLL_S)
    except errors.QkvError:
        return None
    return int(reply.get("leader") or 0)


class LeaderMonitor:
    """etcd's monitorLeader for the streams that require a leader: while there are some,
    ``status`` every LEADER_POLL_S; after MAX_NO_LEADER_POLLS answers in a row without a
    leader, every such stream ends with Unavailable "etcdserver: no leader" (the client
    moves to another member)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.streams: set[WatchStream] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, stream: WatchStream) -> None:
        self.streams.add(stream)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="grpc-watch-leader")

    def discard(self, stream: WatchStream) -> None:
        self.streams.discard(stream)

    async def _run(self) -> None:
        misses = 0
        while self.streams:
            await asyncio.sleep(LEADER_POLL_S)
            leader = await member_leader(self.backend)
            if leader is None:
                continue
            misses = 0 if leader else misses + 1
            if misses >= MAX_NO_LEADER_POLLS:
                streams, self.streams = self.streams, set()
                for stream in streams:
                    stream.end_no_leader()


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.leader = LeaderMonitor(backend)

    @rpc(SERVICE, "Watch", BIDI_STREAM)
    async def Watch(self, request_iterator: Any, context: Any) -> AsyncIterator[rpc_pb2.WatchResponse]:
        stream = WatchStream(self.backend, context)
        if requires_leader(context.invocation_metadata()):
            if await member_leader(self.backend) == 0:
                await context.abort(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
            self.leader.add(stream)
        try:
            async for resp in stream.serve(request_iterator):
                yield resp
        finally:
            self.leader.discard(stream)


def add(server: Any, backend: Backend) -> None:
    """Register this module's servicers on server."""
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchServicer(backend), server)
