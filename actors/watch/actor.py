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

Security (issue 11; SPEC section 5 "Security"):
- With `--client-key-file` the XPUB is a CURVE server; this process's ZAP handler
  lets every client key connect and names its User-Id: the user a key is registered to
  (`--client-cert-auth` user keys, then keys registered by `authenticate` while their
  token lives), "" for any other key.
- The auth state is storage's (AUTH_STATE_GET at start, then AUTH_STATE / AUTH_TOKEN
  pushes on the events PULL). Until it is known, and while auth is enabled, the XPUB is
  XPUB_MANUAL and each subscription is decided by `gate.Gate` (the user may read the
  channel's range); with auth disabled it is XPUB_VERBOSE as before (all allowed).
- When the auth state changes (with auth enabled before or after), when a registered key
  moves to another user, or after too many subscription messages, the XPUB is
  closed and bound again: subscribers reconnect and subscribe again and are decided
  again; what they missed meanwhile they read from history (a gap like any other).
"""
from __future__ import annotations

import math
import os
import random
import time

import zmq

from actors.runtime import messages as M
from actors.runtime import security
from actors.runtime import wire
from actors.runtime.actor import Actor
from actors.storage.auth import AuthState
from actors.watch import gate as G
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
AUTH_TICK_S = 1.0            # ask storage for the auth state until known; expire tokens
REBIND_DEADLINE_S = 5.0      # a port still busy after close for this long: crash (restart)
BUDGET_REBIND_MIN_S = 5.0    # at most one rebind per this for the subscription budget


class WatchActor(Actor):
    role = "watch"

    def setup(self) -> None:
        # Test knobs: a small queue makes a slow consumer lose messages sooner.
        sndhwm = int(os.environ.get("QKV_WATCH_SNDHWM", DEFAULT_SNDHWM))
        sndbuf = int(os.environ.get("QKV_WATCH_SNDBUF", -1))
        self._sndhwm, self._sndbuf = sndhwm, sndbuf
        self._curve: tuple[bytes, bytes, str] | None = None
        if self.cfg.client_key_file:
            public, secret = security.load_keypair(self.cfg.client_key_file)
            self._curve = (public, secret, "watch")
        self.auth_state: AuthState | None = None  # storage's, once it answered
        self.tokens = G.TokenKeys()
        self._keys: dict[bytes, str] = {}  # replaced whole: the ZAP thread reads it
        self.gate = G.Gate()
        self._pub_gen = 0
        self._unbound: list[str] = []
        self._bind_started = 0.0
        self._rebind_reason: str | None = None
        self._budget_rebind_at = -math.inf
        self.rebinds = 0
        self.bad_auth_msgs = 0
        self.auth_ctx = 0
        if self._curve is not None:
            self.start_authenticator("watch", self._zap_lookup)
        # The XPUB is bound once the auth state is known (storage answers AUTH_STATE_GET at
        # once), in the mode it asks for: no subscriber is refused, then rebound, at start.
        self.pub: zmq.Socket | None = None
        self.dropped_internal = wire.Dropped(self.log)  # invalid internal messages (runtime/wire.py)
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
        self.every(AUTH_TICK_S, self.auth_tick)
        self.poll_status()
        self.auth_tick()

    # --- subscriptions -------------------------------------------------------------
    def on_subscription(self, frames: list[bytes], user: str) -> None:
        d = self.gate.decide(frames[0], user, self.auth_state, self.core.channels)
        if d.action == G.SUBSCRIBE:
            if self.gate.manual:  # XPUB_MANUAL: gives the topic to the pipe that asked
                self.pub.setsockopt(zmq.SUBSCRIBE, d.topic)
            if d.track and self.core.subscribe(d.topic) is not None:
                self._want_progress[d.topic] = None
        elif d.action == G.UNSUBSCRIBE:
            if self.gate.manual:
                self.pub.setsockopt(zmq.UNSUBSCRIBE, d.topic)
            if d.untrack:
                self.core.unsubscribe(d.topic)
                self._want_progress.pop(d.topic, None)

    def _zap_lookup(self, key: bytes) -> str:
        """ZAP (on the authenticator's thread): every key may connect; its User-Id is the
        user it is registered to, or "" (anonymous)."""
        return self._keys.get(key, "")

    def _bind_pub(self, first: bool) -> zmq.Socket:
        """A new XPUB in the mode the auth state asks for, bound at --listen-watch-urls.
        At start a bind error is fatal; after a close the port may still be held for a
        moment, so binding is retried from timers until REBIND_DEADLINE_S."""
        manual = G.manual_mode(self.auth_state)
        mode = {"xpub_manual": 1} if manual else {"xpub_verbose": 1}
        sock = self.socket(zmq.XPUB, handler=self.on_subscription, with_user=True, hwm=self._sndhwm,
                           sndbuf=self._sndbuf, maxmsgsize=G.MAX_TOPIC_BYTES + 1,
                           curve_server=self._curve, **mode)
        self.gate.reset(manual)
        self._pub_gen += 1
        if first:
            for url in self.cfg.listen_watch_urls:
                sock.bind(url)
            return sock
        self.pub = sock
        self._unbound = list(self.cfg.listen_watch_urls)
        self._bind_started = time.monotonic()
        self._bind_rest(self._pub_gen, 0)
        return sock

    def _bind_rest(self, gen: int, attempt: int) -> None:
        if gen != self._pub_gen:
            return
        while self._unbound:
            try:
                self.pub.bind(self._unbound[0])
            except zmq.ZMQError as exc:
                if time.monotonic() - self._bind_started > REBIND_DEADLINE_S:
                    self.log.error("watch_rebind_failed", url=self._unbound[0], error=str(exc))
                    raise
                self.call_later(min(0.2, 0.002 * 2 ** attempt), lambda: self._bind_rest(gen, attempt + 1))
                return
            self._unbound.pop(0)
        self.log.info("watch_rebound", manual=self.gate.manual, attempts=attempt + 1,
                      auth_revision=self.auth_state.revision if self.auth_state else None)

    def _rebind(self, reason: str) -> None:
        """Drop every subscriber: they reconnect, subscribe again and are decided again."""
        if self.pub is None:
            return  # not bound yet: the first bind takes the current state
        self.close_socket(self.pub)
        self.core.clear()
        self._want_progress = {}
        self.rebinds += 1
        self.log.info("watch_rebind", reason=reason)
        self._bind_pub(first=False)

    # --- auth ----------------------------------------------------------------------
    def _on_auth_state(self, body: object) -> None:
        try:
            if not isinstance(body, list) or len(body) != 1:
                raise errors.InvalidArgument("AUTH_STATE: not [state]")
            new = AuthState.from_wire(body[0])
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

    def _on_auth_tokens(self, body: object) -> None:
        changed = self.tokens.add(body, time.time(), self.cfg.auth_token_ttl)
        self._refresh_keys()
        if self.gate.manual and any(u in self.gate.granted_users for _, u in changed):
            self._rebind_reason = "token_key_reassigned"

    def _refresh_keys(self) -> None:
        self._keys = G.key_map(self.auth_state, self.cfg.client_cert_auth, self.tokens.grants.items())

    def auth_tick(self) -> None:
        if self.auth_state is None:
            self._ids += 1
            self.auth_ctx = self._ids
            try:
                self.storage.send(pack_msg(M.AUTH_STATE_GET, [self.auth_ctx]), zmq.NOBLOCK)
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
            msg_type, body = wire.decode(frames[-1], _EVENTS_TYPES)
        except errors.Malformed as err:
            self.dropped_internal("watch.events", err)
            return
        if msg_type == M.AUTH_STATE:
            self._on_auth_state(body)
            return
        if msg_type == M.AUTH_TOKEN:
            self._on_auth_tokens(body)
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
            self.dropped_internal("watch.storage", err)
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
        elif msg_type == M.AUTH_STATE:
            self._on_auth_state(body)
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
        # Before anything is published: an auth change that arrived with (or before)
        # these events must take effect first.
        if self._rebind_reason is None and self.gate.over_budget \
                and time.monotonic() - self._budget_rebind_at >= BUDGET_REBIND_MIN_S:
            self._budget_rebind_at = time.monotonic()
            self._rebind_reason = "subscription_budget"
        if self._rebind_reason is not None:
            reason, self._rebind_reason = self._rebind_reason, None
            self._rebind(reason)
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
        if self.pub is None:
            return  # not bound yet: nobody can have subscribed
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
                      published=self.published_msgs, dropped=self.dropped, rebinds=self.rebinds)
        if self.gate.refused or self.bad_auth_msgs or self.tokens.invalid:
            # Refusals are counted and logged here, once per period (never per message).
            self.log.warning("watch_subscriptions_refused", refused=dict(self.gate.refused),
                             bad_auth_messages=self.bad_auth_msgs, bad_token_grants=self.tokens.invalid)
            self.gate.refused = {}
            self.bad_auth_msgs = 0
            self.tokens.invalid = 0
        self.dropped = 0
        self.published_msgs = 0
