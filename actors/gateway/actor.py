"""The client gateway: a ZeroMQ ROUTER that speaks protocol/SPEC.md to clients.

It validates every request (`protocol.requests.normalize_request`), gives it an internal
id, and routes it:
- writes (put, delete_range, txn, compact) -> consensus as proposals; the reply comes
  back from storage (CLIENT_REPLIES) once the entry is committed and applied;
- serializable ranges -> storage at once;
- linearizable ranges -> consensus for a read index (one per batch of reads), then
  storage, which answers once it has applied that index;
- status -> consensus and storage, combined here;
- maintenance (SPEC "Maintenance and alarms"): before proposing a request that adds data
  (put, txn with a put, lease_grant) the gateway checks the quota as etcd does: backend
  size (storage's, polled every 250 ms) + request size > `--quota-backend-bytes` -> the
  request fails with `no_space` and a NOSPACE alarm for this member is proposed through the
  log; the alarm's effects are applied by storage (mvcc/alarms.py). `defragment` -> storage
  (which compacts RocksDB in a thread). On the leader, `CorruptionChecker` (corruption.py)
  compares the members' hashes every `--corrupt-check-time`;
- leases: `lease_grant` gets its id (random when 0) and its TTL raised to the minimum
  here, BEFORE it is proposed (the log must be deterministic); grant and revoke are
  writes; `lease_leases`, `lease_keepalive` and `lease_timetolive` take the
  linearizable read path: the read index confirms that this member's leader still leads
  (a deposed leader cannot acknowledge a keep-alive that its successor does not honour),
  then storage answers on the leader's node (from its deadlines) and says `not_leader`
  elsewhere.

- auth (issue 11, SPEC "Authentication"; actors/gateway/auth.py): with
  `--client-key-file` the client port is a CURVE server (every key may connect: the
  link is encrypted for everyone; with `--client-cert-auth` a key registered on a user
  is that user). Every request is resolved to who asks (token, client key, or nobody)
  and stamped with (user, cached auth revision) on its log entry or read; storage checks
  it there, the gateway checks what it answers itself. `authenticate` verifies the
  password in a thread, then proposes an `authenticate` entry that carries only the
  token's sha256; the client gets the token once that entry applied. user_add and
  user_change_password entries carry the scrypt hash computed here, never the password.

- per-connection bounds (issue 12, SPEC section 1 "Per-connection limits";
  actors/gateway/conns.py): every request passes `Conns.request` (start now, wait, or
  `too_many_requests`) and every reply `Conns.reply` (send, park, or drop), so what the
  node holds for one client connection is bounded in bytes and a client that does not
  read its replies waits alone; the first drop or refusal of such an episode is logged
  once (`slow_client`, with the peer's address), the counts every 10 s.

Rules: no request is ever left without a reply: each has a deadline, and past it the
client gets `timeout` (a reply the connection's bound drops is the exception: the
client does not read anyway, and times out). Bad input of any kind gets an error reply
and never raises out of a handler. Replies to clients that have gone are dropped
(ROUTER_MANDATORY makes that visible instead of silent). Nothing here blocks: every
send is non-blocking.
"""
from __future__ import annotations

import functools
import math
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast

import zmq

from actors.runtime import entry
from actors.runtime import messages as M
from actors.runtime import metrics
from actors.runtime import security
from actors.runtime import wire
from actors.runtime.actor import Actor
from actors.gateway.conns import ADMIT, REFUSE, Conn, Conns, PeerGone, PipeFull
from actors.gateway.auth import MEMBER, PROXY_MEMBER_ID, TOKEN_SWEEP_S, GatewayAuth, PasswordWork, token_sha256
from actors.gateway.corruption import CorruptionChecker
from actors.gateway.diskguard import DiskGuard
from actors.storage.auth import AuthState
from actors.storage.mvcc import alarms as alarm_rules
from protocol import VERSION, errors
from protocol.codec import pack, unpack
from protocol.requests import ADMIN_OPS, Limits, is_write, normalize_request, request_token

REQUEST_TIMEOUT_S = 5.0
DEFRAG_TIMEOUT_S = 600.0  # a defragment of a large store takes a while; the client's timeout rules
HASH_KV_TIMEOUT_S = 30.0  # a hash of a large keyspace takes seconds (storage runs it in slices)
PHYSICAL_COMPACT_TIMEOUT_S = 600.0  # `compact` with `physical` waits for the background removal
STATUS_POLL_S = 0.25
QUOTA_DEFAULT_BYTES = 2 * 1024**3  # etcd: --quota-backend-bytes 0 means the default
ALARM_RETRY_S = 1.0  # an alarm proposal not yet seen applied is proposed again after this
UINT64_MAX = 2**64 - 1
# Per-connection bounds (conns.py; SPEC section 1 "Per-connection limits").
# The gRPC gateway's connections (on_proxy): their identities inside this actor start with
# PROXY_PREFIX (a client may not choose such a routing id), their zap user is PROXY until the
# request names its user. PROXY holds a control character, which no user name may.
PROXY_PREFIX = b"\xffqkv-grpc:"
_PROXY_LEN = len(PROXY_PREFIX)
PROXY = "\x1bqkv-proxy"
CLIENT_SNDHWM = 128  # messages per client pipe in libzmq (a multipart message counts once)
CLIENT_COPY_THRESHOLD = 8192  # replies of this size or more are sent zero-copy and tracked:
# so the copied (uncounted) replies libzmq holds for one connection are < 128 x 8 KiB = 1 MiB
WAITING_PER_REQUEST = 16  # requests that may wait per connection: 16 x --max-client-requests
SLOW_LOG_PERIOD_S = 10.0
SLOW_LOG_LINES = 5  # slow_client lines per period at most; the others are counted
AUTHENTICATE_ATTEMPTS = 3  # the auth state changed between the password check and the apply: again
METRICS_INTERVAL_S = 1.0  # etcd_server_proposals_pending is set this often
METRICS_FLUSH_S = 0.25  # per-request counts are kept in memory and written this often
# Metrics: a reply's error code is a label only if it is one of ours (else "other"); an
# op name only once the request validated (else "unknown"). Both sets are bounded.
_CODES = frozenset(c.code for c in errors.__dict__.values()
                   if isinstance(c, type) and issubclass(c, errors.QkvError))
