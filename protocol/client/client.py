"""The quorumkv client: etcd-v3-style KV calls over ZeroMQ (protocol/SPEC.md).

Transport rules:
- one DEALER socket per thread (``threading.local``), connected to one endpoint at a time;
  one request in flight per socket; replies are matched by ``id`` and any other reply
  (a late answer to a request that timed out) is dropped;
- ``zmq.IMMEDIATE`` is set, so a request is only queued once a connection to the
  endpoint is up: "could not send" (nothing left this process) is told apart from "sent,
  no reply" (the outcome of a write is unknown);
- on a timeout the thread's socket is closed and recreated (Lazy Pirate, ZeroMQ guide
  ch. 4), so a stale reply never reaches a later request;
- reads (``range``, ``status``, txns without writes) that time out or get a retryable
  error go to the next endpoint within the overall timeout; writes are never re-sent
  after they may have left: a write that was sent and got no reply raises ``Timeout``
  ("outcome unknown"); a write refused with a retryable error (it did not take effect)
  may go to the next endpoint;
- the zmq context is created lazily, per process: after ``fork`` the child makes its own
  and never touches the parent's sockets;
- security (protocol/client/auth.py): ``server_key`` makes every socket a CURVE client
  (a failed handshake is reported as such, from the socket's monitor events, instead of a
  bare "could not connect"); ``user``/``password`` attach a token to every request, and a
  request refused for its token (``invalid_auth_token``, ``user_empty``,
  ``auth_old_revision``) is resent once with a fresh one;
- ``too_many_requests`` (the member holds too much for this connection, SPEC section 1
  "Per-connection limits"; the request did nothing) is sent again to the same member
  after a short, growing, jittered pause (25 ms doubling to 500 ms), within the overall
  timeout.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import zmq

from protocol.codec import pack, unpack
from protocol.client.auth import REAUTH_ERRORS, Auth, Security
from protocol.errors import (
    AuthOldRevision, Internal, InvalidAuthToken, Malformed, QkvError, Timeout, TooManyRequests, Unavailable,
)
from protocol.client.txn import (
    Compare, Op, Txn, delete_fields, put_fields, range_fields, txn_fields, txn_writes,
)
from protocol.client.types import (
    AlarmResponse, DefragmentResponse,
    CompactResponse, DeleteRangeResponse, HashKVResponse, MemberAddResponse, MemberListResponse,
    MoveLeaderResponse,
    PutResponse, RangeResponse, StatusResponse, TxnResponse,
)

if TYPE_CHECKING:
    from protocol.client.lease import LeaderRouter
    from protocol.client.types import (
        LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    )

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7379"
DEFAULT_TIMEOUT_S = 7.0
BUSY_BACKOFF_S = 0.025  # first pause after too_many_requests; doubles up to BUSY_BACKOFF_MAX_S
BUSY_BACKOFF_MAX_S = 0.5
_ID_MASK = (1 << 64) - 1
_READ_OPS = frozenset({"range", "status", "member_list", "hash_kv", "history", "alarm_list", "defragment",
                       "snapshot", "authenticate", "auth_status", "user_get", "user_list", "role_get",
                       "role_list"})
# Monitor events of a CURVE socket that tell why no connection comes up.
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)


def normalize_endpoint(endpoint: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``tcp://``/``ipc://``/``inproc://`` unchanged.
    ``http://`` (etcd habit) is taken as tcp."""
    e = endpoint.strip()
    if not e:
        raise ValueError("empty endpoint")
    for scheme in ("http://", "https://"):
        if e.startswith(scheme):
            return "tcp://" + e[len(scheme):]
    if "://" in e:
        return e
    return "tcp://" + e


def is_write_request(req: dict[str, Any]) -> bool:
    op = req.get("op")
    if op in _READ_OPS:
        return False
    if op == "txn":
        return txn_writes(req)
    return True


