"""An in-process fake quorumkv member for client tests (protocol/SPEC.md, sections 1-5).

It answers as a node does, from the node's own code: requests are validated by the
gateway's ``normalize_request`` (protocol/requests.py); keys, revisions, txns,
compaction, history and leases are the real ``MVCCStore`` on a ``MemoryBackend``
(actors/storage/mvcc/), each write applied as one log entry would be; reads and replies
are made by the storage actor's own code (actors/storage/reads.py); the watch is the
watch actor's ``Broadcaster`` (actors/watch/channels.py) on an XPUB socket. What a single
in-process member cannot have is stood in for: Raft (every write commits at once), the
gateway's status (a fixed member of a one-member cluster). Leases are the leader
storage's real ``Lessor`` on a monotonic clock. Auth is the node's too: the gateway's
``GatewayAuth`` (tokens, who asks, its pre-check), the store's ``AuthState`` and checks
(every entry at apply, every read before it is served); only the password hashes are
cheaper (scrypt with n=2: a test double must not spend 50 ms per password).

A thread serves a ROUTER socket on a random free loopback port. Switches for fault
injection (set them from the test thread at any time):

- ``error_code``: answer every request (or only ops in ``error_ops``) with this error;
  ``error_applies``: apply the request first (a write that did happen);
- ``drop_replies``: apply requests but never answer (``drop_count``: only that many);
- ``delay_s``: answer after this delay (the request is applied at once);
- ``requests``: every decoded request received, in order (inspect it in tests).

Leases (SPEC section 3): grant and revoke are store entries; keep-alive and time-to-live
are answered by the lessor (``FakeStore.lessor``; ``min_ttl``: the gateway's minimum
TTL); the serving loop applies the ``lease_expire`` entries it proposes, as the leader's
storage does. ``leader_urls``: when set, the leader-only ops
(``lease_keepalive``, ``lease_timetolive``) answer ``not_leader`` with these
``leader_client_urls``. Two servers may share one ``FakeStore`` (``store=``) to stand
for two members of one cluster.

Watch (SPEC section 5): ``history`` and an XPUB socket (``watch_url``, advertised by
``status``): every revision goes out on the subscribed channels, every subscribe is
answered with a progress message, and progress goes out as the watch actor sends it
(channels that published, and a heartbeat slot, every ``PROGRESS_TICK_S``).

Auth (issue 11): ``store.auth`` is the store's ``AuthState`` (read it; change it with
``store.auth_change(request, ...)``: requests as a root client sends them, applied as
the server's entries; ``enable_auth()``: a root user and auth on). Tokens are
``fake-token.<n>``. ``forget_tokens()`` stands for a restarted gateway;
``old_revision_count``: answer that many requests with ``auth_old_revision``.
``FakeServer(curve=True)``: both sockets are CURVE servers (``server_key``: the public
key, ``impostor=True``: it holds another secret than the key it advertises).

Usage: ``with FakeServer() as srv: Client([srv.endpoint])``. ``stop()`` joins the thread
and closes the socket and its context. Test setup writes through ``srv.store.put``;
``srv.store.kv`` is the current key -> KeyValue map (a copy, read from the store).
"""
from __future__ import annotations

import hashlib
import heapq
import os
import threading
import time
from typing import Any

import zmq

from actors.gateway.auth import GatewayAuth, token_sha256
from actors.storage import reads
from actors.storage.auth import AuthState, verify_password
from actors.storage.lessor import Lessor, LessorConfig
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc.store import SERVER
from actors.watch.actor import PROGRESS_TICK_S
from actors.watch.channels import Broadcaster, Channel
from protocol.codec import unpack
from protocol.errors import (
    AuthFailed, AuthNotEnabled, AuthOldRevision, LeaseNotFound, Malformed, NotLeader, QkvError, UnknownOp,
)
from protocol.requests import (
    AUTH_READ_OPS, LEASE_LEADER_OPS, Limits, is_write, normalize_request, request_token,
)