# Write requests that fail with these did not get through consensus (etcd's proposals_failed).
_PROPOSAL_FAILED = frozenset(("no_leader", "not_leader", "timeout", "unknown_outcome", "unavailable", "stopping"))
_ERROR_MARK = b"\xa2ok\xc2"  # msgpack "ok": false near the start of a reply frame (reads.client_frame)
# The Cython send under pyzmq's Socket.send (positional: data, flags, copy, track), for
# the per-request sends; the sugar layer only adds options (routing_id, group) not used here.
_zmq_send = zmq.backend.Socket.send
_NOBLOCK_MORE = zmq.NOBLOCK | zmq.SNDMORE


def _auth(auth: Any) -> M.Auth | None:
    """A request's (user, auth_revision) as the CLIENT_READ item carries it."""
    return None if auth is None else M.Auth(*auth)


@dataclass(slots=True)
class Pending:
    identity: bytes
    delimiter: bool  # the client is a REQ socket: echo the empty delimiter frame
    client_id: int | None
    deadline: float
    kind: str  # "write", "read", or the admin op ("status", "member_list", ...)
    epoch: int | None = None  # the consensus epoch its proposal was sent to (None: unknown then)
    status: dict[str, Any] | None = None  # status: the parts answered so far (made by the first)
    auth: Any = None  # None or (user, auth_revision): stamped on its entry or read
    token: str | None = None  # authenticate: the token the client gets once its entry applied
    login: tuple[str, str, Any, int] | None = None  # authenticate: (name, password, key, attempt)
    op: str = "unknown"  # the request's op (a metrics label)
    arrived: float = 0.0  # monotonic time it arrived (qkv_request_duration_seconds)
    # a token barrier (``_await_token``): the request to handle again, as it arrived
    retry: tuple[bytes, bool, bytes, str, float, bool] | None = None


