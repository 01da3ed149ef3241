"""The watch broadcaster: publishes applied events on an XPUB socket bound at
`--listen-watch-urls`, one message per (channel, revision), as SPEC.md section 5 says.

- Channels are learnt from XPUB subscription messages (XPUB_VERBOSE: every subscribe
  arrives, also a repeated one; an unsubscribe arrives when the last subscriber of a
  topic leaves). Every subscribe is answered at once with a progress message on that
  topic: it confirms the subscription and serves on-demand progress requests.
- Events come from storage (PULL at Endpoints.watch_events). Storage sends without
  blocking, so messages may be missing: revisions are dense, and a hole (or storage's
  revision, polled with STORAGE_STATUS, being ahead of us) is filled from storage's
  history (READ of a `history` op over a DEALER) before anything later is published.
- At start the position is storage's current revision: nothing at or below it is
  published by this process; each channel's `prev_revision` tells consumers so.
- Publishing never blocks: XPUB drops for a subscriber whose queue is full, and the
  consumer sees the hole through `prev_revision` / progress messages and catches up
  from history.
"""
from __future__ import annotations

import os
import random
import time

import zmq

from actors.runtime import messages as M
from actors.runtime import wire
from actors.runtime.actor import Actor
from actors.watch.channels import Broadcaster, Sequencer
from protocol import errors
from protocol.codec import pack_msg

STATUS_POLL_S = 0.1          # storage's revision: finds a lost last message (tail gap)
PROGRESS_TICK_S = 0.2        # progress on channels whose position moved
HEARTBEAT_S = 2.0            # progress on every channel, moved or not
HISTORY_TIMEOUT_S = 1.0      # a history or status request without answer is sent again
HISTORY_PAGE_REVISIONS = 2000
PROGRESS_PER_TICK_MAX = 20_000
DEFAULT_SNDHWM = 100_000
# What each socket may receive (runtime/wire.py decodes and checks every message).
_EVENTS_TYPES = frozenset((M.EVENTS, M.AUTH_STATE, M.AUTH_TOKEN))
_STORAGE_TYPES = frozenset((M.STORAGE_STATUS_RESP, M.READ_RESP, M.AUTH_STATE))