CLUSTER_ID = 0x1234_5678_9ABC_DEF0
MEMBER_ID = 0x2E12_59D4_15F2_A040
RAFT_TERM = 2
# Reads the storage actor answers itself (actors/storage/reads.py), as a node's storage does.
STORAGE_READ_OPS = frozenset(("range", "history", "lease_leases", "alarm_list", *AUTH_READ_OPS))
TOKEN_TTL_S = 300  # the gateway's --auth-token-ttl default
_ALL_KEYS = {"op": "range", "key": b"\x00", "range_end": b"\x00", "revision": 0, "limit": 0,
             "sort_order": "NONE", "sort_target": "KEY", "serializable": True, "keys_only": False,
             "count_only": False, "min_mod_revision": 0, "max_mod_revision": 0,
             "min_create_revision": 0, "max_create_revision": 0}


def cheap_hash(password: str) -> dict[str, Any]:
    """A password hash wire map as passwords.hash_password makes, with the cheapest scrypt
    parameters the store accepts (n=2, r=1, p=1): verify_password checks it the same way."""
    salt = os.urandom(16)
    return {"alg": "scrypt", "n": 2, "r": 1, "p": 1, "salt": salt,
            "hash": hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2, r=1, p=1, dklen=32)}


def _hashed(op: dict[str, Any]) -> dict[str, Any]:
    """What the gateway proposes for an op with a password: its hash, never the password."""
    if op["op"] in ("user_add", "user_change_password") and isinstance(op.get("password"), str):
        return {**op, "password": cheap_hash(op["password"])}
    return op