class GatewayActor(Actor):
    role = "gateway"

    def setup(self) -> None:
        cfg = self.cfg
        self.limits = Limits(max_txn_ops=cfg.max_txn_ops, max_txn_keys=cfg.max_txn_keys)
        self.member_id = cfg.member_id
        self.lease_ttl_min_s = math.ceil(1.5 * cfg.election_timeout / 1000.0)
        self._rng = random.SystemRandom()
        self.cluster_id = cfg.cluster_id
        curve_server = None
        self.client_curve: tuple[bytes, bytes, bytes] | None = None
        own_key = None
        if cfg.client_key_file:
            public, secret = security.load_keypair(cfg.client_key_file)
            curve_server = (public, secret, "client")
            # The corruption checker talks to the other members' client ports with this
            # same key pair: one client key for the whole cluster (see corruption.py).
            self.client_curve = (public, secret, public)
            own_key = public.decode()
        self.auth = GatewayAuth(cfg.auth_token_ttl, cfg.client_cert_auth, own_key)
        self.passwords = PasswordWork()
        if curve_server is not None:
            self.start_authenticator("client", self.auth.zap_lookup)
        self.clients = self.socket(
            zmq.ROUTER,
            bind=cfg.listen_client_urls,
            handler=self.on_client,
            maxmsgsize=max(4 * cfg.max_request_bytes, 8 * 1024 * 1024),
            curve_server=curve_server,
            raw=True,  # handler(zmq.Frame list): on_client reads the frame properties it needs
            sndhwm=CLIENT_SNDHWM,
        )
        self.clients.copy_threshold = CLIENT_COPY_THRESHOLD
        # The node's own gRPC gateway (actors/grpcgw/, --listen-grpc-urls) sends its clients'
        # requests here, in the private run dir. Its connections' identities carry
        # PROXY_PREFIX inside this actor (replies go back on this socket), and its requests
        # may name their user (``as_user``: the CN of a verified TLS client certificate).
        self.proxy: zmq.Socket | None = None
        if cfg.listen_grpc_urls:
            self.proxy = self.socket(
                zmq.ROUTER, bind=self.endpoints.gateway_proxy, handler=self.on_proxy,
                maxmsgsize=max(4 * cfg.max_request_bytes, 8 * 1024 * 1024), raw=True, sndhwm=CLIENT_SNDHWM)
            self.proxy.copy_threshold = CLIENT_COPY_THRESHOLD
        self._client_curve_on = curve_server is not None  # a ZAP User-Id exists only then
        self.conns = Conns(
            self._send_frames,
            queue_bytes=cfg.max_client_queue_bytes,
            max_requests=cfg.max_client_requests,
            max_waiting=WAITING_PER_REQUEST * cfg.max_client_requests,
            wait_timeout=REQUEST_TIMEOUT_S,
            on_slow=self._on_slow,
        )
        self._slow_logged = 0  # slow_client lines this period
        self._slow_unlogged = 0  # slow connections not named in a line this period
        self.dropped = wire.Dropped(self.log)  # invalid internal messages (runtime/wire.py)
        self.results = self.socket(zmq.PULL, bind=self.endpoints.gateway_results, handler=self.on_internal)
        self.consensus = self.socket(zmq.DEALER, connect=self.endpoints.consensus, handler=self.on_internal)
        self.storage = self.socket(zmq.DEALER, connect=self.endpoints.storage, handler=self.on_internal)
        # Internal ids start at a random offset so that results meant for an earlier
        # gateway process are never mistaken for ours.
        self._next_id = random.SystemRandom().getrandbits(40) << 20
        self.pending: dict[int, Pending] = {}
        self.propose_batch: list[M.Proposal] = []
        self.read_batch: list[M.ClientReadItem] = []
        self.linear_batch: list[tuple[int, dict]] = []  # (req_id, op): read at one read index
        self.read_index_waiting: dict[int, tuple[float, list[tuple[int, dict]]]] = {}
        # Requests with a token unknown here, to handle again after their barrier (_await_token).
        self.token_retries: list[tuple[bytes, bool, bytes, str, float, bool]] = []
        self.token_barriers = 0
        self.consensus_epoch: int | None = None
        self.consensus_status: M.ConsensusStatus | dict = {}  # {} until consensus answers
        self.raft_term = 0
        self.revision_seen = 0  # the highest store revision this gateway has reported
        self.every(STATUS_POLL_S, self.poll_consensus)
        self.storage_status: M.StorageStatus | dict = {}  # storage's, polled with the consensus status; {} until it answers
        self.quota_bytes = cfg.quota_backend_bytes or QUOTA_DEFAULT_BYTES
        self.alarm_proposed: dict[tuple[int, str], float] = {}
        self.disk = DiskGuard(self.member_id, self.log)  # a full local disk (issue 12): _disk_tick
        self.every(STATUS_POLL_S, self._disk_tick)
        self.corruption: CorruptionChecker | None = None
        if cfg.corrupt_check_time > 0:
            self.corruption = CorruptionChecker(
                self, self._member_urls, lambda: self.consensus_status.get("lead") == self.member_id,
                lambda member: self.propose_alarm(member, alarm_rules.CORRUPT), self.member_id,
                curve=self.client_curve)
            self.every(cfg.corrupt_check_time, self.corruption.tick)
        self.every(0.05, self.expire)
        self.every(SLOW_LOG_PERIOD_S, self._log_dropped)
        self.every(TOKEN_SWEEP_S, self.auth.sweep)
        self.poll_consensus()
        self._send_internal(self.storage, M.AuthStateGet(0))
        # Metrics (actors/runtime/metrics.py): per request only counts in memory (by (op,
        # code), and a latency tally by op), written to the metrics every METRICS_FLUSH_S.
        self._requests_tally = metrics.CounterTally(metrics.requests)
        self._seconds_tallies: dict[str, metrics.HistogramTally] = {}
        self._proposals_failed = 0
        metrics.quota_backend_bytes.set(self.quota_bytes)
        metrics.server_version.labels(VERSION).set(1)
        self.every(METRICS_INTERVAL_S, self._metrics_tick)
        self.every(METRICS_FLUSH_S, self._metrics_flush)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # --- replies -------------------------------------------------------------------
    def _header(self, revision: int, raft_term: int | None = None) -> dict[str, int]:
        return {
            "cluster_id": self.cluster_id,
            "member_id": self.member_id,
            "revision": revision,
            "raft_term": raft_term if raft_term is not None else self.raft_term,
        }

    def _send(self, identity: bytes, delimiter: bool, reply: dict[str, Any], admitted: bool = True) -> None:
        self._to_client(identity, delimiter, pack(reply), admitted)

    def _to_client(self, identity: bytes, delimiter: bool, payload: bytes, admitted: bool = True,
                   now: float | None = None) -> None:
        """Every reply to a client goes here: the connection's bound decides (conns.py)
        whether it is sent, parked until libzmq takes it, or dropped (counted; the client
        times out). `admitted`: it answers a request that was counted in progress; `now`:
        the caller's clock reading, when it has one."""
        frames = [identity, b"", payload] if delimiter else [identity, payload]
        self.conns.reply(identity, frames, time.monotonic() if now is None else now, admitted)

    def _send_frames(self, frames: list[bytes]) -> Any:
        """conns.py's way out: zero-copy and tracked, so that the bytes libzmq holds for a
        connection are known until it lets go of them (small frames are copied: None).
        A reply under the copy threshold (nearly all) goes through the Cython send
        directly: pyzmq's send_multipart and sugar send cost more than the send itself.
        A reply to the gRPC gateway (identity with PROXY_PREFIX) goes out on its socket."""
        sock = self.clients
        if frames[0][:_PROXY_LEN] == PROXY_PREFIX and self.proxy is not None:
            sock = self.proxy
            frames = [frames[0][_PROXY_LEN:], *frames[1:]]
        if len(frames[-1]) < CLIENT_COPY_THRESHOLD:
            try:
                for part in frames[:-1]:
                    _zmq_send(sock, part, _NOBLOCK_MORE, True, False)
                _zmq_send(sock, frames[-1], zmq.NOBLOCK, True, False)
            except zmq.Again:
                raise PipeFull() from None
            except zmq.ZMQError:
                raise PeerGone() from None
            return None
        try:
            tracker = sock.send_multipart(frames, zmq.NOBLOCK, copy=False, track=True)
        except zmq.Again:
            raise PipeFull() from None  # the client does not read (ROUTER_MANDATORY: not silent)
        except zmq.ZMQError:
            raise PeerGone() from None  # EHOSTUNREACH: the client has gone
        return None if tracker is None or tracker.done else tracker

    def _on_slow(self, conn: Conn, reason: str) -> None:
        """A connection's first dropped reply or expired request of an episode: one line,
        rate-limited."""
        if self._slow_logged >= SLOW_LOG_LINES:
            self._slow_unlogged += 1
            return
        self._slow_logged += 1
        self.log.warning("slow_client", reason=reason, identity=conn.identity.hex(), peer=conn.peer or None,
                         user=conn.user or None, held_bytes=conn.held, in_progress=conn.in_progress,
                         waiting=len(conn.waiting), limit_bytes=self.conns.queue_bytes,
                         flag="--max-client-queue-bytes",
                         message="the client does not read its replies: its requests wait, then are refused "
                                 "(too_many_requests); replies over the bound are dropped")

    def _reply_error(self, identity: bytes, delimiter: bool, client_id: int | None, err: errors.QkvError,
                     admitted: bool = True) -> None:
        self._send(identity, delimiter, {"id": client_id, "ok": False, "error": err.to_wire()}, admitted)

    def _finish(self, req_id: int, response: Mapping[str, Any] | None, error: Any, revision: int, raft_term: int) -> None:
        p = self.pending.pop(req_id, None)
        if p is None:
            return  # timed out already, or meant for an earlier gateway process
        if p.retry is not None:  # a token barrier ended (or failed, or timed out): check again
            self.token_retries.append(p.retry)
            return
        if error is not None:
            self._answered(p.op, error.get("code") if isinstance(error, dict) else None, p.arrived, time.monotonic(),
                           p.kind)
            self._send(p.identity, p.delimiter, {"id": p.client_id, "ok": False, "error": error})
            return
        self._answered(p.op, "ok", p.arrived, time.monotonic(), p.kind)
        self.revision_seen = max(self.revision_seen, revision)
        reply = {"id": p.client_id, "ok": True, "header": self._header(revision, raft_term)}
        reply.update(response or {})
        self._send(p.identity, p.delimiter, reply)

    def _fail(self, req_id: int, err: errors.QkvError) -> None:
        self._finish(req_id, None, err.to_wire(), 0, 0)

    # --- client requests -----------------------------------------------------------
    def on_proxy(self, frames: list[zmq.Frame]) -> None:
        """A request from the node's gRPC gateway: handled as a client's (same limits, per
        connection), its user named by the request (``_proxy_user``)."""
        self.on_client(frames, proxy=True)

    def _proxy_user(self, req: dict, identity: bytes) -> str:
        """Who a gRPC gateway request is from: MEMBER on a connection whose routing id
        starts with PROXY_MEMBER_ID (the gRPC actor's own status and watch reads: only the
        node's processes reach this socket, in its private run directory), else the
        ``as_user`` (popped): the CN of the TLS client certificate the gRPC gateway
        verified, taken only with --client-cert-auth, as the user of a registered client
        key is on the client port; "" = nobody."""
        user = req.pop("as_user", "")
        if identity[_PROXY_LEN:_PROXY_LEN + len(PROXY_MEMBER_ID)] == PROXY_MEMBER_ID:
            return MEMBER
        if not isinstance(user, str) or len(user.encode("utf-8", "replace")) > 256 \
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
            raise errors.InvalidArgument("as_user: must be a user name (at most 256 bytes, no control characters)")
        return user if self.cfg.client_cert_auth else ""

    def on_client(self, frames: list[zmq.Frame], proxy: bool = False) -> None:
        """A client's frame: started now, or queued behind the connection's bound
        (conns.py), or refused with too_many_requests. A malformed or oversized frame is
        answered at once (a small refusal; it does no work).

        Frame properties are read only where they exist or matter: the ZAP User-Id with
        CURVE on the client port (without it there is none), the peer's address when the
        connection has no state here yet (the slow_client line names it)."""
        identity = frames[0].bytes
        if proxy:
            identity = PROXY_PREFIX + identity
        elif identity[:_PROXY_LEN] == PROXY_PREFIX:  # a routing id the client set itself: reserved
            self._reply_error(identity, False, None, errors.InvalidArgument(
                "this ZMQ_ROUTING_ID is reserved: set another one, or none"), admitted=False)
            return
        n = len(frames)
        if n == 2:
            delimiter, last = False, frames[1]
        elif n == 3 and not len(frames[1]):
            delimiter, last = True, frames[2]
        else:
            self._reply_error(identity, False, None, errors.Malformed("malformed request: expected one frame"),
                              admitted=False)
            return
        frame = last.bytes
        zap_user = PROXY if proxy else security.frame_user(last) if self._client_curve_on else ""
        now = time.monotonic()
        if len(frame) > self.cfg.max_request_bytes:
            self._handle(identity, delimiter, frame, zap_user, now, admitted=False)
            return
        conns = self.conns
        peer = "" if proxy or identity in conns.conns else security.frame_peer(last)
        item = (identity, delimiter, frame, zap_user, now)
        decision = conns.request(identity, item, len(frame), now, peer, zap_user)
        if decision == ADMIT:
            self._handle(identity, delimiter, frame, zap_user, now)
        elif decision == REFUSE:
            self._refuse(item, f"etcdserver: too many requests: this connection has too many requests "
                               f"waiting behind its limits (--max-client-requests "
                               f"{self.cfg.max_client_requests} in progress, --max-client-queue-bytes "
                               f"{self.cfg.max_client_queue_bytes} of replies held)")

    def _refuse(self, item: tuple, message: str) -> None:
        """too_many_requests for a request that never started (retryable: it did nothing)."""
        identity, delimiter, frame, _user, arrived = item
        self._answered("unknown", errors.TooManyRequests.code, arrived, time.monotonic())
        client_id = None
        try:
            req = unpack(frame)
            cid = req.get("id") if isinstance(req, dict) else None
            if not isinstance(cid, bool) and isinstance(cid, int) and 0 <= cid <= UINT64_MAX:
                client_id = cid
        except errors.QkvError:
            pass
        self._reply_error(identity, delimiter, client_id,
                          errors.TooManyRequests(message, limit_requests=self.cfg.max_client_requests,
                                                 limit_bytes=self.cfg.max_client_queue_bytes),
                          admitted=False)

    def _start_ready(self) -> None:
        """Requests the connection bound let wait and now lets start, or expire."""
        conns = self.conns
        conns.service(time.monotonic())
        while conns.ready or conns.expired:
            while conns.ready:
                self._handle(*conns.ready.popleft())
            while conns.expired:
                self._refuse(conns.expired.popleft(),
                             f"etcdserver: too many requests: the request waited {REQUEST_TIMEOUT_S:g} s behind "
                             f"earlier ones of this connection whose replies are not read "
                             f"(--max-client-queue-bytes {self.cfg.max_client_queue_bytes}, "
                             f"--max-client-requests {self.cfg.max_client_requests})")

    def _handle(self, identity: bytes, delimiter: bool, frame: bytes, zap_user: str, now: float,
                admitted: bool = True, retried: bool = False) -> None:
        """Validate and route one request. `now` is when it arrived (its deadline counts
        from there); `admitted=False` only for frames refused without being counted;
        `retried`: handled again after a token barrier (``_await_token``)."""
        client_id = None
        op: dict | None = None
        token: str | None = None
        arrived_as = zap_user
        try:
            req = unpack(frame)
            if not isinstance(req, dict):
                raise errors.Malformed("malformed request: the frame must hold a msgpack map")
            client_id = req.pop("id", None)
            if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id <= UINT64_MAX:
                bad, client_id = client_id, None
                raise errors.InvalidArgument(f"id must be an unsigned 64-bit integer, got {bad!r}")
            if zap_user == PROXY:
                zap_user = self._proxy_user(req, identity)
            if len(frame) > self.cfg.max_request_bytes:
                raise errors.RequestTooLarge(limit=self.cfg.max_request_bytes)
            op = normalize_request(req, self.limits)
            token = request_token(req)
            auth = self.auth.resolve(token, zap_user, op["op"])
            if not self.auth.known and (op["op"] in ADMIN_OPS or op["op"] == "authenticate"):
                # What only the gateway checks waits for storage's auth state (just started)
                raise errors.Unavailable("the auth state is not loaded yet; retry")
            self.auth.precheck(auth, op)
        except errors.QkvError as err:
            if (isinstance(err, errors.InvalidAuthToken) and not retried and admitted
                    and self.auth.may_be_granted(token)):
                self._await_token(identity, delimiter, frame, arrived_as, now, client_id)
                return
            self._answered(op["op"] if op is not None else "unknown", err.code, now, time.monotonic())
            self._reply_error(identity, delimiter, client_id, err, admitted)
            return
        except Exception as exc:  # a validator bug must not take the gateway down
            self._answered("unknown", "internal", now, time.monotonic())
            self.log.exception("request_rejected_by_bug")
            self._reply_error(identity, delimiter, client_id, errors.Internal(f"{type(exc).__name__}: {exc}"),
                              admitted)
            return
        # (admitted=False came from a frame over --max-request-bytes: refused above)

        req_id = self._new_id()
        name = op["op"]
        if name == "lease_grant":
            if op["id"] == 0:
                op["id"] = self._rng.randrange(1, 2**63)
            op["ttl"] = max(op["ttl"], self.lease_ttl_min_s)
        refused = self.disk.check(op, is_write(op), self.storage_status, self.consensus_status)
        if refused is not None:  # a local disk refuses writes (actors/gateway/diskguard.py)
            self._answered(name, refused.code, now, time.monotonic())
            self._reply_error(identity, delimiter, client_id, refused)
            return
        if alarm_rules.adds_data(op) and self._over_quota(len(frame)):
            self._answered(name, errors.NoSpace.code, now, time.monotonic())
            self._reply_error(identity, delimiter, client_id, errors.NoSpace())
            return
        if name == "authenticate":
            p = Pending(identity, delimiter, client_id, now + REQUEST_TIMEOUT_S, "write", op=name, arrived=now)
            p.login = (op["name"], op["password"], op["key"], 1)
            self.pending[req_id] = p
            self._authenticate(req_id)
            return
        if name in ("user_add", "user_change_password") and isinstance(op.get("password"), str):
            # The log gets the scrypt hash, computed off this thread; then it is proposed.
            self.pending[req_id] = Pending(identity, delimiter, client_id, now + REQUEST_TIMEOUT_S, "write",
                                           auth=auth, op=name, arrived=now)
            try:
                self.passwords.hash(op["password"], functools.partial(self._hashed, req_id, op))
            except errors.QkvError as err:
                self._fail(req_id, err)
            return
        if name in ADMIN_OPS:
            timeout_s = {"defragment": DEFRAG_TIMEOUT_S, "hash_kv": HASH_KV_TIMEOUT_S}.get(name, REQUEST_TIMEOUT_S)
            self.pending[req_id] = Pending(identity, delimiter, client_id, now + timeout_s, name, op=name, arrived=now)
            if name == "status":
                self._send_internal(self.consensus, M.Status(req_id))
                self._send_internal(self.storage, M.StorageStatusReq(req_id))
            elif name == "member_list":
                self._send_internal(self.consensus, M.Status(req_id))
            elif name == "move_leader":
                self._send_internal(self.consensus, M.MoveLeader(req_id, op["target_id"]))
            elif name == "hash_kv":
                self._send_internal(self.storage, M.HashKv(req_id, op["revision"]))
            elif name == "defragment":
                if not self._send_internal(self.storage, M.Defrag(req_id)):
                    self._fail(req_id, errors.Unavailable("storage is not reachable"))
            elif name.startswith("member_"):  # add / remove / update / promote: consensus decides
                if not self._send_internal(self.consensus, M.Member(req_id, op)):
                    self._fail(req_id, errors.Unavailable("consensus is not reachable"))
        elif is_write(op):
            # `compact` with `physical` is answered once storage has removed the history
            # (in background slices): as a defragment, the client's timeout rules.
            timeout_s = PHYSICAL_COMPACT_TIMEOUT_S if name == "compact" and op.get("physical") else REQUEST_TIMEOUT_S
            self.pending[req_id] = Pending(identity, delimiter, client_id, now + timeout_s, "write",
                                           auth=auth, op=name, arrived=now)
            self.propose_batch.append(M.Proposal(req_id, entry.encode(self.member_id, req_id, client_id, auth, op)))
        else:
            self.pending[req_id] = Pending(identity, delimiter, client_id, now + REQUEST_TIMEOUT_S, "read",
                                           auth=auth, op=name, arrived=now)
            if op.get("serializable"):
                self.read_batch.append(M.ClientReadItem(req_id, op, 0, client_id, _auth(auth), 0))
            else:
                self.linear_batch.append((req_id, op))

    def _await_token(self, identity: bytes, delimiter: bool, frame: bytes, zap_user: str, now: float,
                     client_id: int | None) -> None:
        """A token this member does not know may have been granted by an `authenticate`
        entry another member committed and this one has not applied yet (a client that
        authenticated there and came here at once). Wait for a read-index barrier: a
        linearizable `auth_status` read, which storage serves once it applied what the
        leader had committed when asked (and so pushed that entry's token first); then
        handle the request once more, as it arrived (``Pending.retry``)."""
        req_id = self._new_id()
        self.pending[req_id] = Pending(identity, delimiter, client_id, now + REQUEST_TIMEOUT_S, "read",
                                       op="auth_status", arrived=now,
                                       retry=(identity, delimiter, frame, zap_user, now, True))
        self.linear_batch.append((req_id, {"op": "auth_status"}))
        self.token_barriers += 1

    # --- auth: authenticate, password hashes ------------------------------------------
    def _authenticate(self, req_id: int) -> None:
        """Verify the password against the cached state (in a thread), then propose."""
        p = self.pending.get(req_id)
        if p is None or p.login is None:
            return
        st = self.auth.state
        if not st.enabled:
            self._fail(req_id, errors.AuthNotEnabled())
            return
        name, password, _key, _attempt = p.login
        user = st.users.get(name)
        wire = user.password if user is not None else None
        revision = st.revision
        try:
            self.passwords.verify(wire, password, functools.partial(self._verified, req_id, revision=revision))
        except errors.QkvError as err:
            self._fail(req_id, err)

    def _verified(self, req_id: int, ok: Any, revision: int) -> None:
        p = self.pending.get(req_id)
        if p is None or p.login is None:
            return  # timed out meanwhile
        if ok is not True:
            if isinstance(ok, Exception):
                self.log.error("password_verify_failed", error=f"{type(ok).__name__}: {ok}")
            self._fail(req_id, errors.AuthFailed())
            return
        name, _password, key, _attempt = p.login
        p.token = secrets.token_urlsafe(32)
        op = {"op": "authenticate", "name": name, "token_sha256": token_sha256(p.token),
              "auth_revision": revision, "key": key, "issued": int(time.time())}
        # No user yet: authenticate is open to anyone; req_id != 0 marks it a client's.
        self.propose_batch.append(M.Proposal(req_id, entry.encode(self.member_id, req_id, p.client_id, None, op)))

    def _hashed(self, req_id: int, op: dict, result: Any) -> None:
        p = self.pending.get(req_id)
        if p is None:
            return
        if not isinstance(result, dict):
            self.log.error("password_hash_failed", error=f"{type(result).__name__}: {result}")
            self._fail(req_id, errors.Internal("password hashing failed"))
            return
        op = dict(op, password=result)
        self.propose_batch.append(M.Proposal(req_id, entry.encode(self.member_id, req_id, p.client_id, p.auth, op)))

    def _login_reply(self, req_id: int, p: Pending, frame: bytes) -> bytes | None:
        """An applied authenticate entry's reply: add the token, or try again once the
        auth state moved under it (auth_old_revision). None = not answered yet."""
        try:
            reply = unpack(frame)
        except errors.QkvError:
            return frame
        if not isinstance(reply, dict):
            return frame
        if reply.get("ok"):
            reply["token"] = p.token
            return pack(reply)
        code = (reply.get("error") or {}).get("code")
        if code == "auth_old_revision" and p.login is not None and p.login[3] < AUTHENTICATE_ATTEMPTS:
            name, password, key, attempt = p.login
            p.login = (name, password, key, attempt + 1)
            p.token = None
            self.pending[req_id] = p
            self._authenticate(req_id)
            return None
        return frame

    def _on_auth_state(self, msg: M.AuthState) -> None:
        try:
            state = AuthState.from_wire(msg.state)
        except (errors.QkvError, IndexError, TypeError):
            self.log.error("auth_state_undecodable")
            return
        was = self.auth.state.enabled
        self.auth.set_state(state)
        if state.enabled != was:
            self.log.info("auth_enabled" if state.enabled else "auth_disabled", auth_revision=state.revision)

    def _on_auth_token(self, msg: M.AuthToken) -> None:
        try:
            self.auth.grant(msg.items)
        except (TypeError, ValueError):
            self.log.warning("auth_token_dropped")

    # --- quota and alarms ------------------------------------------------------------
    def _over_quota(self, request_bytes: int) -> bool:
        """etcd's quota check before proposing; past the quota, raise NOSPACE (once)."""
        size = self.storage_status.get("db_size", 0)
        if size + request_bytes <= self.quota_bytes:
            return False
        self.propose_alarm(self.member_id, alarm_rules.NOSPACE)
        return True

    def _disk_tick(self) -> None:
        """Issue 12: raise / disarm this member's NOSPACE alarm for a full local disk
        (actors/gateway/diskguard.py decides; server entries, req_id 0)."""
        over_quota = self.storage_status.get("db_size", 0) > self.quota_bytes
        for op in self.disk.tick(time.monotonic(), self.storage_status, self.consensus_status, over_quota):
            self.propose_batch.append(M.Proposal(self._new_id(), entry.encode(self.member_id, 0, None, None, op)))

    def propose_alarm(self, member_id: int, alarm: str) -> None:
        """Raise an alarm through the log, unless storage shows it active or it was proposed
        just now. Nobody waits for the reply (no pending entry): storage's answer is dropped."""
        key = (member_id, alarm)
        if {"member_id": member_id, "alarm": alarm} in self.storage_status.get("alarms", []):
            return
        now = time.monotonic()
        if now - self.alarm_proposed.get(key, -1e9) < ALARM_RETRY_S:
            return
        self.alarm_proposed[key] = now
        self.log.warning("alarm_raised", member=f"{member_id:x}", alarm=alarm,
                         db_size=self.storage_status.get("db_size"), quota=self.quota_bytes)
        op = {"op": "alarm_activate", "member_id": member_id, "alarm": alarm}
        # req_id 0 in the entry: the server's own entry (never a client's; not checked)
        self.propose_batch.append(M.Proposal(self._new_id(), entry.encode(self.member_id, 0, None, None, op)))

    def _member_urls(self) -> list[tuple[int, str]]:
        """(member id, first client URL) of every member whose URLs are known."""
        out = []
        for m in self.consensus_status.get("members", []):
            urls = m.get("client_urls") or []
            if m.get("id") == self.member_id:
                urls = list(self.cfg.advertise_client_urls)
            if urls:
                out.append((m["id"], urls[0]))
        return out

    def _send_internal(self, sock: zmq.Socket, msg: M.Message) -> bool:
        try:
            _zmq_send(sock, wire.pack(msg), zmq.NOBLOCK, True, False)
            return True
        except zmq.ZMQError:
            return False

    def poll_timeout_ms(self) -> int | None:
        if self.conns.ready or self.conns.expired:
            return 0  # requests let start by a reply sent during the last flush
        hint = 5 if self.passwords.busy() else None  # collect finished scrypt runs soon
        due = self.conns.next_due()  # a parked reply to retry, a waiting request to expire
        if due is not None:
            ms = max(0, math.ceil((due - time.monotonic()) * 1000))
            hint = ms if hint is None else min(hint, ms)
        return hint

    def flush(self) -> None:
        self.passwords.done()
        if self.token_retries:
            # After the poll round that brought the barrier's end: storage pushed the token
            # (AUTH_TOKEN, on another socket) before it served the barrier read.
            retries, self.token_retries = self.token_retries, []
            for item in retries:
                self._handle(*item, retried=True)
        self._start_ready()
        if self.propose_batch:
            proposals, self.propose_batch = self.propose_batch, []
            # Tagged with the consensus epoch known now: consensus answers only a rejection
            # or another epoch (_on_propose_ack); a restart fails the rest (_note_epoch).
            epoch = self.consensus_epoch
            if epoch is not None:
                pending = self.pending
                for proposal in proposals:
                    p = pending.get(proposal.req_id)
                    if p is not None:
                        p.epoch = epoch
            if not self._send_internal(self.consensus, M.Propose(epoch or 0, proposals)):
                for proposal in proposals:
                    self._fail(proposal.req_id, errors.Unavailable("consensus is not reachable"))
        if self.read_batch:
            reads, self.read_batch = self.read_batch, []
            if not self._send_internal(self.storage, M.ClientRead(reads)):
                for read in reads:
                    self._fail(read.req_id, errors.Unavailable("storage is not reachable"))
        if self.linear_batch:
            linear, self.linear_batch = self.linear_batch, []
            ctx_id = self._new_id()
            self.read_index_waiting[ctx_id] = (time.monotonic() + REQUEST_TIMEOUT_S, linear)
            self._send_internal(self.consensus, M.ReadIndex(ctx_id))

    # --- internal replies ----------------------------------------------------------
    def on_internal(self, frames: list[bytes]) -> None:
        """Replies of consensus and storage, decoded by runtime/wire.py: an invalid one is
        dropped and counted; a valid one is handled whole (an exception is a bug)."""
        try:
            msg = wire.decode(frames[-1], self._internal_types)
        except errors.Malformed as err:
            self.dropped("gateway.internal", err)
            return
        self._internal_handlers[msg.TYPE](self, msg)

    def _on_client_replies(self, msg: M.ClientReplies) -> None:
        """Finished reply frames from storage: forward them as they are (an error reply,
        "ok": false near its start, is decoded for its code: metrics)."""
        now = time.monotonic()
        for req_id, frame, revision in msg.items:
            p = self.pending.pop(req_id, None)
            if p is None:
                continue  # timed out already, or meant for an earlier gateway process
            if p.retry is not None:  # a token barrier: the token's entry has applied, if committed
                self.token_retries.append(p.retry)
                continue
            reply = frame if p.login is None else self._login_reply(req_id, p, frame)
            if reply is None:
                continue
            self._answered(p.op, _frame_code(reply) if reply.find(_ERROR_MARK, 0, 24) >= 0 else "ok", p.arrived, now,
                           p.kind)
            if revision > self.revision_seen:
                self.revision_seen = revision
            self._to_client(p.identity, p.delimiter, reply, True, now)

    def _on_propose_ack(self, msg: M.ProposeAck) -> None:
        """Rejections, or proposals taken by an epoch other than the one they named."""
        for req_id in msg.accepted:
            p = self.pending.get(req_id)
            if p is not None:
                p.epoch = msg.epoch
        for req_id, error in msg.rejected:
            self._finish(req_id, None, error, 0, 0)
        self._note_epoch(msg.epoch)

    def _on_read_index_resp(self, msg: M.ReadIndexResp) -> None:
        waiting = self.read_index_waiting.pop(msg.ctx_id, None)
        if waiting is None:
            return
        _, batch = waiting
        if msg.error is not None:
            metrics.read_indexes_failed.inc()
            for req_id, _ in batch:
                self._finish(req_id, None, msg.error, 0, 0)
            return
        reads = [M.ClientReadItem(req_id, op, msg.read_index, cast(int, self.pending[req_id].client_id),
                                  _auth(self.pending[req_id].auth), msg.term)
                 for req_id, op in batch if req_id in self.pending]
        if reads and not self._send_internal(self.storage, M.ClientRead(reads)):
            for read in reads:
                self._fail(read.req_id, errors.Unavailable("storage is not reachable"))

    def _on_status_resp(self, msg: M.StatusResp) -> None:
        ctx_id, status = msg
        if ctx_id == 0:
            self.consensus_status = status
            self.raft_term = status.get("term", self.raft_term)
            self._note_epoch(status.get("epoch"))
            return
        p = self.pending.get(ctx_id)
        if p is not None and p.kind == "member_list":
            self._finish(ctx_id, {"members": status["members"]}, None, self.revision_seen, status["term"])
        else:
            self._status_part(ctx_id, "consensus", status)

    def _on_move_leader_resp(self, msg: M.MoveLeaderResp) -> None:
        self._finish(msg.ctx_id, {}, msg.error, self.revision_seen, self.raft_term)

    def _on_hash_kv_resp(self, msg: M.HashKvResp) -> None:
        ctx_id, result, error = msg
        if result is None:
            self._finish(ctx_id, None, error, 0, 0)
        else:
            response = {"hash": result["hash"], "compact_revision": result["compact_revision"],
                        "hash_revision": result["revision"]}
            self._finish(ctx_id, response, None, result["revision"], self.raft_term)

    def _on_storage_status_resp(self, msg: M.StorageStatusResp) -> None:
        ctx_id, status = msg
        if ctx_id == 0:
            self.storage_status = status
            if status.get("auth_revision") != self.auth.state.revision or not self.auth.known:
                self._send_internal(self.storage, M.AuthStateGet(0))  # a push was missed
            return
        self._status_part(ctx_id, "storage", status)

    def _on_defrag_resp(self, msg: M.DefragResp) -> None:
        ctx_id, result, error = msg
        if result is not None and self.storage_status:
            self.storage_status["db_size"] = result["db_size_after"]  # the quota check sees it at once
        self._finish(ctx_id, result, error, self.revision_seen, self.raft_term)

    def _on_member_resp(self, msg: M.MemberResp) -> None:
        self._finish(msg.ctx_id, msg.result, msg.error, self.revision_seen, self.raft_term)

    _internal_handlers: dict[int, Callable[[Any, Any], None]] = {
        M.CLIENT_REPLIES: _on_client_replies,
        M.PROPOSE_ACK: _on_propose_ack,
        M.READ_INDEX_RESP: _on_read_index_resp,
        M.STATUS_RESP: _on_status_resp,
        M.STORAGE_STATUS_RESP: _on_storage_status_resp,
        M.MOVE_LEADER_RESP: _on_move_leader_resp,
        M.HASH_KV_RESP: _on_hash_kv_resp,
        M.DEFRAG_RESP: _on_defrag_resp,
        M.AUTH_STATE: _on_auth_state,
        M.AUTH_TOKEN: _on_auth_token,
        M.MEMBER_RESP: _on_member_resp,
    }
    _internal_types = frozenset(_internal_handlers)

    def _status_part(self, req_id: int, part: str, status: Mapping[str, Any]) -> None:
        p = self.pending.get(req_id)
        if p is None or p.kind != "status":
            return
        parts = p.status = p.status or {}
        parts[part] = status
        if len(parts) < 2:
            return
        c, s = parts["consensus"], parts["storage"]
        response = {
            "version": VERSION,
            "name": self.cfg.name,
            "db_size": s["db_size"],
            "db_size_in_use": s["db_size_in_use"],
            "leader": c["lead"],
            "raft_index": c["commit"],
            "raft_term": c["term"],
            "raft_applied_index": s["applied_index"],
            "is_learner": bool(c.get("is_learner", False)),
            "errors": ([c["faults"]] if c.get("faults") else [])
            + [f"memberID:{a['member_id']} alarm:{a['alarm']}" for a in s.get("alarms", [])],
            "alarms": s.get("alarms", []),
            "db_size_quota": self.quota_bytes,
            "compact_revision": s["compact_revision"],
            "client_urls": list(self.cfg.advertise_client_urls),
            "watch_urls": list(self.cfg.listen_watch_urls),
        }
        self.disk.annotate(response, s, c)  # NOSPACE while this member's disk is full
        self._finish(req_id, response, None, s["revision"], c["term"])

    def _note_epoch(self, epoch: int | None) -> None:
        """Consensus restarted: proposals the old process accepted may or may not commit."""
        if epoch is None or epoch == self.consensus_epoch:
            return
        if self.consensus_epoch is not None:
            lost = [rid for rid, p in self.pending.items() if p.kind == "write" and p.epoch not in (None, epoch)]
            self.log.warning("consensus_restarted", in_flight_writes=len(lost))
            for req_id in lost:
                self._fail(req_id, errors.UnknownOutcome())
        self.consensus_epoch = epoch

    # --- timers --------------------------------------------------------------------
    def poll_consensus(self) -> None:
        self._send_internal(self.consensus, M.Status(0))
        self._send_internal(self.storage, M.StorageStatusReq(0))

    def expire(self) -> None:
        now = time.monotonic()
        for ctx_id in [c for c, (deadline, _) in self.read_index_waiting.items() if deadline <= now]:
            del self.read_index_waiting[ctx_id]
            metrics.read_indexes_failed.inc()
        expired = [rid for rid, p in self.pending.items() if p.deadline <= now]
        for req_id in expired:
            kind = self.pending[req_id].kind
            msg = (
                "etcdserver: request timed out; the write may or may not have taken effect"
                if kind == "write"
                else "etcdserver: request timed out"
            )
            self._fail(req_id, errors.Timeout(msg))

    def _log_dropped(self) -> None:
        """One line per period: replies dropped (client over its bound, or gone)."""
        conns = self.conns
        if conns.dropped:
            metrics.client_replies_dropped.labels("over_bound").inc(conns.dropped)
        if conns.gone:
            metrics.client_replies_dropped.labels("client_gone").inc(conns.gone)
        if conns.refused or conns.expired_count:
            metrics.client_requests_refused.inc(conns.refused + conns.expired_count)
        if conns.dropped or conns.gone or conns.refused or conns.expired_count or self._slow_unlogged:
            self.log.warning("client_replies_dropped", over_bound=conns.dropped, client_gone=conns.gone,
                             refused_too_many=conns.refused, refused_waited=conns.expired_count,
                             slow_clients_not_named=self._slow_unlogged, busy_connections=len(conns.conns),
                             interval_s=SLOW_LOG_PERIOD_S)
            conns.dropped = conns.gone = conns.refused = conns.expired_count = 0
        self._slow_logged = self._slow_unlogged = 0

    # --- metrics (actors/runtime/metrics.py) -------------------------------------------
    def _answered(self, op: str, code: Any, arrived: float, now: float, kind: str = "") -> None:
        """One request answered: qkv_requests_total{op, code} and its latency; a write that
        failed in consensus also counts as a failed proposal."""
        if code != "ok" and code not in _CODES:
            code = "other"
        self._requests_tally.inc((op, code))
        seconds = self._seconds_tallies.get(op)
        if seconds is None:
            seconds = self._seconds_tallies[op] = metrics.HistogramTally(metrics.request_seconds.labels(op))
        seconds.observe(now - arrived)
        if kind == "write" and code in _PROPOSAL_FAILED:
            self._proposals_failed += 1

    def _metrics_flush(self) -> None:
        self._requests_tally.flush()
        for tally in self._seconds_tallies.values():
            tally.flush()
        if self._proposals_failed:
            metrics.proposals_failed.inc(self._proposals_failed)
            self._proposals_failed = 0

    def _metrics_tick(self) -> None:
        metrics.proposals_pending.set(sum(1 for p in self.pending.values() if p.kind == "write"))

    def shutdown(self) -> None:
        # Also after a setup that stopped half-way (a port already in use): only what exists.
        if hasattr(self, "passwords"):
            self.passwords.close()
        for req_id, p in list(getattr(self, "pending", {}).items()):
            if p.kind == "write":
                self._fail(req_id, errors.UnknownOutcome("the node is stopping; the write may or may not take effect"))
            else:
                self._fail(req_id, errors.Stopping())
        if hasattr(self, "_requests_tally"):
            self._metrics_flush()


def _frame_code(frame: bytes) -> Any:
    """The error code of a finished client reply frame ("ok" when it is not an error)."""
    try:
        reply = unpack(frame)
    except errors.QkvError:
        return "other"
    if not isinstance(reply, dict) or reply.get("ok") is not False:
        return "ok"
    error = reply.get("error")
    return error.get("code") if isinstance(error, dict) else "other"