class WatchActor(Actor):
    role = "watch"

    def setup(self) -> None:
        # Test knobs: a small queue makes a slow consumer lose messages sooner.
        sndhwm = int(os.environ.get("QKV_WATCH_SNDHWM", DEFAULT_SNDHWM))
        sndbuf = int(os.environ.get("QKV_WATCH_SNDBUF", -1))
        self.pub = self.socket(zmq.XPUB, bind=self.cfg.listen_watch_urls, handler=self.on_subscription,
                               hwm=sndhwm, xpub_verbose=1, sndbuf=sndbuf)
        self.dropped = wire.Dropped(self.log)  # invalid internal messages (runtime/wire.py)
        self.events_in = self.socket(zmq.PULL, bind=self.endpoints.watch_events, handler=self.on_events)
        self.storage = self.socket(zmq.DEALER, connect=self.endpoints.storage, handler=self.on_storage)
        self.core = Broadcaster()
        self.seq = Sequencer()
        self.known_revision = 0  # storage's revision, as last heard
        self._ids = random.SystemRandom().getrandbits(40) << 20
        self.status_ctx: int | None = None
        self.status_sent_at = 0.0
        self.history_ctx: int | None = None
        self.history_sent_at = 0.0
        self.history_range: tuple[int, int] = (0, 0)
        self.dropped = 0
        self.published_msgs = 0
        self._want_progress: dict[bytes, None] = {}
        self.every(STATUS_POLL_S, self.poll_status)
        self.every(PROGRESS_TICK_S, self.progress_tick)
        self.every(HEARTBEAT_S, self.heartbeat)
        self.every(10.0, self._log_stats)
        self.poll_status()

    # --- subscriptions -------------------------------------------------------------
    def on_subscription(self, frames: list[bytes]) -> None:
        msg = frames[0]
        if not msg:
            return
        topic = msg[1:]
        if msg[0] == 1:
            ch = self.core.subscribe(topic)
            if ch is not None:
                self._want_progress[topic] = None
        elif msg[0] == 0:
            self.core.unsubscribe(topic)
            self._want_progress.pop(topic, None)

    # --- events --------------------------------------------------------------------
    def on_events(self, frames: list[bytes]) -> None:
        try:
            msg_type, body = wire.decode(frames[-1], _EVENTS_TYPES)
        except errors.Malformed as err:
            self.dropped("watch.events", err)
            return
        if msg_type != M.EVENTS:
            return
        for revision, events in body:
            self.seq.add(revision, events)
            if revision > self.known_revision:
                self.known_revision = revision

    def on_storage(self, frames: list[bytes]) -> None:
        try:
            msg_type, body = wire.decode(frames[-1], _STORAGE_TYPES)
        except errors.Malformed as err:
            self.dropped("watch.storage", err)
            return
        if msg_type == M.STORAGE_STATUS_RESP:
            ctx_id, status = body
            if ctx_id != self.status_ctx:
                return
            self.status_ctx = None
            revision = status["revision"]
            self.known_revision = max(self.known_revision, revision)
            if self.core.position is None:
                self.core.start(revision)
                self.seq.start(revision + 1)
                self.log.info("watch_started", position=revision, channels=len(self.core.channels))
        elif msg_type == M.READ_RESP:
            for req_id, response, error, revision, _term in body:
                if req_id != self.history_ctx:
                    continue
                self.history_ctx = None
                self.known_revision = max(self.known_revision, revision)
                if error is not None:
                    self._history_failed(error)
                    continue
                listed = set()
                for group in response["revisions"]:
                    listed.add(group["revision"])
                    self.seq.add(group["revision"],
                                 [[e["type"], e["kv"], e.get("prev_kv")] for e in group["events"]])
                # A revision the reply covers but does not list has no event (revisions
                # are dense today; this keeps a future event-less revision from blocking).
                for rev in range(self.history_range[0], response["last_revision"] + 1):
                    if rev not in listed:
                        self.seq.add(rev, [])

    def _history_failed(self, error: dict) -> None:
        if error.get("code") == "compacted":
            # The revisions before the compact revision are gone: give them up; every
            # channel's next message shows the hole, so consumers learn it.
            compact = int(error.get("compact_revision") or 0)
            if compact - 1 > (self.core.position or 0):
                self.log.warning("watch_history_compacted", position=self.core.position,
                                 compact_revision=compact)
                self.core.skip_to(compact - 1)
                self.seq.skip_to(compact - 1)
        else:
            self.log.warning("watch_history_failed", error=error)

    # --- the loop's hooks ----------------------------------------------------------
    def flush(self) -> None:
        if self.core.position is None:
            return
        for revision, events in self.seq.pop_ready():
            for topic, payload in self.core.publish(revision, events):
                self._send(topic, payload)
        if self._want_progress:
            topics, self._want_progress = self._want_progress, {}
            chans = [self.core.channels[t] for t in topics if t in self.core.channels]
            for topic, payload in self.core.progress(chans):
                self._send(topic, payload)
        self._maybe_fetch()

    def _send(self, topic: bytes, payload: bytes) -> None:
        try:
            self.pub.send_multipart([topic, payload], zmq.NOBLOCK)
            self.published_msgs += 1
        except zmq.ZMQError:
            self.dropped += 1

    def _maybe_fetch(self) -> None:
        now = time.monotonic()
        if self.history_ctx is not None and now - self.history_sent_at < HISTORY_TIMEOUT_S:
            return
        gap = self.seq.gap(self.known_revision)
        if gap is None:
            return
        first, last = gap
        if last == 0:
            last = self.known_revision
        last = min(last, first + HISTORY_PAGE_REVISIONS - 1)
        self._ids += 1
        self.history_ctx = self._ids
        self.history_sent_at = now
        self.history_range = (first, last)
        op = {"op": "history", "key": b"\x00", "range_end": b"\x00", "start_revision": first,
              "end_revision": last, "prev_kv": True, "no_put": False, "no_delete": False,
              "limit_revisions": last - first + 1, "serializable": True}
        try:
            self.storage.send(pack_msg(M.READ, [[self.history_ctx, op, 0]]), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.history_ctx = None

    # --- timers --------------------------------------------------------------------
    def poll_status(self) -> None:
        now = time.monotonic()
        if self.status_ctx is not None and now - self.status_sent_at < HISTORY_TIMEOUT_S:
            return
        self._ids += 1
        self.status_ctx = self._ids
        self.status_sent_at = now
        try:
            self.storage.send(pack_msg(M.STORAGE_STATUS, [self.status_ctx]), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.status_ctx = None

    def progress_tick(self) -> None:
        stale = self.core.stale_progress()[:PROGRESS_PER_TICK_MAX]
        for topic, payload in self.core.progress(stale):
            self._send(topic, payload)

    def heartbeat(self) -> None:
        for topic, payload in self.core.progress(list(self.core.channels.values())):
            self._send(topic, payload)

    def _log_stats(self) -> None:
        self.log.info("watch_stats", position=self.core.position, channels=len(self.core.channels),
                      published=self.published_msgs, dropped=self.dropped)
        self.dropped = 0
        self.published_msgs = 0
