"""The watch broadcaster: publishes applied events on an XPUB socket bound at
`--listen-watch-urls`, one message per (channel, revision), as SPEC.md section 5 says.

- The XPUB is always XPUB_MANUAL: every subscribe and unsubscribe message of every
  connection reaches `gate.Gate`, which grants it (SUBSCRIBE for that pipe) or refuses it.
  Every connection goes through this process's ZAP handler (zap.py; CURVE or NULL), so
  each message carries its connection (`gate.Origin`): subscriptions are counted per
  connection (`--max-watch-subscriptions`). Every granted subscribe is answered at once
  with a progress message on that topic: it confirms the subscription and serves
  on-demand progress requests.
- Events come from storage (PULL at Endpoints.watch_events). Storage sends without
  blocking, so messages may be missing: revisions are dense, and a hole (or storage's
  revision, polled with STORAGE_STATUS, being ahead of us) is filled from storage's
  history (READ of a `history` op over a DEALER) before anything later is published.
- At start the position is storage's current revision: nothing at or below it is
  published by this process; each channel's `prev_revision` tells consumers so.
- Publishing never blocks: XPUB drops for a subscriber whose queue is full (SNDHWM =
  `--watch-subscriber-bytes` // channels.MAX_WATCH_MESSAGE messages, each at most
  MAX_WATCH_MESSAGE bytes: a bound in bytes), and the consumer sees the hole through
  `prev_revision` / progress messages and catches up from history. A message longer than
  MAX_WATCH_MESSAGE is replaced by a progress message that shows the hole.
- Progress work is spread: per tick (0.2 s) the channels that published since their last
  progress message, and a tenth of all channels (their heartbeat, so every 2 s each);
  sent in slices between polls (`flush`), after subscriptions and events, so a new
  subscriber's first message never waits behind bulk work.

Security (issue 11; SPEC section 5 "Security"):
- With `--client-key-file` the XPUB is a CURVE server; the ZAP handler lets every client
  key connect and names its User-Id: the user a key is registered to
  (`--client-cert-auth` user keys, then keys registered by `authenticate` while their
  token lives), MEMBER for the cluster's own key pair (the member's gRPC gateway, which
  may read every topic: storage.auth ``can_read``), "" for any other key.
- The auth state is storage's (AUTH_STATE_GET at start, then AUTH_STATE / AUTH_TOKEN
  pushes on the events PULL). Until it is known nothing is granted; with auth enabled a
  subscription is granted only for a channel its user may read; with auth disabled any.
- When the auth state changes (with auth enabled before or after), when a registered key
  moves to another user, or when the topics libzmq holds pass the gate's budget, the XPUB
  is closed and bound again: subscribers reconnect and subscribe again and are decided
  again; what they missed meanwhile they read from history (a gap like any other).
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import math
import os
import random
import socket as pysocket
import struct
import termios
import time
from collections import deque
from typing import Any, cast

import zmq
from zmq.utils import monitor as zmq_monitor

from actors.runtime import messages as M
from actors.runtime import metrics
from actors.runtime import security
from actors.runtime import wire
from actors.runtime.actor import Actor
from actors.storage.auth import MEMBER, AuthState
from actors.watch import channels as C
from actors.watch import gate as G
from actors.watch.channels import Broadcaster, Sequencer
from actors.watch.zap import CONN_PROPERTY, ConnAuthenticator
from protocol import errors

STATUS_POLL_S = 0.1          # storage's revision: finds a lost last message (tail gap)
PROGRESS_TICK_S = 0.2        # progress on channels that published; one heartbeat slot
# HEARTBEAT = PROGRESS_TICK_S * channels.HEARTBEAT_SLOTS = 2 s: progress on every channel
HISTORY_TIMEOUT_S = 1.0      # a history or status request without answer is sent again
HISTORY_PAGE_REVISIONS = 2000
HISTORY_PAGE_BYTES = 8 * 1024 * 1024  # aim of a history page's size (pages shrink to it)
BULK_SLICE_S = 0.005         # progress messages sent per flush: at most this long
EVENTS_RCVHWM = 1000         # EVENTS messages queued from storage (each a batch of revisions)
MEMORY_TICK_S = 2.0          # give memory back after subscribers left (dicts, malloc_trim)
TRIM_AFTER_BYTES = 1024 * 1024  # ... once about this much subscription state went away
# What each socket may receive (runtime/wire.py decodes and checks every message).
_EVENTS_TYPES = frozenset((M.EVENTS, M.AUTH_STATE, M.AUTH_TOKEN))
_STORAGE_TYPES = frozenset((M.STORAGE_STATUS_RESP, M.READ_RESP, M.AUTH_STATE))
AUTH_TICK_S = 1.0            # ask storage for the auth state until known; expire tokens
REBIND_DEADLINE_S = 5.0      # a port still busy after close for this long: crash (restart)
BUDGET_REBIND_MIN_S = 5.0    # at most one rebind per this for the subscription budget
# Metrics (actors/runtime/metrics.py): gauges every METRICS_INTERVAL_S. A subscriber is slow
# when the bytes its connection's kernel send queue holds (SIOCOUTQ) are over
# SLOW_OUTQ_BYTES at two samples in a row: it reads slower than we publish, and past its
# libzmq queue it loses messages. At most SLOW_CHECK_MAX connections are looked at per
# sample (one ioctl each), in turn, so many connections cost a bounded time.
METRICS_INTERVAL_S = 1.0
SLOW_OUTQ_BYTES = 256 * 1024
SLOW_CHECK_MAX = 5000
# Send flags as plain ints: `zmq.NOBLOCK | zmq.SNDMORE` builds an enum Flag on every call
# (~7% of the broadcaster's busy time under load, measured with a sampling profiler).
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class WatchActor(Actor):
    role = "watch"

    def setup(self) -> None:
        # Per subscriber at most watch_subscriber_bytes queued: messages of at most
        # MAX_WATCH_MESSAGE bytes, SNDHWM of them. Test knobs: QKV_WATCH_SNDHWM (a small
        # queue makes a slow consumer lose messages sooner), QKV_WATCH_SNDBUF.
        default_hwm = max(1, self.cfg.watch_subscriber_bytes // C.MAX_WATCH_MESSAGE)
        sndhwm = int(os.environ.get("QKV_WATCH_SNDHWM", default_hwm))
        sndbuf = int(os.environ.get("QKV_WATCH_SNDBUF", -1))
        self._sndhwm, self._sndbuf = sndhwm, sndbuf
        self._curve: tuple[bytes, bytes, str] | None = None
        if self.cfg.client_key_file:
            public, secret = security.load_keypair(self.cfg.client_key_file)
            self._curve = (public, secret, "watch")
        self.auth_state: AuthState | None = None  # storage's, once it answered
        self.tokens = G.TokenKeys()
        self._keys: dict[bytes, str] = {}  # replaced whole: the ZAP thread reads it
        self.gate = G.Gate(max_per_conn=self.cfg.max_watch_subscriptions)
        self._pub_gen = 0
        self._unbound: list[str] = []
        self._bind_started = 0.0
        self._rebind_reason: str | None = None
        self._budget_rebind_at = -math.inf
        self.rebinds = 0
        self.bad_auth_msgs = 0
        self.auth_ctx = 0
        self.kicked = 0
        self.kick_failed = 0
        # Every connection goes through ZAP (CURVE or NULL) to get its connection id.
        self.zap = ConnAuthenticator(self.ctx, "watch", self._zap_lookup, allow_null=self._curve is None)
        self.zap.start()
        self._authenticators.append(self.zap)  # stopped by the loop at shutdown
        # The XPUB is bound once the auth state is known (storage answers AUTH_STATE_GET at
        # once): no subscriber is refused, then rebound, at start.
        self.pub: zmq.Socket | None = None
        self._pub_mon: zmq.Socket | None = None
        self._bound_urls: list[str] = []
        self.dropped_internal = wire.Dropped(self.log)  # invalid internal messages (runtime/wire.py)
        self.events_in = self.socket(zmq.PULL, bind=self.endpoints.watch_events, handler=self.on_events,
                                     hwm=EVENTS_RCVHWM)
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
        self.history_page = HISTORY_PAGE_REVISIONS
        self.dropped = 0
        self.published_msgs = 0
        self.bulk_behind = 0
        self._want_progress: dict[bytes, None] = {}
        self._bulk: deque[C.Channel] = deque()  # progress messages to send, in slices
        self._tick = 0
        self._freed_since_trim = 0
        self._trims_left = 0
        self._libc: ctypes.CDLL | None = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            pass
        self.every(STATUS_POLL_S, self.poll_status)
        self.every(PROGRESS_TICK_S, self.progress_tick)
        self.every(10.0, self._log_stats)
        self.every(MEMORY_TICK_S, self._memory_tick)
        self.every(AUTH_TICK_S, self.auth_tick)
        self._published_counted = 0  # published_msgs already added to the metric
        self._slow_over: set[int] = set()  # connection ids over SLOW_OUTQ_BYTES at their last sample
        self._slow: set[int] = set()  # ... and at the one before: slow subscribers
        self._slow_offset = 0  # where the next sample starts when there are > SLOW_CHECK_MAX
        self.every(METRICS_INTERVAL_S, self._metrics_tick)
        self.poll_status()
        self.auth_tick()

    # --- subscriptions -------------------------------------------------------------
    def _on_xpub(self, frames: list[zmq.Frame]) -> None:
        """One XPUB message (a raw socket: its frame properties name its origin). It is
        decided right away: XPUB_MANUAL gives a SUBSCRIBE to the pipe of the last message
        received. The first message of a connection is decided after the disconnections
        reported until then, so the gate never takes a connection for the one that held
        its socket before (gate.Gate.closed)."""
        frame = frames[-1]
        origin = _origin(frame)
        if origin is not None and origin.conn not in self.gate.conns:
            self._drain_monitor()
        self.on_subscription(frame.bytes, origin)

    def _drain_monitor(self) -> None:
        mon = self._pub_mon
        if mon is None:
            return
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = zmq_monitor.parse_monitor_message(frames)
            except Exception:
                continue
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.gate.closed(int(event["value"]))

    def on_subscription(self, msg: bytes, origin: G.Origin | None) -> None:
        d = self.gate.decide(msg, origin, self.auth_state, self.core.admit, self.core.canonical)
        pub = self.pub
        assert pub is not None, "a subscription comes from the XPUB"
        if d.action == G.SUBSCRIBE:
            pub.setsockopt(zmq.SUBSCRIBE, d.topic)  # gives the topic to the pipe that asked
            if d.track and self.core.subscribe(d.topic) is not None:
                self._want_progress[d.topic] = None
        elif d.action == G.UNSUBSCRIBE:
            pub.setsockopt(zmq.UNSUBSCRIBE, d.topic)
            if d.untrack:
                self._want_progress.pop(d.topic, None)
                if d.topic in self.core.channels:
                    self._freed_since_trim += len(d.topic) + 600
                self.core.unsubscribe(d.topic)
            self._freed_since_trim += len(d.topic)
        elif d.action == G.REFUSE and d.kick and origin is not None:
            self._kick(origin.fd, origin.peer)

    def _kick(self, fd: int, peer: str) -> None:
        """Close one subscriber's connection (it holds more refused topics than
        --max-watch-subscriptions): shut its socket down under libzmq, which then sees
        the connection end as if the peer closed it. Only when the socket number is still
        a connection to our watch port from that peer (else nothing: the budget holds)."""
        try:
            s = pysocket.socket(fileno=os.dup(fd))
        except OSError:
            self.kick_failed += 1
            return
        try:
            local, remote = s.getsockname(), s.getpeername()
            ok = s.type == pysocket.SOCK_STREAM and self._is_watch_addr(s.family, local) \
                and (s.family == pysocket.AF_UNIX or remote[0] == peer)
            if ok:
                s.shutdown(pysocket.SHUT_RDWR)
                self.kicked += 1
            else:
                self.kick_failed += 1
        except OSError:
            self.kick_failed += 1
        finally:
            s.close()

    def _is_watch_addr(self, family: int, local) -> bool:
        for url in self._bound_urls:
            if url.startswith("ipc://"):
                if family == pysocket.AF_UNIX and local == url[len("ipc://"):]:
                    return True
            elif family in (pysocket.AF_INET, pysocket.AF_INET6) and url.rsplit(":", 1)[-1] == str(local[1]):
                return True
        return False

    def _zap_lookup(self, key: bytes) -> str:
        """ZAP (on the authenticator's thread): every key may connect; its User-Id is
        MEMBER for the cluster's own key pair (a member's gRPC gateway: it may read every
        topic, SPEC 7.9), else the user it is registered to, or "" (anonymous)."""
        if self._curve is not None and key == self._curve[0]:
            return MEMBER
        return self._keys.get(key, "")

    def _bind_pub(self, first: bool) -> zmq.Socket:
        """A new XPUB (XPUB_MANUAL; ZAP for every connection), bound at
        --listen-watch-urls. At start a bind error is fatal; after a close the port may
        still be held for a moment, so binding is retried from timers until
        REBIND_DEADLINE_S."""
        opts: dict[str, Any] = {} if self._curve is not None else {"zap_domain": b"watch"}
        sock = self.socket(zmq.XPUB, handler=self._on_xpub, raw=True, hwm=self._sndhwm,
                           sndbuf=self._sndbuf, maxmsgsize=C.MAX_TOPIC_BYTES + 1,
                           curve_server=self._curve, xpub_manual=1, **opts)
        self.gate.reset()
        self._pub_gen += 1
        self._pub_mon = self._monitor(sock)
        if first:
            self._bound_urls = []
            for url in self.cfg.listen_watch_urls:
                sock.bind(url)
                self._bound_urls.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            return sock
        self.pub = sock
        self._unbound = list(self.cfg.listen_watch_urls)
        self._bind_started = time.monotonic()
        self._bind_rest(self._pub_gen, 0)
        return sock

    def _monitor(self, sock: zmq.Socket) -> zmq.Socket:
        """The XPUB's disconnections (socket numbers), on a PAIR with no queue limit (an
        event lost would only keep a closed connection's record until its socket number
        is used again). Drained by _on_xpub and _memory_tick; not polled."""
        addr = f"inproc://watch-xpub-monitor-{self._pub_gen}"
        sock.monitor(addr, zmq.EVENT_DISCONNECTED)
        mon = self.ctx.socket(zmq.PAIR)
        mon.setsockopt(zmq.LINGER, 0)
        mon.setsockopt(zmq.RCVHWM, 0)
        mon.connect(addr)
        return mon

    def _bind_rest(self, gen: int, attempt: int) -> None:
        if gen != self._pub_gen:
            return
        pub = self.pub
        assert pub is not None, "_bind_rest follows _bind_pub"
        while self._unbound:
            try:
                pub.bind(self._unbound[0])
                self._bound_urls.append(pub.getsockopt_string(zmq.LAST_ENDPOINT))
            except zmq.ZMQError as exc:
                if time.monotonic() - self._bind_started > REBIND_DEADLINE_S:
                    self.log.error("watch_rebind_failed", url=self._unbound[0], error=str(exc))
                    raise
                self.call_later(min(0.2, 0.002 * 2 ** attempt), lambda: self._bind_rest(gen, attempt + 1))
                return
            self._unbound.pop(0)
        self.log.info("watch_rebound", attempts=attempt + 1,
                      auth_revision=self.auth_state.revision if self.auth_state else None)

    def _rebind(self, reason: str) -> None:
        """Drop every subscriber: they reconnect, subscribe again and are decided again."""
        if self.pub is None:
            return  # not bound yet: the first bind takes the current state
        self._drain_monitor()
        self.pub.disable_monitor()
        mon, self._pub_mon = self._pub_mon, None
        if mon is not None:  # made with the XPUB
            mon.close(0)
        self.close_socket(self.pub)
        self._freed_since_trim += self.gate.held_bytes + self.core.topic_bytes + 600 * len(self.core.channels)
        self.core.clear()
        self._want_progress = {}
        self._bulk.clear()
        self._bound_urls = []
        self.rebinds += 1
        metrics.watch_rebinds.inc()
        self.log.info("watch_rebind", reason=reason)
        self._bind_pub(first=False)

    # --- auth ----------------------------------------------------------------------
    def _on_auth_state(self, msg: M.AuthState) -> None:
        try:
            new = AuthState.from_wire(msg.state)
        except errors.QkvError:
            self.bad_auth_msgs += 1
            return
        old = self.auth_state
        if old is not None and new.revision <= old.revision:
            return  # the same state again, or an older copy (a GET reply overtaken by a push)
        self.auth_state = new
        self.tokens.follow(old, new)
        self._refresh_keys()
        if self.pub is None:
            self.pub = self._bind_pub(first=True)
            self.log.info("watch_auth_state", enabled=new.enabled, auth_revision=new.revision)
            return
        if old is None or old.enabled != new.enabled:
            self.log.info("watch_auth_state", enabled=new.enabled, auth_revision=new.revision)
        if G.needs_rebind(old, new):
            self._rebind_reason = "auth_state"

    def _on_auth_tokens(self, msg: M.AuthToken) -> None:
        # the token table takes (and checks again) the grants as msgpack lists
        changed = self.tokens.add([list(grant) for grant in msg.items], time.time(), self.cfg.auth_token_ttl)
        self._refresh_keys()
        if any(u in self.gate.granted_users for _, u in changed):
            self._rebind_reason = "token_key_reassigned"

    def _refresh_keys(self) -> None:
        self._keys = G.key_map(self.auth_state, self.cfg.client_cert_auth, self.tokens.grants.items())

    def auth_tick(self) -> None:
        if self.auth_state is None:
            self._ids += 1
            self.auth_ctx = self._ids
            try:
                self.storage.send(wire.pack(M.AuthStateGet(self.auth_ctx)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        # Expired grants only stop new connections from being that user: a subscriber that
        # connected while its token lived keeps its subscriptions (an etcd watch stream
        # outlives its token too); permission changes still rebind (see _on_auth_state).
        if self.tokens.expire(time.time()):
            self._refresh_keys()

    # --- events --------------------------------------------------------------------
    def on_events(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames[-1], _EVENTS_TYPES)
        except errors.Malformed as err:
            self.dropped_internal("watch.events", err)
            return
        if isinstance(msg, M.AuthState):
            self._on_auth_state(msg)
            return
        if isinstance(msg, M.AuthToken):
            self._on_auth_tokens(msg)
            return
        assert isinstance(msg, M.Events)
        for revision, events in msg.items:
            self.seq.add(revision, cast(list, events))  # Event tuples index as channels' [type, kv, prev_kv]
            if revision > self.known_revision:
                self.known_revision = revision

    def on_storage(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames[-1], _STORAGE_TYPES)
        except errors.Malformed as err:
            self.dropped_internal("watch.storage", err)
            return
        if isinstance(msg, M.StorageStatusResp):
            ctx_id, status = msg
            if ctx_id != self.status_ctx:
                return
            self.status_ctx = None
            revision = status["revision"]
            self.known_revision = max(self.known_revision, revision)
            if self.core.position is None:
                self.core.start(revision)
                self.seq.start(revision + 1)
                self.log.info("watch_started", position=revision, channels=len(self.core.channels))
        elif isinstance(msg, M.AuthState):
            self._on_auth_state(msg)
        elif isinstance(msg, M.ReadResp):
            for req_id, response, error, revision, _term in msg.items:
                if req_id != self.history_ctx:
                    continue
                self.history_ctx = None
                self.known_revision = max(self.known_revision, revision)
                if response is None:  # then error is set (a reply holds one of them)
                    self._history_failed(error)
                    continue
                self._size_history_page(len(frames[-1]), response["last_revision"])
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

    def _size_history_page(self, reply_bytes: int, last_revision: int) -> None:
        """Pages of about HISTORY_PAGE_BYTES: the revisions a page asks for follow the
        size of the last reply (large values make a page of 2000 revisions gigabytes)."""
        covered = max(1, last_revision - self.history_range[0] + 1)
        per_rev = max(1, reply_bytes // covered)
        self.history_page = max(1, min(HISTORY_PAGE_REVISIONS, HISTORY_PAGE_BYTES // per_rev))

    def _history_failed(self, error: M.Error | None) -> None:
        assert error is not None
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
        # Before anything is published: an auth change that arrived with (or before)
        # these events must take effect first.
        if self._rebind_reason is None and self.gate.over_budget \
                and time.monotonic() - self._budget_rebind_at >= BUDGET_REBIND_MIN_S:
            self._budget_rebind_at = time.monotonic()
            self._rebind_reason = "subscription_budget"
            self.log.warning("watch_subscription_budget", held_bytes=self.gate.held_bytes,
                             budget_bytes=self.gate.budget_bytes, connections=len(self.gate.conns))
        if self._rebind_reason is not None:
            reason, self._rebind_reason = self._rebind_reason, None
            self._rebind(reason)
        if self.core.position is None:
            return
        for revision, events in self.seq.pop_ready():
            for topic, payload in self.core.publish(revision, events):
                self._send(topic, payload)
        if self._want_progress:  # the answers to this round's subscribes, before bulk work
            topics, self._want_progress = self._want_progress, {}
            chans = [self.core.channels[t] for t in topics if t in self.core.channels]
            for topic, payload in self.core.progress(chans):
                self._send(topic, payload)
        if self._bulk:
            self._send_bulk()
        self._maybe_fetch()

    def poll_timeout_ms(self) -> int | None:
        return 0 if self._bulk else None

    def _send_bulk(self) -> None:
        """A slice of the queued progress messages (at most BULK_SLICE_S), so the loop
        polls its sockets (new subscribers, events) in between."""
        deadline = time.monotonic() + BULK_SLICE_S
        bulk, channels, core = self._bulk, self.core.channels, self.core
        while bulk:
            batch = []
            for _ in range(min(256, len(bulk))):
                ch = bulk.popleft()
                if channels.get(ch.topic) is ch:  # still a channel
                    batch.append(ch)
            for topic, payload in core.progress(batch):
                self._send(topic, payload)
            if time.monotonic() >= deadline:
                return

    def _send(self, topic: bytes, payload: bytes) -> None:
        if self.pub is None:
            return  # not bound yet: nobody can have subscribed
        try:
            self.pub.send(topic, _NOBLOCK_MORE)  # XPUB drops per subscriber: never blocks
            self.pub.send(payload, _NOBLOCK)
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
        last = min(last, first + self.history_page - 1)
        self._ids += 1
        self.history_ctx = self._ids
        self.history_sent_at = now
        self.history_range = (first, last)
        op = {"op": "history", "key": b"\x00", "range_end": b"\x00", "start_revision": first,
              "end_revision": last, "prev_kv": True, "no_put": False, "no_delete": False,
              "limit_revisions": last - first + 1, "serializable": True}
        try:
            self.storage.send(wire.pack(M.Read([M.ReadItem(self.history_ctx, op, 0)])), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.history_ctx = None
            return
        metrics.watch_catchups.inc()

    # --- timers --------------------------------------------------------------------
    def poll_status(self) -> None:
        now = time.monotonic()
        if self.status_ctx is not None and now - self.status_sent_at < HISTORY_TIMEOUT_S:
            return
        self._ids += 1
        self.status_ctx = self._ids
        self.status_sent_at = now
        try:
            self.storage.send(wire.pack(M.StorageStatusReq(self.status_ctx)), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.status_ctx = None

    def progress_tick(self) -> None:
        """Queue this tick's progress messages: the channels that published since their
        last one (a lost last message shows within a tick), and one heartbeat slot (each
        channel every HEARTBEAT_SLOTS ticks = 2 s). Sent in slices by flush."""
        self._tick += 1
        self._bulk.extend(self.core.take_dirty())
        if len(self._bulk) > len(self.core.channels) + 10_000:
            self.bulk_behind += 1  # the slices cannot keep up: skip this slot's heartbeats
            return
        self._bulk.extend(self.core.heartbeat_slot(self._tick))

    def _memory_tick(self) -> None:
        """After many subscriptions went away: shrink the tables and give freed heap back
        to the system (glibc keeps it otherwise; libzmq's topic tries are many small
        blocks). What stays is Python's allocator arenas that still hold a few live
        objects (~30 MiB after 100,000 subscriptions), reused by later subscribers."""
        self._drain_monitor()
        if self._freed_since_trim < TRIM_AFTER_BYTES:
            if self._trims_left > 0 and self._libc is not None:
                # libzmq frees a closed connection's pipes and buffers on its own threads,
                # after we saw it go: trim again for a few ticks.
                self._trims_left -= 1
                self._libc.malloc_trim(0)
            return
        self._trims_left = 3
        freed, self._freed_since_trim = self._freed_since_trim, 0
        before = _rss_mib()
        self.core.compact()
        self.gate.compact()
        # A full collection also empties the interpreter's free lists (tuples, dicts...),
        # whose objects from the burst would keep its allocator arenas alive.
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self.log.info("watch_memory_returned", freed_estimate=freed, channels=len(self.core.channels),
                      connections=len(self.gate.conns), rss_mib_before=before, rss_mib=_rss_mib())

    def _count_published(self) -> None:
        n = self.published_msgs - self._published_counted
        if n > 0:
            metrics.watch_messages.inc(n)
        self._published_counted = self.published_msgs

    def _metrics_tick(self) -> None:
        """Gauges, once a second (never per message); the published count as a delta."""
        self._count_published()
        conns = self.gate.conns
        metrics.watch_channels.set(len(self.core.channels))
        metrics.watch_subscribers.set(len(conns))
        metrics.watchers_total.set(sum(len(c.granted) for c in conns.values()))
        ids = list(conns)
        if len(ids) > SLOW_CHECK_MAX:  # a slice, in turn; the others keep their last verdict
            start = self._slow_offset % len(ids)
            ids = (ids[start:] + ids[:start])[:SLOW_CHECK_MAX]
            self._slow_offset = start + SLOW_CHECK_MAX
        sampled = set(ids)
        over: set[int] = set()
        buf = bytearray(4)
        for conn_id in ids:
            try:
                fcntl.ioctl(conns[conn_id].fd, termios.TIOCOUTQ, buf)
            except OSError:
                continue
            if struct.unpack("i", buf)[0] >= SLOW_OUTQ_BYTES:
                over.add(conn_id)
        before = self._slow_over
        self._slow_over = over | {c for c in before if c in conns and c not in sampled}
        slow = {c for c in over if c in before} | {c for c in self._slow if c in conns and c not in sampled}
        self._slow = slow
        metrics.watch_slow_subscribers.set(len(slow))
        metrics.slow_watchers_total.set(sum(len(conns[c].granted) for c in slow))

    def _log_stats(self) -> None:
        self._count_published()
        self.log.info("watch_stats", position=self.core.position, channels=len(self.core.channels),
                      published=self.published_msgs, dropped=self.dropped, rebinds=self.rebinds,
                      subscription_bytes=self.gate.held_bytes, connections=len(self.gate.conns),
                      history_page=self.history_page)
        if self.core.oversize:
            # Event messages over MAX_WATCH_MESSAGE: their consumers read them from history.
            self.log.info("watch_messages_too_large", count=self.core.oversize,
                          max_bytes=self.core.max_message)
            self.core.oversize = 0
        if self.bulk_behind:
            self.log.warning("watch_progress_behind", ticks=self.bulk_behind, channels=len(self.core.channels))
            self.bulk_behind = 0
        if self.gate.refused or self.bad_auth_msgs or self.tokens.invalid or self.kicked or self.kick_failed:
            # Refusals are counted and logged here, once per period (never per message).
            self.log.warning("watch_subscriptions_refused", refused=dict(self.gate.refused),
                             max_watch_subscriptions=self.gate.max_per_conn,
                             connections_closed=self.kicked, close_failed=self.kick_failed,
                             bad_auth_messages=self.bad_auth_msgs, bad_token_grants=self.tokens.invalid)
            self.gate.refused = {}
            self.bad_auth_msgs = 0
            self.tokens.invalid = 0
            self.kicked = self.kick_failed = 0
        self.dropped = 0
        self.published_msgs = 0
        self._published_counted = 0


def _origin(frame: zmq.Frame) -> G.Origin | None:
    """Where an XPUB message came from; None for libzmq's own unsubscribes of a closing
    connection (they carry no metadata)."""
    try:
        fd = int(frame.get("__fd"))
    except (zmq.ZMQError, ValueError, TypeError):
        return None
    try:
        conn = int(security.frame_property(frame, CONN_PROPERTY))
    except ValueError:
        conn = -1
    return G.Origin(security.frame_user(frame), conn, fd, security.frame_peer(frame))


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)
    except (OSError, ValueError, IndexError):
        return 0.0