class _ThreadSocket:
    """A thread's DEALER socket, connected to ``endpoint_index``."""

    __slots__ = ("sock", "endpoint_index", "pid", "monitor", "handshake_error", "__weakref__")

    def __init__(self, ctx: zmq.Context, endpoint: str, endpoint_index: int,
                 security: Security | None = None) -> None:
        self.pid = os.getpid()
        self.endpoint_index = endpoint_index
        self.handshake_error: str | None = None
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        self.monitor: zmq.Socket | None = None
        if security is not None and security.curve:
            security.configure(sock)
            self.monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(endpoint)
        self.sock: zmq.Socket | None = sock

    def check_handshake(self) -> str | None:
        """Why the CURVE handshake failed, from the monitor events seen so far (None if
        it did not fail, or security is off)."""
        mon = self.monitor
        if mon is None:
            return self.handshake_error
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                break
            why = handshake_failure(ev["event"], ev["value"])
            # A specific reason (mechanism mismatch, ZAP refusal) is not overwritten by a
            # vaguer one from a later reconnection attempt.
            if why is None or self.handshake_error is None or ev["event"] != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.handshake_error = why
        return self.handshake_error

    def close(self) -> None:
        sock, self.sock = self.sock, None
        mon, self.monitor = self.monitor, None
        if self.pid != os.getpid():
            return
        if sock is not None and mon is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for s in (mon, sock):
            if s is not None:
                try:
                    s.close(linger=0)
                except zmq.ZMQError:
                    pass

    def __del__(self) -> None:  # the owning thread ended without closing it
        self.close()


def handshake_failure(event: int, value: int) -> str | None:
    """A socket monitor event -> why the CURVE handshake failed (None: it did not)."""
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the server refused this client's key (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002):
            return ("the server does not speak CURVE (client security is off there, "
                    "or it is not the server the key belongs to)")
        return f"protocol error {value:#x} in the CURVE handshake"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return ("the server broke off the CURVE handshake: it does not hold the secret key of "
                "the given server key (a wrong server key, or an impostor), or it does not speak CURVE")
    return None