class FakeStore:
    """One cluster's applied state: the real ``MVCCStore`` on a ``MemoryBackend``, every
    write one entry (``write``), plus what a leader's storage keeps in memory (the
    lessor) and the gateways' token table (``gateway``, shared: a token works on every
    member). Lock ``lock`` around every use from another thread."""

    def __init__(self) -> None:
        self.mvcc = MVCCStore(MemoryBackend())
        self.limits = Limits()
        # The leader's lessor, promoted at once (a one-member cluster that always leads).
        self.lessor: Lessor[None] = Lessor(LessorConfig(tick_s=0.01, revokes_per_s=10_000, silence_s=float("inf")))
        self.lessor.leadership(time.monotonic(), True, RAFT_TERM, 0)
        self.lessor.promote(time.monotonic(), [])
        self.min_ttl = 2
        self.next_lease = 0x694D_77AA_9E38_2600
        self.lock = threading.RLock()
        self.gateway = GatewayAuth(TOKEN_TTL_S, cert_auth=False, own_client_key=None)
        self.gateway.set_state(self.mvcc.auth)
        self._tokens = 0

    # -- what tests read and set up ------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.mvcc.current_revision

    @property
    def compact_revision(self) -> int:
        return self.mvcc.compact_revision

    @property
    def auth(self) -> AuthState:
        """The store's auth state (read only: change it with ``auth_change``)."""
        return self.mvcc.auth

    @property
    def kv(self) -> dict[bytes, dict[str, Any]]:
        """Every live key's KeyValue at the current revision (a copy)."""
        with self.lock:
            return {kv["key"]: kv for kv in self.mvcc.range(_ALL_KEYS)["kvs"]}

    @property
    def leases(self) -> dict[int, int]:
        """Every lease's granted TTL by id."""
        with self.lock:
            return {lease_id: ttl for lease_id, ttl, _ in self.mvcc.leases()}

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Test setup: a put as a client's would be; the new revision."""
        with self.lock:
            self.write(normalize_request({"op": "put", "key": key, "value": value, "lease": lease},
                                         self.limits))
            return self.revision

    def auth_change(self, *requests: dict[str, Any]) -> None:
        """Test setup: auth requests (``{"op": "user_add", "name": ..., "password": ...}``)
        validated and hashed as the gateway does, applied as the server's own entries
        (not checked: whatever the auth state, as a root would)."""
        with self.lock:
            for req in requests:
                self.write(normalize_request(req, self.limits))

    def header(self) -> dict[str, Any]:
        return {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID, "revision": self.revision,
                "raft_term": RAFT_TERM}

    # -- entries -------------------------------------------------------------------------
    def write(self, op: dict[str, Any], auth: Any = SERVER) -> tuple[dict[str, Any], int]:
        """Apply a normalized write as the next log entry with its ``auth`` (None, ``(user,
        auth_revision)`` or SERVER: the store checks it), committed at once:
        ``(response, revision)``, or its error raised. What the gateway does before
        proposing (a lease id, the minimum TTL, a password's hash) and what the leader's
        storage does after (the lessor, physical compaction: at once here; the new auth
        state to the gateway) is done here too."""
        op = _hashed(op)
        if op["op"] == "lease_grant":
            if op["id"] == 0:
                self.next_lease += 1
                op = {**op, "id": self.next_lease}
            op = {**op, "ttl": max(op["ttl"], self.min_ttl)}
        (res,) = self.mvcc.apply([(self.mvcc.applied_index + 1, op, auth)])
        if self.mvcc.auth is not self.gateway.state:
            self.gateway.set_state(self.mvcc.auth)  # storage's AUTH_STATE push
        if res.error is not None:
            raise res.error
        if op["op"].startswith("lease_"):
            self.lessor.applied(time.monotonic(), [op])
        elif op["op"] == "compact":
            while self.mvcc.compaction_pending:
                self.mvcc.compact_step(10_000)
        return res.response or {}, res.revision

    def expire_leases(self) -> None:
        """The leader's expiry: a ``lease_expire`` entry for every lease past its deadline."""
        _replies, ops = self.lessor.tick(time.monotonic())
        for op in ops:
            try:
                self.write(op)
            except LeaseNotFound:
                pass  # revoked meanwhile: the lessor forgot it when the revoke applied

    def authenticate(self, op: dict[str, Any]) -> dict[str, Any]:
        """The gateway's authenticate: check the password against the auth state, apply the
        ``authenticate`` entry (refused if the state moved meanwhile), grant the token."""
        st = self.mvcc.auth
        if not st.enabled:
            raise AuthNotEnabled()
        user = st.users.get(op["name"])
        if not verify_password(user.password if user is not None else None, op["password"]):
            raise AuthFailed()
        self._tokens += 1
        token = f"fake-token.{self._tokens}"
        issued = int(time.time())
        self.write({"op": "authenticate", "name": op["name"], "token_sha256": token_sha256(token),
                    "auth_revision": st.revision, "key": op["key"], "issued": issued}, None)
        self.gateway.grant([[token_sha256(token), op["name"], issued, op["key"]]])
        return {"token": token}

    def lease_leader_op(self, op: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        """``lease_keepalive`` / ``lease_timetolive`` as the leader's storage answers them:
        the real Lessor (no checkpoints here, so a keep-alive never waits)."""
        (reply,) = self.lessor.request(time.monotonic(), None, op["op"], op["id"])
        return reads.lease_answer(self.mvcc, reply, bool(op.get("keys")))

    def read(self, op: dict[str, Any]) -> tuple[dict[str, Any] | None, Any, int]:
        """A read as the storage actor serves it: ``(response, error wire, revision)``."""
        revision = self.mvcc.current_revision
        try:
            return reads.read(self.mvcc, op), None, revision
        except QkvError as err:
            return None, err.to_wire(), revision


class FakeServer:
    def __init__(self, host: str = "127.0.0.1", store: FakeStore | None = None, *,
                 curve: bool = False, impostor: bool = False) -> None:
        self.store = store if store is not None else FakeStore()
        self.leader_urls: list[str] | None = None  # set: leader-only ops answer not_leader
        self.error_code: str | None = None
        self.error_ops: set[str] | None = None
        self.error_applies = False
        self.drop_replies = False
        self.drop_count: int | None = None  # with drop_replies: drop only this many
        self.delay_s = 0.0
        self.replies_sent = 0  # replies that left (tests wait on it)
        self.requests: list[dict[str, Any]] = []
        self.version = "3.4.23-fake"
        self.old_revision_count = 0
        self.server_key: str | None = None
        secret = None
        if curve:
            public, secret = zmq.curve_keypair()
            self.server_key = public.decode()
            if impostor:  # advertise one key, hold the secret of another
                _, secret = zmq.curve_keypair()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        if secret is not None:
            self._sock.curve_server = True
            self._sock.curve_secretkey = secret
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.address = f"{host}:{port}"
        self._pub = self._ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        if secret is not None:
            self._pub.curve_server = True
            self._pub.curve_secretkey = secret
        self.watch_url = f"tcp://{host}:{self._pub.bind_to_random_port(f'tcp://{host}')}"
        self._watch = Broadcaster(position=self.store.revision)
        self._tick = 0
        self._progress_at = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"fakeserver-{port}", daemon=True)
        self._delayed: list[tuple[float, int, list[bytes]]] = []
        self._seq = 0

    def __enter__(self) -> "FakeServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "FakeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close(linger=0)
        self._pub.close(linger=0)
        self._ctx.term()

    def forget_tokens(self) -> None:
        """What a restarted gateway does: every token becomes unknown."""
        with self.store.lock:
            self.store.gateway.tokens.clear()

    def enable_auth(self, root_password: str = "rootpw") -> None:
        """A root user with the root role, and auth on (test setup shortcut)."""
        with self.store.lock:
            if "root" not in self.store.auth.users:
                self.store.auth_change({"op": "user_add", "name": "root", "password": root_password})
            self.store.auth_change({"op": "user_grant_role", "name": "root", "role": "root"},
                                   {"op": "auth_enable"})

    @property
    def channels(self) -> set[bytes]:
        """The topics of the watch channels subscribed now."""
        return set(self._watch.channels.copy())  # dict.copy is atomic: the loop changes it

    def ops_received(self, op: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.get("op") == op)

    # -- the serving loop --------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._pub, zmq.POLLIN)
        while not self._stop.is_set():
            timeout_ms = 20
            if self._delayed:
                wait = self._delayed[0][0] - time.monotonic()
                timeout_ms = max(0, min(timeout_ms, int(wait * 1000) + 1))
            if poller.poll(timeout_ms):
                while True:
                    try:
                        sub = self._pub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_subscription(sub)
                while True:
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(frames)
            with self.store.lock:
                self.store.expire_leases()
                self._publish()
            now = time.monotonic()
            if now - self._progress_at >= PROGRESS_TICK_S:
                self._progress_at = now
                self._progress_tick()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, out = heapq.heappop(self._delayed)
                self._send(out)

    # -- watch (the watch actor's Broadcaster) -------------------------------------------
    def _on_subscription(self, msg: bytes) -> None:
        if not msg:
            return
        topic = msg[1:]
        if msg[0] == 0:
            self._watch.unsubscribe(topic)
            return
        with self.store.lock:
            self._publish()  # the channel starts at the current revision
        ch = self._watch.subscribe(topic)
        if ch is not None:
            self._send_watch(self._watch.progress([ch]))

    def _progress_tick(self) -> None:
        """As the watch actor's: the channels that published, and one heartbeat slot."""
        self._tick += 1
        chans: list[Channel] = self._watch.take_dirty()
        chans += self._watch.heartbeat_slot(self._tick)
        self._send_watch(self._watch.progress(chans))

    def _publish(self) -> None:
        """Publish every revision made since the last call, from the store's history
        (store locked)."""
        watch, mvcc = self._watch, self.store.mvcc
        assert watch.position is not None
        if not watch.channels:  # nobody subscribed: nothing to read or send
            watch.skip_to(mvcc.current_revision)
            return
        if watch.position < mvcc.compact_revision:  # compacted before it went out: the
            watch.skip_to(mvcc.compact_revision)      # channels show the gap (SPEC section 5)
        for revision, events in mvcc.events_between(watch.position, mvcc.current_revision):
            self._send_watch(watch.publish(revision, [[e.type, e.kv, e.prev_kv] for e in events]))

    def _send_watch(self, messages: list[tuple[bytes, bytes]]) -> None:
        for topic, payload in messages:
            self._pub.send_multipart([topic, payload])

    # -- requests ------------------------------------------------------------------------
    def _send(self, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away (ROUTER_MANDATORY) or its queue is full
        else:
            self.replies_sent += 1

    def _frame(self, client_id: Any, response: dict[str, Any] | None, error: Any,
               revision: int | None = None) -> bytes:
        """The reply frame, made by the storage actor's own code."""
        rev = self.store.revision if revision is None else revision
        return reads.client_frame(client_id, response, error, cluster_id=CLUSTER_ID, member_id=MEMBER_ID,
                                  revision=rev, raft_term=RAFT_TERM)

    def _handle(self, frames: list[bytes]) -> None:
        ident, envelope, body = frames[0], frames[1:-1], frames[-1]
        rid = None
        try:
            if len(frames) < 2:
                raise Malformed()
            req = unpack(body)
            if not isinstance(req, dict):
                raise Malformed("malformed request: the frame must hold a msgpack map")
            rid = req.get("id")
            with self._lock:
                self.requests.append(req)
            frame = self._answer(req, rid)
        except QkvError as err:
            frame = self._frame(rid, None, err.to_wire())
        if self.drop_replies:
            if self.drop_count is None:
                return
            if self.drop_count > 0:
                self.drop_count -= 1
                return
        out = [ident, *envelope, frame]
        if self.delay_s > 0:
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + self.delay_s, self._seq, out))
        else:
            self._send(out)

    def _answer(self, req: dict[str, Any], rid: Any) -> bytes:
        """Validate (the gateway's normalize_request), check auth, serve; the reply frame."""
        store = self.store
        fields = {k: v for k, v in req.items() if k != "id"}
        if self.error_code and (self.error_ops is None or req.get("op") in self.error_ops):
            if self.error_applies:
                with store.lock:
                    try:
                        self._serve(normalize_request(fields, store.limits), SERVER)
                    except QkvError:
                        pass
            return self._frame(rid, None, {"code": self.error_code, "message": f"fake: {self.error_code}"})
        with store.lock:  # the gateway's: validate, who asks, pre-check
            op = normalize_request(fields, store.limits)
            auth = store.gateway.resolve(request_token(req), "", op["op"])
            store.gateway.precheck(auth, op)
            if op["op"] == "authenticate":
                return self._frame(rid, store.authenticate(op), None)
        if self.old_revision_count > 0 and store.auth.enabled:
            self.old_revision_count -= 1
            raise AuthOldRevision()
        if self.leader_urls is not None and op["op"] in LEASE_LEADER_OPS:
            raise NotLeader(leader_id=MEMBER_ID + 1, leader_client_urls=list(self.leader_urls))
        with store.lock:
            response, error, revision = self._serve(op, auth)
            self._publish()
        return self._frame(rid, response, error, revision)

    def _serve(self, op: dict[str, Any], auth: Any) -> tuple[dict[str, Any] | None, Any, int]:
        """A normalized op from ``auth`` (store locked): ``(response, error wire, revision)``."""
        store, name = self.store, op["op"]
        if name == "status":
            return self._status(), None, store.revision
        if is_write(op):
            response, revision = store.write(op, auth)
            return response, None, revision
        if name in LEASE_LEADER_OPS or name in STORAGE_READ_OPS:
            if auth != SERVER:
                store.mvcc.check_read(auth, op)  # storage checks every client read
            if name in LEASE_LEADER_OPS:
                return (*store.lease_leader_op(op), store.revision)
            return store.read(op)
        raise UnknownOp(f"unknown op: {name!r} (not served by the fake)")

    def _status(self) -> dict[str, Any]:
        s = self.store
        return {
            "version": self.version, "name": "fake", "db_size": 24576,
            "db_size_in_use": 16384, "leader": MEMBER_ID, "raft_index": s.revision + 7,
            "raft_term": RAFT_TERM, "raft_applied_index": s.revision + 7,
            "is_learner": False, "errors": [], "compact_revision": s.compact_revision,
            "client_urls": [self.endpoint], "watch_urls": [self.watch_url],
        }
