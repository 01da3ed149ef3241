"""The quorumkv client: etcd-v3-style KV calls over ZeroMQ (protocol/SPEC.md).

The protocol is shared with ``AsyncClient`` (protocol/client/aio.py): requests and
replies are built and parsed by protocol/client/calls.py; failover, backoff and the token
policy are protocol/client/core.py's (read its docstring for the rules). This module is
the threaded transport:

- one DEALER socket per thread (``threading.local``), connected to one endpoint (keyed by
  its URL: the endpoint list may change under ``sync``) at a time; one request in flight
  per socket; replies are matched by ``id`` and any other reply (a late answer to a
  request that timed out) is dropped;
- ``zmq.IMMEDIATE`` is set, so a request is only queued once a connection to the
  endpoint is up: "could not send" (nothing left this process) is told apart from "sent,
  no reply" (the outcome of a write is unknown);
- on a timeout the thread's socket is closed and recreated (Lazy Pirate, ZeroMQ guide
  ch. 4), so a stale reply never reaches a later request;
- the zmq context is created lazily, per process: after ``fork`` the child makes its own
  and never touches the parent's sockets;
- security (protocol/client/auth.py): ``server_key`` makes every socket a CURVE client
  (a failed handshake is reported as such, from the socket's monitor events, instead of a
  bare "could not connect"); ``user``/``password`` attach a token to every request, and a
  request refused for its token (``invalid_auth_token``, ``user_empty``,
  ``auth_old_revision``) is resent once with a fresh one;
- ``auto_sync_interval``: a daemon thread (holding the client by weakref) replaces the
  endpoint list from ``member_list`` every interval; a thread whose socket's endpoint
  left the list gets a new socket at its next call.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TypeVar

import zmq

from protocol.client import calls
from protocol.client.base import (  # noqa: F401  (DEFAULT_*, parse_endpoints: re-exported)
    DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S, ClientBase, parse_endpoints,
)
from protocol.client.auth import Auth, Security
from protocol.client.calls import Call, is_write_request  # noqa: F401  (is_write_request: re-exported)
from protocol.client.core import (  # noqa: F401  (BUSY_*: re-exported)
    BUSY_BACKOFF_MAX_S, BUSY_BACKOFF_S, DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S, Failover, Reauth,
    normalize_endpoint, with_token,
)
from protocol.codec import pack, unpack
from protocol.errors import Internal, Malformed, Timeout, Unavailable
from protocol.client.txn import Compare, Op, Txn
from protocol.client.watchcore import MAX_WATCH_SUBSCRIPTIONS
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

T = TypeVar("T")
_ID_MASK = (1 << 64) - 1
# Monitor events of a CURVE socket that tell why no connection comes up.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
_HANDSHAKE_EVENTS = HANDSHAKE_EVENTS


def close_monitored(sock: Any, mon: Any) -> None:
    """Close a DEALER and its handshake monitor (either may be None), linger 0: what they
    hold is dropped. Shared with the asyncio client's connections."""
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