class Client:
    """A thread-safe quorumkv client. ``timeout`` bounds each call, failover included.

    Security (SPEC "Security"): ``server_key`` (the server's Z85 public key, or
    ``"@path"`` of its ``.key`` certificate file) turns CURVE on, with this client's
    keypair from ``key_file`` (a pyzmq secret certificate) or an ephemeral one;
    ``user``/``password`` authenticate and attach a token to every request."""

    def __init__(self, endpoints: Sequence[str] | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, *, user: str | None = None,
                 password: str | None = None, server_key: Any = None,
                 key_file: str | None = None, _security: Security | None = None) -> None:
        if endpoints is None:
            endpoints = [DEFAULT_ENDPOINT]
        elif isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self.endpoints: list[str] = [normalize_endpoint(e) for e in endpoints if e.strip()]
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._preferred = 0  # index into endpoints; moves on after a failure
        self._ctx: zmq.Context | None = None
        self._ctx_pid: int | None = None
        self._local = threading.local()
        self._live: weakref.WeakSet[_ThreadSocket] = weakref.WeakSet()
        self._ids = itertools.count(random.getrandbits(40) + 1)
        self._closed = False
        self._security = _security if _security is not None else Security(
            server_key=server_key, key_file=key_file, user=user, password=password)

    def _derive(self, endpoints: Sequence[str], timeout: float) -> "Client":
        """A client of other endpoints/timeout with this one's keys, user and token (the
        watch's, the lease router's)."""
        return Client(list(endpoints), timeout=timeout, _security=self._security)

    @property
    def auth(self) -> Auth:
        """etcd's Auth API: ``client.auth.user_add(...)``, ``role_grant_permission``..."""
        return Auth(self)

    @property
    def public_key(self) -> str | None:
        """This client's CURVE public key (Z85), None without CURVE."""
        return self._security.public_key

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Close every socket. Calls made after it raise ``Unavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            holders = list(self._live)
            self._ctx = None
        router = self.__dict__.pop("_router", None)
        if router is not None:
            router.close()
        for h in holders:
            h.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- KV API ---------------------------------------------------------------------------
    def put(self, key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False) -> PutResponse:
        req = {"op": "put", **put_fields(key, value, lease, prev_kv, ignore_value, ignore_lease)}
        return PutResponse.from_wire(self._call(req, write=True))

    def get(self, key: Any, range_end: Any = None, *, prefix: bool = False,
            from_key: bool = False, limit: int = 0, revision: int = 0,
            sort_order: str = "NONE", sort_target: str = "KEY", serializable: bool = False,
            keys_only: bool = False, count_only: bool = False, min_mod_revision: int = 0,
            max_mod_revision: int = 0, min_create_revision: int = 0,
            max_create_revision: int = 0) -> RangeResponse:
        req = {"op": "range", **range_fields(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit, revision=revision,
            sort_order=sort_order, sort_target=sort_target, serializable=serializable,
            keys_only=keys_only, count_only=count_only, min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
            max_create_revision=max_create_revision)}
        return RangeResponse.from_wire(self._call(req, write=False))

    range = get

    def delete(self, key: Any, range_end: Any = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False) -> DeleteRangeResponse:
        req = {"op": "delete_range", **delete_fields(key, range_end, prefix=prefix,
                                                     from_key=from_key, prev_kv=prev_kv)}
        return DeleteRangeResponse.from_wire(self._call(req, write=True))

    def txn(self, compare: Iterable[Compare] | None = None, success: Iterable[Op] | None = None,
            failure: Iterable[Op] | None = None) -> Any:
        """With no arguments: a ``Txn`` builder (``.if_().then().else_().commit()``);
        otherwise run the txn and return a ``TxnResponse``."""
        if compare is None and success is None and failure is None:
            return Txn(self)
        req = {"op": "txn", **txn_fields(compare or (), success or (), failure or ())}
        return TxnResponse.from_wire(self._call(req, write=txn_writes(req)))

    def compact(self, revision: int, physical: bool = False) -> CompactResponse:
        req: dict[str, Any] = {"op": "compact", "revision": int(revision)}
        if physical:
            req["physical"] = True
        return CompactResponse.from_wire(self._call(req, write=True))

    def status(self) -> StatusResponse:
        return StatusResponse.from_wire(self._call({"op": "status"}, write=False))

    def member_list(self) -> MemberListResponse:
        return MemberListResponse.from_wire(self._call({"op": "member_list"}, write=False))

    # Membership changes (SPEC section 3): the leader runs them (any member forwards), one
    # at a time; each answers once its conf change is applied. A timeout leaves the outcome
    # unknown (check with member_list), so they are never retried on a timeout.
    def member_add(self, name: str, peer_urls: Sequence[str], is_learner: bool = False,
                   peer_key: str = "") -> MemberAddResponse:
        """`peer_key`: the new member's Z85 peer public key (required by a cluster with peer security)."""
        req = {"op": "member_add", "name": name, "peer_urls": list(peer_urls), "is_learner": bool(is_learner)}
        if peer_key:
            req["peer_key"] = peer_key
        return MemberAddResponse.from_wire(self._call(req, write=True))

    def member_remove(self, member_id: int) -> MemberListResponse:
        return MemberListResponse.from_wire(self._call({"op": "member_remove", "member_id": int(member_id)},
                                                       write=True))

    def member_update(self, member_id: int, peer_urls: Sequence[str]) -> MemberAddResponse:
        return MemberAddResponse.from_wire(self._call(
            {"op": "member_update", "member_id": int(member_id), "peer_urls": list(peer_urls)}, write=True))

    def member_promote(self, member_id: int) -> MemberAddResponse:
        return MemberAddResponse.from_wire(self._call({"op": "member_promote", "member_id": int(member_id)},
                                                      write=True))

    def move_leader(self, target_id: int) -> MoveLeaderResponse:
        """Make ``target_id`` the leader. Only the leader can do it: members that answer
        ``not_leader`` are skipped, so give every endpoint (or the leader's)."""
        return MoveLeaderResponse.from_wire(
            self._call({"op": "move_leader", "target_id": int(target_id)}, write=True))

    def hash_kv(self, revision: int = 0) -> HashKVResponse:
        """A hash of this member's keyspace as of ``revision`` (0 = current): equal on
        every member at the same revision."""
        return HashKVResponse.from_wire(self._call({"op": "hash_kv", "revision": int(revision)}, write=False))

    def alarm_list(self) -> AlarmResponse:
        """Active alarms of the cluster (a linearizable read)."""
        return AlarmResponse.from_wire(self._call({"op": "alarm_list"}, write=False))

    def alarm_disarm(self, member_id: int = 0, alarm: str = "") -> AlarmResponse:
        """Disarm alarms through the log (member_id 0 = every member, alarm "" = every
        type); the result lists the alarms disarmed."""
        req: dict[str, Any] = {"op": "alarm_disarm"}
        if member_id:
            req["member_id"] = int(member_id)
        if alarm:
            req["alarm"] = str(alarm)
        return AlarmResponse.from_wire(self._call(req, write=True))

    def defragment(self) -> DefragmentResponse:
        """Compact this member's RocksDB (give one endpoint per client: it is per member).
        The member keeps serving meanwhile."""
        return DefragmentResponse.from_wire(self._call({"op": "defragment"}, write=False))

    def watch(self, key: Any, range_end: Any = None, *, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False, filters: Iterable[str] = (),
              progress_notify: bool = False, **options: Any) -> Any:
        """Watch a key, a prefix or ``[key, range_end)``: a ``Watcher`` (protocol/client/
        watch.py) to iterate for ``WatchResponse``s; ``start_revision`` 0 = from now.
        ``filters``: ``"NOPUT"``, ``"NODELETE"``. Cancel it, or use it as a context manager."""
        from protocol.client.watch import Watcher

        return Watcher(self, key, range_end, prefix=prefix, start_revision=start_revision,
                       prev_kv=prev_kv, filters=tuple(filters), progress_notify=progress_notify,
                       **options)

    def watch_callback(self, key: Any, callback: Any, range_end: Any = None, **kwargs: Any) -> Any:
        """``watch`` delivering every ``WatchResponse`` to ``callback`` from a background
        thread; returns the started ``Watcher`` (``.cancel()`` stops it)."""
        return self.watch(key, range_end, **kwargs).start(callback)

    # -- leases (SPEC section 3, "Leases"; protocol/client/lease.py) --------------------
    def lease_grant(self, ttl: int, id: int = 0) -> LeaseGrantResponse:
        """Grant a lease of ``ttl`` seconds (raised to the server minimum); ``id`` 0 = the
        server picks one. A ``LeaseGrantResponse(header, id, ttl)``."""
        from protocol.client.types import LEASE_ID_FIELD, LeaseGrantResponse

        req: dict[str, Any] = {"op": "lease_grant", "ttl": int(ttl)}
        if id:
            req[LEASE_ID_FIELD] = int(id)
        return LeaseGrantResponse.from_wire(self._call(req, write=True))

    def lease_revoke(self, id: int) -> LeaseRevokeResponse:
        """Revoke a lease: it and every key attached to it go, in one revision."""
        from protocol.client.types import LEASE_ID_FIELD, LeaseRevokeResponse

        return LeaseRevokeResponse.from_wire(
            self._call({"op": "lease_revoke", LEASE_ID_FIELD: int(id)}, write=True))

    def _lease_router(self) -> LeaderRouter:
        from protocol.client.lease import LeaderRouter

        with self._lock:
            router = self.__dict__.get("_router")
            if router is None:
                router = self.__dict__["_router"] = LeaderRouter(self)
            return router

    def lease_keepalive_once(self, id: int) -> tuple[int, int]:
        """Refresh a lease once, at the leader; ``(id, ttl)``. Raises ``LeaseNotFound``
        for a lease that does not exist (or has expired)."""
        from protocol.errors import LeaseNotFound

        resp = self._lease_router().keepalive(id)
        if resp.ttl <= 0:
            raise LeaseNotFound()
        return resp.id, resp.ttl

    def lease_time_to_live(self, id: int, keys: bool = False) -> LeaseTimeToLiveResponse:
        """A ``LeaseTimeToLiveResponse``: remaining ``ttl`` (-1 when the lease does not
        exist), ``granted_ttl``, and the attached ``keys`` when asked for."""
        return self._lease_router().time_to_live(id, keys)

    def lease_leases(self) -> LeaseLeasesResponse:
        """Every lease: a ``LeaseLeasesResponse`` with ``leases`` = [LeaseStatus(id)]."""
        from protocol.client.types import LeaseLeasesResponse

        return LeaseLeasesResponse.from_wire(self._call({"op": "lease_leases"}, write=False))

    def lease(self, ttl: int, id: int = 0, **kwargs: Any) -> Any:
        """Grant a lease and keep it alive from a background thread (every ttl/3 s, at the
        leader, across failovers) until ``close()``, which revokes it; a context manager."""
        from protocol.client.lease import Lease

        return Lease(self, ttl, id, **kwargs)

    def session(self, ttl: int = 60, **kwargs: Any) -> Any:
        """A ``concurrency.Session``: a lease kept alive for as long as it is open."""
        from protocol.client.concurrency import Session

        return Session(self, ttl=ttl, **kwargs)

    def lock(self, name: Any, *, ttl: int = 60, session: Any = None,
             timeout: float | None = None) -> Any:
        """A fair distributed mutex (``concurrency.Lock``). ``with client.lock("x"):`` waits
        for it; without ``session`` it runs on a session of its own (``ttl``), closed on
        exit. A lock is only as safe as its fencing: see ``Lock.holds_lock()``."""
        from protocol.client.concurrency import Lock

        return Lock.for_client(self, name, ttl=ttl, session=session, timeout=timeout)

    def election(self, name: Any, *, ttl: int = 60, session: Any = None) -> Any:
        """A leader election on the prefix ``name`` (``concurrency.Election``)."""
        from protocol.client.concurrency import Election

        return Election.for_client(self, name, ttl=ttl, session=session)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send any request map (``op`` and its fields; ``id`` is set here) and return the
        reply map; error replies raise. Whether it may be retried follows from ``op``."""
        if not isinstance(req, dict) or "op" not in req:
            raise ValueError("a request is a map with an 'op'")
        body = {k: v for k, v in req.items() if k != "id"}
        return self._call(body, write=is_write_request(body))

    # -- transport ------------------------------------------------------------------------
    def _context(self) -> zmq.Context:
        pid = os.getpid()
        with self._lock:
            if self._closed:
                raise Unavailable("the client is closed")
            if self._ctx is None or self._ctx_pid != pid:
                # The process's one context (pyzmq makes a new one after a fork), never
                # terminated here: a Client dropped without close() leaves its sockets to
                # their own finalizers. A context of its own would be finalized in the same
                # garbage cycle before them, and its term() would wait for them forever.
                self._ctx = zmq.Context.instance()
                self._ctx_pid = pid
                self._live = weakref.WeakSet()
            return self._ctx

    def _socket(self, idx: int) -> _ThreadSocket:
        holder: _ThreadSocket | None = getattr(self._local, "holder", None)
        if holder is not None:
            if holder.pid != os.getpid():
                holder = None  # inherited through fork: abandon, never close or use
            elif holder.sock is not None and holder.endpoint_index == idx:
                return holder
            else:
                self._drop_socket()
        ctx = self._context()
        holder = _ThreadSocket(ctx, self.endpoints[idx], idx, self._security)
        with self._lock:
            self._live.add(holder)
        self._local.holder = holder
        return holder

    def _drop_socket(self) -> None:
        holder = getattr(self._local, "holder", None)
        self._local.holder = None
        if holder is not None:
            holder.close()

    def _fail_over(self, idx: int) -> None:
        with self._lock:
            if self._preferred == idx:
                self._preferred = (idx + 1) % len(self.endpoints)

    def _call(self, req: dict[str, Any], *, write: bool) -> dict[str, Any]:
        """Send ``req`` with this client's token (when it has a user); a refusal for the
        token is answered by authenticating again and resending once (auth.py)."""
        sec = self._security
        if sec.user is None:
            return self._send(req, write=write)
        token, gen = sec.token(self)
        retried: set[type] = set()
        while True:
            body = {**req, "token": token} if token else req
            try:
                return self._send(body, write=write)
            except REAUTH_ERRORS as exc:
                kind = AuthOldRevision if isinstance(exc, AuthOldRevision) else InvalidAuthToken
                if kind in retried:
                    raise
                retried.add(kind)
                token, gen = sec.refresh(self, gen)

    def _send(self, req: dict[str, Any], *, write: bool) -> dict[str, Any]:
        if self._closed:
            raise Unavailable("the client is closed")
        n = len(self.endpoints)
        deadline = time.monotonic() + self.timeout
        start = self._preferred
        refused: set[int] = set()  # endpoints that answered with a retryable error
        attempted: set[int] = set()
        last_error: QkvError | None = None
        handshake: str | None = None  # why a CURVE handshake failed, if one did
        sent_any = False
        busy_pause = BUSY_BACKOFF_S
        for attempt in itertools.count():
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            idx = (start + attempt) % n
            untried = max(1, n - len(attempted))
            attempted.add(idx)
            attempt_deadline = now + remaining / untried
            endpoint = self.endpoints[idx]
            holder = self._socket(idx)
            sock = holder.sock
            assert sock is not None
            rid = next(self._ids) & _ID_MASK
            frame = pack({"id": rid, **req})
            if not _wait(sock, zmq.POLLOUT, attempt_deadline):
                # No connection came up: nothing left this process, any request may go on.
                why = holder.check_handshake()
                self._drop_socket()
                self._fail_over(idx)
                if why:
                    handshake = f"CURVE handshake with {endpoint} failed: {why}"
                    last_error = Unavailable(handshake)
                else:
                    last_error = Unavailable(f"could not connect to {endpoint}")
                continue
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self._drop_socket()
                self._fail_over(idx)
                last_error = Unavailable(f"could not send to {endpoint}")
                continue
            sent_any = True
            reply = _recv_reply(sock, rid, deadline if write else attempt_deadline)
            if reply is None:
                self._drop_socket()  # Lazy Pirate: a late reply must not reach the next call
                self._fail_over(idx)
                if write:
                    raise Timeout(
                        f"no reply from {endpoint} within {self.timeout:g}s: the write was sent "
                        "and its outcome is unknown (it may or may not have taken effect)",
                        endpoint=endpoint, outcome_unknown=True)
                last_error = Timeout(f"no reply from {endpoint} within the timeout",
                                     endpoint=endpoint)
                continue
            if reply.get("ok") is True:
                return reply
            err = QkvError.from_wire(reply.get("error"))
            if isinstance(err, TooManyRequests):
                # The member holds too much for this connection; the request did nothing.
                # Pause, then send it again to the same member (within the deadline).
                last_error = err
                pause = min(busy_pause * (0.5 + random.random() / 2), deadline - time.monotonic())
                if pause <= 0:
                    break
                time.sleep(pause)
                busy_pause = min(BUSY_BACKOFF_MAX_S, busy_pause * 2)
                start -= 1  # the next attempt goes to the same endpoint
                continue
            if not err.retryable:
                raise err
            # The server says it did not take effect: another member may serve it.
            self._fail_over(idx)
            refused.add(idx)
            last_error = err
            if len(refused) >= n:
                raise err
        if isinstance(last_error, Unavailable) and not sent_any:
            raise Unavailable(f"could not connect to any endpoint within {self.timeout:g}s "
                              f"({', '.join(self.endpoints)})" + (f": {handshake}" if handshake else ""))
        if last_error is not None and last_error.retryable:
            raise last_error
        raise Timeout(f"request timed out after {self.timeout:g}s "
                      f"(endpoints: {', '.join(self.endpoints)})")


def _wait(sock: zmq.Socket, event: int, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return bool(sock.poll(0, event))
    return bool(sock.poll(math.ceil(remaining * 1000), event))


def _recv_reply(sock: zmq.Socket, rid: int, deadline: float) -> dict[str, Any] | None:
    """The reply to ``rid``, or None at the deadline; other replies are dropped."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if not sock.poll(math.ceil(remaining * 1000), zmq.POLLIN):
            return None
        frames = sock.recv_multipart(zmq.NOBLOCK)
        try:
            reply = unpack(frames[-1])
        except Malformed as exc:
            raise Internal(f"undecodable reply from the server: {exc.message}") from None
        if not isinstance(reply, dict):
            raise Internal(f"reply is not a map: {reply!r:.200}")
        reply_id = reply.get("id")
        if reply_id == rid:
            return reply
        if reply_id is None and reply.get("ok") is False:
            # The server could not decode our request: it is the only one in flight.
            return reply
        # A late reply to an earlier request: drop it.