def drain_handshake(mon: zmq.Socket, current: str | None) -> str | None:
    """Read the monitor events waiting on ``mon`` (a sync PAIR socket): why the CURVE
    handshake failed so far (None: it did not, or it succeeded since)."""
    from zmq.utils.monitor import recv_monitor_message

    while True:
        try:
            ev = recv_monitor_message(mon, zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            break
        why = handshake_failure(ev["event"], ev["value"])
        # A specific reason (mechanism mismatch, ZAP refusal) is not overwritten by a
        # vaguer one from a later reconnection attempt.
        if why is None or current is None or ev["event"] != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            current = why
    return current


class _ThreadSocket:
    """A thread's DEALER socket, connected to ``endpoint``."""

    __slots__ = ("sock", "endpoint", "pid", "monitor", "handshake_error", "__weakref__")

    def __init__(self, ctx: zmq.Context, endpoint: str, security: Security | None = None) -> None:
        self.pid = os.getpid()
        self.endpoint = endpoint
        self.handshake_error: str | None = None
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        self.monitor: zmq.Socket | None = None
        if security is not None and security.curve:
            security.configure(sock)
            self.monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        sock.connect(endpoint)
        self.sock: zmq.Socket | None = sock

    def check_handshake(self) -> str | None:
        """Why the CURVE handshake failed, from the monitor events seen so far (None if
        it did not fail, or security is off)."""
        if self.monitor is not None:
            self.handshake_error = drain_handshake(self.monitor, self.handshake_error)
        return self.handshake_error

    def close(self) -> None:
        """Close the socket and its monitor (not after a fork: the parent owns them)."""
        sock, self.sock = self.sock, None
        mon, self.monitor = self.monitor, None
        if self.pid != os.getpid():
            return
        close_monitored(sock, mon)

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


class Client(ClientBase):
    """A thread-safe quorumkv client. ``timeout`` bounds each call, failover and backoff
    included; every call also takes its own ``timeout=``.

    Failover and backoff (protocol/client/core.py): ``backoff_base``/``backoff_max`` pace
    the client once every endpoint has failed in a row. ``auto_sync_interval`` > 0: the
    endpoint list follows ``member_list`` (every interval, from a daemon thread).

    Security (SPEC "Security"): ``server_key`` (the server's Z85 public key, or
    ``"@path"`` of its ``.key`` certificate file) turns CURVE on, with this client's
    keypair from ``key_file`` (a pyzmq secret certificate) or an ephemeral one;
    ``user``/``password`` authenticate and attach a token to every request.

    ``max_watch_subscriptions``: the distinct watched topics one watch connection (SUB) to
    an endpoint carries; past it the client's watchers there open another one. Keep it at
    most the nodes' ``--max-watch-subscriptions`` (default 1,000), which refuse the rest."""

    def __init__(self, endpoints: Sequence[str] | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, *, user: str | None = None,
                 password: str | None = None, server_key: Any = None,
                 key_file: str | None = None, auto_sync_interval: float = 0.0,
                 backoff_base: float = DEFAULT_BACKOFF_BASE_S,
                 backoff_max: float = DEFAULT_BACKOFF_MAX_S,
                 max_watch_subscriptions: int = MAX_WATCH_SUBSCRIPTIONS,
                 _security: Security | None = None) -> None:
        self._lock = threading.Lock()
        self._setup(endpoints, timeout, user=user, password=password, server_key=server_key,
                    key_file=key_file, auto_sync_interval=auto_sync_interval,
                    backoff_base=backoff_base, backoff_max=backoff_max,
                    max_watch_subscriptions=max_watch_subscriptions, security=_security,
                    lock=self._lock)
        self._ctx: zmq.Context | None = None
        self._ctx_pid: int | None = None
        self._local = threading.local()
        self._live: weakref.WeakSet[_ThreadSocket] = weakref.WeakSet()
        self._stop_sync = threading.Event()
        if self.auto_sync_interval > 0:
            threading.Thread(target=_auto_sync, args=(weakref.ref(self), self._stop_sync,
                                                      self.auto_sync_interval),
                             name="qkv-auto-sync", daemon=True).start()

    def _derive(self, endpoints: Sequence[str], timeout: float) -> "Client":
        """A client of other endpoints/timeout with this one's keys, user and token (the
        watch's, the lease router's); it has its own backoff."""
        return Client(list(endpoints), timeout=timeout, **self._derived_options())

    @property
    def auth(self) -> Auth:
        """etcd's Auth API: ``client.auth.user_add(...)``, ``role_grant_permission``..."""
        return Auth(self)

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Close every socket and stop auto-sync. Calls made after it raise ``Unavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            holders = list(self._live)
            self._ctx = None
        self._stop_sync.set()
        watch = sys.modules.get("protocol.client.watch")
        if watch is not None:  # its watchers end now, not when their hub next looks
            watch.close_hubs(self)
        router = self.__dict__.pop("_router", None)
        if router is not None:
            router.close()
        for h in holders:
            h.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- endpoints ------------------------------------------------------------------------
    def sync(self, *, timeout: float | None = None) -> list[str]:
        """Replace the endpoint list by the client URLs of the started, non-learner members
        (``member_list`` now, clientv3's Sync); an empty answer keeps the list. Returns the
        new list."""
        asked = self._asked_endpoint()
        self._adopt_members(self.member_list(timeout=timeout).members, asked)
        return list(self.endpoints)  # a thread's socket to a dropped one goes at its next call

    # -- KV API ---------------------------------------------------------------------------
    def put(self, key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False, *,
            timeout: float | None = None) -> PutResponse:
        """Set ``key`` to ``value`` (attached to ``lease`` if not 0); ``prev_kv``: return
        the previous pair; ``ignore_value``/``ignore_lease``: keep the current one."""
        return self._run(calls.put(key, value, lease, prev_kv, ignore_value, ignore_lease), timeout)

    def get(self, key: Any, range_end: Any = None, *, prefix: bool = False,
            from_key: bool = False, limit: int = 0, revision: int = 0,
            sort_order: str = "NONE", sort_target: str = "KEY", serializable: bool = False,
            keys_only: bool = False, count_only: bool = False, min_mod_revision: int = 0,
            max_mod_revision: int = 0, min_create_revision: int = 0,
            max_create_revision: int = 0, timeout: float | None = None) -> RangeResponse:
        """A key, ``[key, range_end)``, a ``prefix`` or every key ``from_key`` on (a
        ``RangeResponse``); linearizable unless ``serializable``."""
        return self._run(calls.get(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit, revision=revision,
            sort_order=sort_order, sort_target=sort_target, serializable=serializable,
            keys_only=keys_only, count_only=count_only, min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
            max_create_revision=max_create_revision), timeout)

    range = get

    def delete(self, key: Any, range_end: Any = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False,
               timeout: float | None = None) -> DeleteRangeResponse:
        """Delete a key, a range, a ``prefix`` (a ``DeleteRangeResponse``)."""
        return self._run(calls.delete(key, range_end, prefix=prefix, from_key=from_key,
                                      prev_kv=prev_kv), timeout)

    def txn(self, compare: Iterable[Compare] | None = None, success: Iterable[Op] | None = None,
            failure: Iterable[Op] | None = None, *, timeout: float | None = None) -> Any:
        """With no arguments: a ``Txn`` builder (``.if_().then().else_().commit()``);
        otherwise run the txn and return a ``TxnResponse``."""
        if compare is None and success is None and failure is None:
            return Txn(self)
        resp: TxnResponse = self._run(calls.txn(compare, success, failure), timeout)
        return resp

    def compact(self, revision: int, physical: bool = False, *,
                timeout: float | None = None) -> CompactResponse:
        """Compact the key history up to ``revision``."""
        return self._run(calls.compact(revision, physical), timeout)

    def get_prefix(self, prefix: Any, *, timeout: float | None = None, **range_kw: Any) -> RangeResponse:
        """Every key starting with ``prefix`` (``get``'s other options apply)."""
        return self._run(calls.get_prefix(prefix, **range_kw), timeout)

    def delete_prefix(self, prefix: Any, prev_kv: bool = False, *,
                      timeout: float | None = None) -> DeleteRangeResponse:
        """Delete every key starting with ``prefix``."""
        return self._run(calls.delete_prefix(prefix, prev_kv), timeout)

    def put_if_not_exists(self, key: Any, value: Any, lease: int = 0, *,
                          timeout: float | None = None) -> bool:
        """Put ``key`` only if it does not exist (a txn on create_revision == 0); whether
        it was put."""
        return self._run(calls.put_if_not_exists(key, value, lease), timeout)

    def replace(self, key: Any, old: Any, new: Any, *, timeout: float | None = None) -> bool:
        """Set ``key`` to ``new`` only if its value is ``old`` (a txn); whether it was."""
        return self._run(calls.replace(key, old, new), timeout)

    # -- maintenance / cluster ------------------------------------------------------------
    def status(self, *, timeout: float | None = None) -> StatusResponse:
        """The status of the member answering."""
        return self._run(calls.status(), timeout)

    def member_list(self, *, timeout: float | None = None) -> MemberListResponse:
        """The cluster's members."""
        return self._run(calls.member_list(), timeout)

    # Membership changes (SPEC section 3): the leader runs them (any member forwards), one
    # at a time; each answers once its conf change is applied. A timeout leaves the outcome
    # unknown (check with member_list), so they are never retried on a timeout.
    def member_add(self, name: str, peer_urls: Sequence[str], is_learner: bool = False,
                   peer_key: str = "", *, timeout: float | None = None) -> MemberAddResponse:
        """`peer_key`: the new member's Z85 peer public key (required by a cluster with peer security)."""
        return self._run(calls.member_add(name, peer_urls, is_learner, peer_key), timeout)

    def member_remove(self, member_id: int, *, timeout: float | None = None) -> MemberListResponse:
        """Remove a member."""
        return self._run(calls.member_remove(member_id), timeout)

    def member_update(self, member_id: int, peer_urls: Sequence[str], *,
                      timeout: float | None = None) -> MemberAddResponse:
        """Change a member's peer URLs."""
        return self._run(calls.member_update(member_id, peer_urls), timeout)

    def member_promote(self, member_id: int, *, timeout: float | None = None) -> MemberAddResponse:
        """Promote a learner to a voting member."""
        return self._run(calls.member_promote(member_id), timeout)

    def move_leader(self, target_id: int, *, timeout: float | None = None) -> MoveLeaderResponse:
        """Make ``target_id`` the leader. Only the leader can do it: members that answer
        ``not_leader`` are skipped, so give every endpoint (or the leader's)."""
        return self._run(calls.move_leader(target_id), timeout)

    def hash_kv(self, revision: int = 0, *, timeout: float | None = None) -> HashKVResponse:
        """A hash of this member's keyspace as of ``revision`` (0 = current): equal on
        every member at the same revision."""
        return self._run(calls.hash_kv(revision), timeout)

    def alarm_list(self, *, timeout: float | None = None) -> AlarmResponse:
        """Active alarms of the cluster (a linearizable read)."""
        return self._run(calls.alarm_list(), timeout)

    def alarm_activate(self, member_id: int, alarm: str, *, timeout: float | None = None) -> AlarmResponse:
        """Raise ``alarm`` ("NOSPACE" | "CORRUPT") for ``member_id`` through the log, as
        etcd's AlarmRequest ACTIVATE (any id is kept, 0 too; root only under auth); every
        member applies its effects (NOSPACE: writes that add data get ``no_space``). The
        result lists that alarm, also when it was already active."""
        return self._run(calls.alarm_activate(member_id, alarm), timeout)

    def alarm_disarm(self, member_id: int = 0, alarm: str = "", *, exact: bool = False,
                     timeout: float | None = None) -> AlarmResponse:
        """Disarm alarms through the log (member_id 0 = every member, alarm "" = every
        type; ``exact``: only ``member_id``'s alarm of type ``alarm``, member 0 too, as
        etcd's DEACTIVATE); the result lists the alarms disarmed."""
        return self._run(calls.alarm_disarm(member_id, alarm, exact), timeout)

    def defragment(self, *, timeout: float | None = None) -> DefragmentResponse:
        """Compact this member's RocksDB (give one endpoint per client: it is per member).
        The member keeps serving meanwhile."""
        return self._run(calls.defragment(), timeout)

    def request(self, req: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send any request map (``op`` and its fields; ``id`` is set here) and return the
        reply map; error replies raise. Whether it may be retried follows from ``op``."""
        return self._run(calls.request(req), timeout)

    # -- watch (protocol/client/watch.py) -------------------------------------------------
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

    def watch_once(self, key: Any, range_end: Any = None, *, timeout: float | None = None,
                   **watch_kw: Any) -> Any:
        """The first ``Event`` on ``key`` (or the range; ``watch``'s options apply), then
        the watch is cancelled. Raises ``Timeout`` when none comes within ``timeout``,
        ``Compacted`` when the watch's start revision is compacted."""
        from protocol.client.watchcore import first_event

        t = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + t
        with self.watch(key, range_end, **watch_kw) as w:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = first_event(w.get(left))
                except StopIteration:
                    break  # canceled by close()
                if event is not None:
                    return event
        raise Timeout(f"no event within {t:g}s")

    # -- leases (SPEC section 3, "Leases"; protocol/client/lease.py) --------------------
    def lease_grant(self, ttl: int, id: int = 0, *, timeout: float | None = None) -> LeaseGrantResponse:
        """Grant a lease of ``ttl`` seconds (raised to the server minimum); ``id`` 0 = the
        server picks one. A ``LeaseGrantResponse(header, id, ttl)``."""
        return self._run(calls.lease_grant(ttl, id), timeout)

    def lease_revoke(self, id: int, *, timeout: float | None = None) -> LeaseRevokeResponse:
        """Revoke a lease: it and every key attached to it go, in one revision."""
        return self._run(calls.lease_revoke(id), timeout)

    def _lease_router(self) -> LeaderRouter:
        from protocol.client.lease import LeaderRouter

        with self._lock:
            router = self.__dict__.get("_router")
            if router is None:
                router = self.__dict__["_router"] = LeaderRouter(self)
            return router

    def lease_keepalive_once(self, id: int, *, timeout: float | None = None) -> tuple[int, int]:
        """Refresh a lease once, at the leader; ``(id, ttl)``. Raises ``LeaseNotFound``
        for a lease that does not exist (or has expired)."""
        from protocol.errors import LeaseNotFound

        router: Any = self._lease_router()
        resp = router.keepalive(id) if timeout is None else router.keepalive(id, timeout=timeout)
        if resp.ttl <= 0:
            raise LeaseNotFound()
        return resp.id, resp.ttl

    def lease_time_to_live(self, id: int, keys: bool = False, *,
                           timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """A ``LeaseTimeToLiveResponse``: remaining ``ttl`` (-1 when the lease does not
        exist), ``granted_ttl``, and the attached ``keys`` when asked for."""
        router: Any = self._lease_router()
        if timeout is None:
            return router.time_to_live(id, keys)  # type: ignore[no-any-return]
        return router.time_to_live(id, keys, timeout=timeout)  # type: ignore[no-any-return]

    def lease_leases(self, *, timeout: float | None = None) -> LeaseLeasesResponse:
        """Every lease: a ``LeaseLeasesResponse`` with ``leases`` = [LeaseStatus(id)]."""
        return self._run(calls.lease_leases(), timeout)

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

    # -- transport ------------------------------------------------------------------------
    def _run(self, call: Call[T], timeout: float | None) -> T:
        return call.parse(self._call(call.req, write=call.write, timeout=timeout))

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

    def _socket(self, endpoint: str) -> _ThreadSocket:
        holder: _ThreadSocket | None = getattr(self._local, "holder", None)
        if holder is not None:
            if holder.pid != os.getpid():
                holder = None  # inherited through fork: abandon, never close or use
            elif holder.sock is not None and holder.endpoint == endpoint:
                return holder
            else:
                self._drop_socket()
        ctx = self._context()
        holder = _ThreadSocket(ctx, endpoint, self._security)
        with self._lock:
            self._live.add(holder)
        self._local.holder = holder
        return holder

    def _drop_socket(self) -> None:
        holder = getattr(self._local, "holder", None)
        self._local.holder = None
        if holder is not None:
            holder.close()

    def _call(self, req: dict[str, Any], *, write: bool,
              timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` with this client's token (when it has a user) within ``timeout``
        (None: the client's); a refusal for the token is answered by authenticating again
        and resending once (core.Reauth). The ok reply map, or raises a ``QkvError``."""
        t = self.timeout if timeout is None else float(timeout)
        if t <= 0:
            raise ValueError("timeout must be > 0")
        sec = self._security
        if sec.user is None:
            return self._send(req, write=write, timeout=t)
        deadline = time.monotonic() + t
        token, gen = sec.token(self)
        reauth = Reauth()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"request timed out after {t:g}s (authenticating)")
            try:
                return self._send(with_token(req, token), write=write, timeout=left)
            except Exception as exc:
                if not reauth.again(exc):
                    raise
                token, gen = sec.refresh(self, gen)

    def _send(self, req: dict[str, Any], *, write: bool, timeout: float | None = None) -> dict[str, Any]:
        if self._closed:
            raise Unavailable("the client is closed")
        with self._lock:
            endpoints, preferred = self.endpoints, self._preferred
        fo = Failover(endpoints, preferred, write=write, now=time.monotonic(),
                      timeout=self.timeout if timeout is None else timeout,
                      backoff=self._backoff, fail_over=self._fail_over)
        while True:
            a = fo.next(time.monotonic())
            if a is None:  # backing off past this call's deadline: wait it out, then raise
                time.sleep(max(0.0, fo.deadline - time.monotonic()))
                continue
            pause = a.send_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            holder = self._socket(a.endpoint)
            sock = holder.sock
            assert sock is not None
            rid = next(self._ids) & _ID_MASK
            frame = pack({"id": rid, **req})
            if not _wait(sock, zmq.POLLOUT, a.connect_deadline):
                # No connection came up: nothing left this process, any request may go on.
                why = holder.check_handshake()
                self._drop_socket()
                fo.not_connected(why)
                continue
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self._drop_socket()
                fo.not_connected(None)
                continue
            with self._lock:
                self.requests_sent += 1
            fo.sent()
            try:
                reply = _recv_reply(sock, rid, a.reply_deadline)
            except Internal:
                self._drop_socket()  # its reply stream is broken
                raise
            if reply is None:
                self._drop_socket()  # Lazy Pirate: a late reply must not reach the next call
                fo.no_reply()  # raises for a write
                continue
            ok = fo.reply(reply, time.monotonic())
            if ok is not None:
                return ok


def _auto_sync(ref: "weakref.ref[Client]", stop: threading.Event, interval: float) -> None:
    """Every ``interval`` s (the first after one), ``sync()`` the client; ends with it."""
    while not stop.wait(interval):
        client = ref()
        if client is None or client._closed:
            return
        try:
            client.sync(timeout=min(client.timeout, interval))
        except Exception:
            pass  # keep the list; try again at the next interval
        finally:
            client._drop_socket()  # this thread's socket: not kept between syncs
        del client


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
