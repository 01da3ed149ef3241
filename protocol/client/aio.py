"""``AsyncClient``: the quorumkv client for asyncio (``zmq.asyncio``), with the same calls,
arguments, return types and exceptions as ``Client`` (protocol/client/client.py), as
``async def``.

The protocol is not here: requests and replies are built and parsed by
protocol/client/calls.py, failover, backoff and the token policy are
protocol/client/core.py's, shared with the threaded client. This module only moves bytes:

- one DEALER socket per endpoint (keyed by its URL), shared by every task of the client;
  many requests in flight on it, each matched by its ``id`` by the socket's one reader
  task (a future per request); at most ``max_in_flight`` per connection (a semaphore: the
  server's default ``--max-client-requests`` is 64); a late reply to a request that timed
  out is dropped;
- ``zmq.IMMEDIATE``: a request is sent (NOBLOCK) only once the socket is writable, i.e.
  a connection is up, so "could not connect" (nothing left) is told from "sent, no reply"
  (a write's outcome is unknown: ``Timeout(outcome_unknown=True)``, never re-sent);
- a reply stream that breaks (an undecodable frame) fails the requests waiting on that
  socket with ``Internal`` and the socket is replaced; the reader task never dies of it;
- CURVE and auth tokens as the threaded client (``Security`` is shared with derived
  clients; re-authentication is serialized by an ``asyncio.Lock``).

An ``AsyncClient`` belongs to the event loop it is first used on and is not thread-safe:
use it from the tasks of that one loop.
"""
from __future__ import annotations

import asyncio
import random
import sys
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

import zmq
import zmq.asyncio

from protocol.client import calls
from protocol.client.auth import Auth, Security
from protocol.client.calls import Call
from protocol.client.base import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S, ClientBase  # noqa: F401
from protocol.client.client import HANDSHAKE_EVENTS, close_monitored, drain_handshake
from protocol.client.core import (
    DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S, Failover, Reauth, with_token,
)
from protocol.client.txn import Compare, Op, Txn
from protocol.client.watchcore import MAX_WATCH_SUBSCRIPTIONS
from protocol.codec import pack, unpack
from protocol.errors import AuthNotEnabled, Internal, Malformed, QkvError, Timeout, Unavailable

if TYPE_CHECKING:
    from protocol.client.types import (
        AlarmResponse, CompactResponse, DefragmentResponse, DeleteRangeResponse, HashKVResponse,
        LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
        MemberAddResponse, MemberListResponse, MoveLeaderResponse, PutResponse, RangeResponse,
        StatusResponse,
    )

T = TypeVar("T")
_ID_MASK = (1 << 64) - 1
DEFAULT_MAX_IN_FLIGHT = 64


class _Conn:
    """The DEALER socket to one endpoint, shared by the client's tasks, and its reader."""

    def __init__(self, client: "AsyncClient", ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.sem = asyncio.Semaphore(client.max_in_flight)
        self.handshake_error: str | None = None
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        self.monitor: zmq.Socket | None = None
        sec = client._security
        if sec.curve:
            sec.configure(sock)
            addr = f"inproc://qkv-aio-monitor-{id(self):x}-{random.getrandbits(32):x}"
            sock.monitor(addr, HANDSHAKE_EVENTS)
            mon = _sync_ctx(ctx).socket(zmq.PAIR)
            mon.connect(addr)
            self.monitor = mon
        sock.connect(endpoint)
        self.sock: zmq.asyncio.Socket | None = sock
        self.reader = asyncio.get_running_loop().create_task(self._read(), name=f"qkv-reader {endpoint}")

    def check_handshake(self) -> str | None:
        """Why the CURVE handshake failed (None: it did not, or security is off)."""
        if self.monitor is not None:
            self.handshake_error = drain_handshake(self.monitor, self.handshake_error)
        return self.handshake_error

    async def writable(self, timeout: float) -> bool:
        """Whether a connection is up (the socket takes a message) within ``timeout`` s."""
        sock = self.sock
        if sock is None:
            return False
        ms = max(0, int(timeout * 1000 + 0.999))
        try:
            return bool(await sock.poll(ms, zmq.POLLOUT))  # type: ignore[call-arg]
        except zmq.ZMQError:
            return False

    async def _read(self) -> None:
        while self.sock is not None:
            sock = self.sock
            try:
                frames = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:  # closed under us
                self.fail_all(Unavailable(f"connection to {self.endpoint} closed: {exc}"))
                return
            try:
                reply = unpack(frames[-1])
            except Malformed as exc:
                self.fail_all(Internal(f"undecodable reply from {self.endpoint}: {exc.message}"))
                continue
            if not isinstance(reply, dict):
                self.fail_all(Internal(f"reply from {self.endpoint} is not a map: {reply!r:.200}"))
                continue
            rid = reply.get("id")
            if isinstance(rid, int) and not isinstance(rid, bool):
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
                continue  # else: a late reply to a request that timed out: dropped
            if rid is None and reply.get("ok") is False and self.pending:
                # The server could not decode a request of ours and cannot say which. With
                # one in flight it is that one; with several, none of them may be told it
                # failed for sure (a write among them may have taken effect).
                err = QkvError.from_wire(reply.get("error"))
                if len(self.pending) > 1:
                    err = Internal(f"{self.endpoint} refused a request of this connection without "
                                   f"saying which ({err.code}: {err.message}); the outcome of each "
                                   "request then in flight is unknown", outcome_unknown=True)
                self.fail_all(err)

    def fail_all(self, exc: QkvError) -> None:
        """Fail every request waiting on this socket with ``exc``."""
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        """Close the socket and its monitor, stop the reader, fail the waiting requests."""
        sock, self.sock = self.sock, None
        mon, self.monitor = self.monitor, None
        if not self.reader.done():
            self.reader.cancel()
        self.fail_all(Unavailable(f"the connection to {self.endpoint} was closed"))
        close_monitored(sock, mon)


def _sync_ctx(ctx: zmq.asyncio.Context) -> zmq.Context:
    return zmq.Context.shadow(ctx.underlying)


class AsyncAuth(Auth):
    """``AsyncClient.auth``: ``Auth``'s calls (etcd's Auth API), each returning an
    awaitable of the same response: ``await c.auth.user_add("eve", "pw")``."""

    def __init__(self, client: "AsyncClient") -> None:
        self._client = client  # type: ignore[assignment]

    def _do(self, req: dict[str, Any], write: bool, parse: Callable[[dict[str, Any]], Any],
            token: bool = True) -> Any:
        client: AsyncClient = self._client  # type: ignore[assignment]

        async def run() -> Any:
            if token:
                return parse(await client._call(req, write=write))
            client._bind()
            return parse(await client._send(req, write=write, timeout=client.timeout))
        return run()


class AsyncClient(ClientBase):
    """An asyncio quorumkv client: ``Client``'s calls as coroutines (same arguments and
    results). ``timeout`` bounds each call, failover and backoff included; every call also
    takes its own ``timeout=``. ``max_in_flight``: requests in flight per connection.
    ``max_watch_subscriptions``: distinct watched topics per watch connection (``Client``).
    Use it from one event loop (the one it is first used on); it is not thread-safe::

        async with AsyncClient(["tcp://127.0.0.1:7379"]) as c:
            await c.put("foo", "bar")
            (await c.get("foo")).kvs[0].value   # b"bar"
    """

    def __init__(self, endpoints: Sequence[str] | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, *, user: str | None = None,
                 password: str | None = None, server_key: Any = None,
                 key_file: str | None = None, auto_sync_interval: float = 0.0,
                 backoff_base: float = DEFAULT_BACKOFF_BASE_S,
                 backoff_max: float = DEFAULT_BACKOFF_MAX_S,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_watch_subscriptions: int = MAX_WATCH_SUBSCRIPTIONS,
                 _security: Security | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._setup(endpoints, timeout, user=user, password=password, server_key=server_key,
                    key_file=key_file, auto_sync_interval=auto_sync_interval,
                    backoff_base=backoff_base, backoff_max=backoff_max,
                    max_watch_subscriptions=max_watch_subscriptions, security=_security)
        self.max_in_flight = int(max_in_flight)
        self._conns: dict[str, _Conn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._children: list[Any] = []  # objects closed with the client (lease router)

    def _derive(self, endpoints: Sequence[str], timeout: float) -> "AsyncClient":
        """A client of other endpoints/timeout with this one's keys, user and token (its
        own backoff)."""
        return AsyncClient(list(endpoints), timeout=timeout, max_in_flight=self.max_in_flight,
                           **self._derived_options())

    @property
    def auth(self) -> AsyncAuth:
        """etcd's Auth API, awaited: ``await client.auth.user_add(...)``..."""
        return AsyncAuth(self)

    # -- lifecycle ----------------------------------------------------------------------
    async def close(self) -> None:
        """Close every socket and stop auto-sync; requests waiting fail with
        ``Unavailable``, and calls made after it raise ``Unavailable``."""
        if self._closed:
            return
        self._closed = True
        task, self._sync_task = self._sync_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watch = sys.modules.get("protocol.client.aio_watch")
        if watch is not None:  # its watchers end now, not when their hub next looks
            watch.close_hubs(self)
        router = self.__dict__.pop("_router", None)
        if router is not None:
            res = router.close()
            if asyncio.iscoroutine(res):
                await res
        conns, self._conns = self._conns, {}
        for c in conns.values():
            c.close()
        readers = [c.reader for c in conns.values()]
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)

    async def __aenter__(self) -> "AsyncClient":
        self._bind()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._ctx = zmq.asyncio.Context.instance()
            if self.auto_sync_interval > 0 and not self._closed:
                self._sync_task = loop.create_task(
                    _auto_sync(weakref.ref(self), self.auto_sync_interval), name="qkv-auto-sync")
        elif self._loop is not loop:
            raise RuntimeError("an AsyncClient is used from the event loop it was first used on only")
        return loop

    # -- transport ------------------------------------------------------------------------
    def _conn(self, endpoint: str) -> _Conn:
        conn = self._conns.get(endpoint)
        if conn is None or conn.sock is None:
            assert self._ctx is not None
            conn = self._conns[endpoint] = _Conn(self, self._ctx, endpoint)
        return conn

    def _drop_conn(self, conn: _Conn) -> None:
        if self._conns.get(conn.endpoint) is conn:
            del self._conns[conn.endpoint]
        conn.close()

    async def _run(self, call: Call[T], timeout: float | None) -> T:
        return call.parse(await self._call(call.req, write=call.write, timeout=timeout))

    async def _call(self, req: dict[str, Any], *, write: bool,
                    timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` with this client's token, failover and backoff (core.py) within
        ``timeout`` (None: the client's); the ok reply map, or raises a ``QkvError``."""
        loop = self._bind()
        t = self.timeout if timeout is None else float(timeout)
        if t <= 0:
            raise ValueError("timeout must be > 0")
        sec = self._security
        if sec.user is None:
            return await self._send(req, write=write, timeout=t)
        deadline = loop.time() + t
        token, gen = await self._token(deadline, None)
        reauth = Reauth()
        while True:
            try:
                return await self._send(with_token(req, token), write=write,
                                        timeout=_left(loop, deadline))
            except QkvError as exc:
                if not reauth.again(exc):
                    raise
                token, gen = await self._token(deadline, gen)

    async def _refresh_token(self, timeout: float | None = None) -> str:
        """Authenticate again now (the threaded ``Security.refresh(client, gen)``: the
        watch re-registers this client's key on every attach); the new token ("" when auth
        is off). A no-op without a user."""
        if self._security.user is None:
            return ""
        loop = self._bind()
        deadline = loop.time() + (self.timeout if timeout is None else float(timeout))
        token, _ = await self._token(deadline, self._security.current()[1])
        return token

    async def _token(self, deadline: float, stale_gen: int | None) -> tuple[str, int]:
        """The current token, authenticating first when there is none yet or when the
        one of generation ``stale_gen`` was refused (one task authenticates at a time)."""
        sec = self._security
        token, gen = sec.current()
        if token is not None and (stale_gen is None or gen != stale_gen):
            return token, gen
        assert self._loop is not None
        async with sec.async_lock():
            token, gen = sec.current()
            if token is None or (stale_gen is not None and gen == stale_gen):
                try:
                    reply = await self._send(sec.auth_request(), write=False,
                                             timeout=_left(self._loop, deadline))
                except AuthNotEnabled:
                    sec.auth_done(None)
                else:
                    sec.auth_done(reply)
                token, gen = sec.current()
        return token or "", gen

    async def _send(self, req: dict[str, Any], *, write: bool, timeout: float) -> dict[str, Any]:
        if self._closed:
            raise Unavailable("the client is closed")
        loop = self._bind()
        fo = Failover(self.endpoints, self._preferred, write=write, now=loop.time(),
                      timeout=timeout, backoff=self._backoff, fail_over=self._fail_over)
        while True:
            if self._closed:
                raise Unavailable("the client is closed")
            a = fo.next(loop.time())
            if a is None:  # backing off past this call's deadline: wait it out, then raise
                await asyncio.sleep(max(0.0, fo.deadline - loop.time()))
                continue
            delay = a.send_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                raise Unavailable("the client is closed")
            conn = self._conn(a.endpoint)
            if conn.sem.locked():  # max_in_flight requests of this client on it: queue
                try:
                    async with asyncio.timeout_at(fo.deadline):
                        await conn.sem.acquire()
                except TimeoutError:
                    raise Timeout(f"request not sent within {timeout:g}s: {self.max_in_flight} "
                                  f"requests of this client were in flight to {a.endpoint}") from None
            else:
                await conn.sem.acquire()
            try:
                reply = await self._attempt(conn, fo, a.connect_deadline, a.reply_deadline, req, loop)
            finally:
                conn.sem.release()
            if reply is None:
                continue
            ok = fo.reply(reply, loop.time())
            if ok is not None:
                return ok

    async def _attempt(self, conn: _Conn, fo: Failover, connect_deadline: float,
                       reply_deadline: float, req: dict[str, Any],
                       loop: asyncio.AbstractEventLoop) -> dict[str, Any] | None:
        """One send and its reply; None when the failover goes on."""
        rid = next(self._ids) & _ID_MASK
        frame = pack({"id": rid, **req})
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        conn.pending[rid] = fut
        try:
            # NOBLOCK with IMMEDIATE: queued only if a connection is up. If not, wait for
            # one (writability) until the attempt's deadline, then try once more: a send
            # that did not happen is never left pending (it could go out later).
            sent = await _try_send(conn, frame)
            if not sent and await conn.writable(connect_deadline - loop.time()):
                sent = await _try_send(conn, frame)
            if not sent:
                fo.not_connected(conn.check_handshake())
                return None
            self.requests_sent += 1
            fo.sent()
            try:
                async with asyncio.timeout_at(reply_deadline):
                    return await fut
            except TimeoutError:
                fo.no_reply()  # raises for a write
                return None
            except Internal:
                if conn.sock is not None and not conn.pending:
                    self._drop_conn(conn)  # its reply stream broke: start a fresh one
                raise
            except QkvError:
                # Its connection was closed under it (close(), or sync dropped the
                # endpoint): sent and unanswered, like a reply that never came.
                fo.no_reply()  # raises for a write (outcome unknown)
                return None
        finally:
            conn.pending.pop(rid, None)

    # -- endpoints ------------------------------------------------------------------------
    async def sync(self, *, timeout: float | None = None) -> list[str]:
        """Replace the endpoint list by the client URLs of the started, non-learner members
        (``member_list`` now); an empty answer keeps the list. Returns the new list."""
        asked = self._asked_endpoint()
        for ep in self._adopt_members((await self.member_list(timeout=timeout)).members, asked):
            conn = self._conns.pop(ep, None)
            if conn is not None:
                conn.close()
        return list(self.endpoints)

    # -- KV API ---------------------------------------------------------------------------
    async def put(self, key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
                  ignore_value: bool = False, ignore_lease: bool = False, *,
                  timeout: float | None = None) -> PutResponse:
        """Set ``key`` to ``value`` (a ``PutResponse``); see ``Client.put``."""
        return await self._run(calls.put(key, value, lease, prev_kv, ignore_value, ignore_lease), timeout)

    async def get(self, key: Any, range_end: Any = None, *, prefix: bool = False,
                  from_key: bool = False, limit: int = 0, revision: int = 0,
                  sort_order: str = "NONE", sort_target: str = "KEY", serializable: bool = False,
                  keys_only: bool = False, count_only: bool = False, min_mod_revision: int = 0,
                  max_mod_revision: int = 0, min_create_revision: int = 0,
                  max_create_revision: int = 0, timeout: float | None = None) -> RangeResponse:
        """A key, a prefix or a range (a ``RangeResponse``); see ``Client.get``."""
        return await self._run(calls.get(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit, revision=revision,
            sort_order=sort_order, sort_target=sort_target, serializable=serializable,
            keys_only=keys_only, count_only=count_only, min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
            max_create_revision=max_create_revision), timeout)

    range = get

    async def delete(self, key: Any, range_end: Any = None, *, prefix: bool = False,
                     from_key: bool = False, prev_kv: bool = False,
                     timeout: float | None = None) -> DeleteRangeResponse:
        """Delete a key, a prefix or a range (a ``DeleteRangeResponse``)."""
        return await self._run(calls.delete(key, range_end, prefix=prefix, from_key=from_key,
                                            prev_kv=prev_kv), timeout)

    def txn(self, compare: Iterable[Compare] | None = None, success: Iterable[Op] | None = None,
            failure: Iterable[Op] | None = None, *, timeout: float | None = None) -> Any:
        """With no arguments: a ``Txn`` builder whose ``commit()`` is awaited; otherwise an
        awaitable of the ``TxnResponse``."""
        if compare is None and success is None and failure is None:
            return Txn(self)  # type: ignore[arg-type]
        return self._run(calls.txn(compare, success, failure), timeout)

    async def compact(self, revision: int, physical: bool = False, *,
                      timeout: float | None = None) -> CompactResponse:
        """Compact the key history up to ``revision``."""
        return await self._run(calls.compact(revision, physical), timeout)

    async def get_prefix(self, prefix: Any, *, timeout: float | None = None,
                         **range_kw: Any) -> RangeResponse:
        """Every key starting with ``prefix`` (``get``'s other options apply)."""
        return await self._run(calls.get_prefix(prefix, **range_kw), timeout)

    async def delete_prefix(self, prefix: Any, prev_kv: bool = False, *,
                            timeout: float | None = None) -> DeleteRangeResponse:
        """Delete every key starting with ``prefix``."""
        return await self._run(calls.delete_prefix(prefix, prev_kv), timeout)

    async def put_if_not_exists(self, key: Any, value: Any, lease: int = 0, *,
                                timeout: float | None = None) -> bool:
        """Put ``key`` only if it does not exist (a txn); whether it was put."""
        return await self._run(calls.put_if_not_exists(key, value, lease), timeout)

    async def replace(self, key: Any, old: Any, new: Any, *, timeout: float | None = None) -> bool:
        """Set ``key`` to ``new`` only if its value is ``old`` (a txn); whether it was."""
        return await self._run(calls.replace(key, old, new), timeout)

    # -- maintenance / cluster ------------------------------------------------------------
    async def status(self, *, timeout: float | None = None) -> StatusResponse:
        """The status of the member answering."""
        return await self._run(calls.status(), timeout)

    async def member_list(self, *, timeout: float | None = None) -> MemberListResponse:
        """The cluster's members."""
        return await self._run(calls.member_list(), timeout)

    async def member_add(self, name: str, peer_urls: Sequence[str], is_learner: bool = False,
                         peer_key: str = "", *, timeout: float | None = None) -> MemberAddResponse:
        """Add a member (see ``Client.member_add``)."""
        return await self._run(calls.member_add(name, peer_urls, is_learner, peer_key), timeout)

    async def member_remove(self, member_id: int, *, timeout: float | None = None) -> MemberListResponse:
        """Remove a member."""
        return await self._run(calls.member_remove(member_id), timeout)

    async def member_update(self, member_id: int, peer_urls: Sequence[str], *,
                            timeout: float | None = None) -> MemberAddResponse:
        """Change a member's peer URLs."""
        return await self._run(calls.member_update(member_id, peer_urls), timeout)

    async def member_promote(self, member_id: int, *, timeout: float | None = None) -> MemberAddResponse:
        """Promote a learner to a voting member."""
        return await self._run(calls.member_promote(member_id), timeout)

    async def move_leader(self, target_id: int, *, timeout: float | None = None) -> MoveLeaderResponse:
        """Make ``target_id`` the leader (see ``Client.move_leader``)."""
        return await self._run(calls.move_leader(target_id), timeout)

    async def hash_kv(self, revision: int = 0, *, timeout: float | None = None) -> HashKVResponse:
        """A hash of this member's keyspace as of ``revision`` (0 = current)."""
        return await self._run(calls.hash_kv(revision), timeout)

    async def alarm_list(self, *, timeout: float | None = None) -> AlarmResponse:
        """Active alarms of the cluster."""
        return await self._run(calls.alarm_list(), timeout)

    async def alarm_activate(self, member_id: int, alarm: str, *,
                             timeout: float | None = None) -> AlarmResponse:
        """Raise an alarm through the log (see ``Client.alarm_activate``)."""
        return await self._run(calls.alarm_activate(member_id, alarm), timeout)

    async def alarm_disarm(self, member_id: int = 0, alarm: str = "", *, exact: bool = False,
                           timeout: float | None = None) -> AlarmResponse:
        """Disarm alarms (see ``Client.alarm_disarm``)."""
        return await self._run(calls.alarm_disarm(member_id, alarm, exact), timeout)

    async def defragment(self, *, timeout: float | None = None) -> DefragmentResponse:
        """Compact this member's RocksDB (one endpoint per client: it is per member)."""
        return await self._run(calls.defragment(), timeout)

    async def request(self, req: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send any request map and return the reply map; error replies raise."""
        return await self._run(calls.request(req), timeout)

    # -- leases ---------------------------------------------------------------------------
    async def lease_grant(self, ttl: int, id: int = 0, *,
                          timeout: float | None = None) -> LeaseGrantResponse:
        """Grant a lease of ``ttl`` seconds (``id`` 0 = the server picks one)."""
        return await self._run(calls.lease_grant(ttl, id), timeout)

    async def lease_revoke(self, id: int, *, timeout: float | None = None) -> LeaseRevokeResponse:
        """Revoke a lease: it and every key attached to it go, in one revision."""
        return await self._run(calls.lease_revoke(id), timeout)

    async def lease_leases(self, *, timeout: float | None = None) -> LeaseLeasesResponse:
        """Every lease."""
        return await self._run(calls.lease_leases(), timeout)

    def _lease_router(self) -> Any:
        router = self.__dict__.get("_router")
        if router is None:
            from protocol.client.aio_lease import AsyncLeaderRouter  # type: ignore[import-not-found,unused-ignore]

            router = self.__dict__["_router"] = AsyncLeaderRouter(self)
        return router

    async def lease_keepalive_once(self, id: int, *, timeout: float | None = None) -> tuple[int, int]:
        """Refresh a lease once, at the leader; ``(id, ttl)``. Raises ``LeaseNotFound``."""
        from protocol.errors import LeaseNotFound

        resp = await self._lease_router().keepalive(id, timeout=timeout)
        if resp.ttl <= 0:
            raise LeaseNotFound()
        return resp.id, resp.ttl

    async def lease_time_to_live(self, id: int, keys: bool = False, *,
                                 timeout: float | None = None) -> LeaseTimeToLiveResponse:
        """Remaining ``ttl`` (-1: no such lease), ``granted_ttl``, attached ``keys``."""
        return await self._lease_router().time_to_live(id, keys, timeout=timeout)  # type: ignore[no-any-return]

    def lease(self, ttl: int, id: int = 0, **kwargs: Any) -> Any:
        """An ``AsyncLease`` kept alive by a task: ``async with c.lease(10) as lease`` or
        ``lease = await c.lease(10)``; ``await lease.close()`` revokes it."""
        from protocol.client.aio_lease import AsyncLease  # type: ignore[import-not-found,unused-ignore]

        return AsyncLease(self, ttl, id, **kwargs)

    def session(self, ttl: int = 60, **kwargs: Any) -> Any:
        """An ``AsyncSession``: a lease kept alive while it is open."""
        from protocol.client.aio_concurrency import AsyncSession  # type: ignore[import-not-found,unused-ignore]

        return AsyncSession(self, ttl=ttl, **kwargs)

    def lock(self, name: Any, *, ttl: int = 60, session: Any = None,
             timeout: float | None = None) -> Any:
        """An ``AsyncLock`` (``async with c.lock("x"):``)."""
        from protocol.client.aio_concurrency import AsyncLock  # type: ignore[import-not-found,unused-ignore]

        return AsyncLock.for_client(self, name, ttl=ttl, session=session, timeout=timeout)

    def election(self, name: Any, *, ttl: int = 60, session: Any = None) -> Any:
        """An ``AsyncElection`` on the prefix ``name``."""
        from protocol.client.aio_concurrency import AsyncElection  # type: ignore[import-not-found,unused-ignore]

        return AsyncElection.for_client(self, name, ttl=ttl, session=session)

    # -- watch ----------------------------------------------------------------------------
    def watch(self, key: Any, range_end: Any = None, *, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False, filters: Iterable[str] = (),
              progress_notify: bool = False, **options: Any) -> Any:
        """An ``AsyncWatcher``: attached on ``await w`` / ``async with w`` / first
        ``async for``; ``async for resp in w``."""
        from protocol.client.aio_watch import AsyncWatcher  # type: ignore[import-not-found,unused-ignore]

        return AsyncWatcher(self, key, range_end, prefix=prefix, start_revision=start_revision,
                            prev_kv=prev_kv, filters=tuple(filters), progress_notify=progress_notify,
                            **options)

    def watch_callback(self, key: Any, callback: Any, range_end: Any = None, **kwargs: Any) -> Any:
        """``watch`` delivering every ``WatchResponse`` to ``callback`` (a function or a
        coroutine function) from a task; returns the started ``AsyncWatcher``."""
        return self.watch(key, range_end, **kwargs).start(callback)

    async def watch_once(self, key: Any, range_end: Any = None, *, timeout: float | None = None,
                         **watch_kw: Any) -> Any:
        """The first event on ``key`` (or the range), then the watch is cancelled; raises
        ``Timeout`` when none comes within ``timeout``, ``Compacted`` when the watch's
        start revision is compacted."""
        from protocol.client.watchcore import first_event

        loop = self._bind()
        t = self.timeout if timeout is None else float(timeout)
        deadline = loop.time() + t
        try:
            async with asyncio.timeout_at(deadline):
                async with self.watch(key, range_end, **watch_kw) as w:
                    while (left := deadline - loop.time()) > 0:
                        try:
                            event = first_event(await w.get(left))
                        except StopAsyncIteration:
                            break  # canceled by close()
                        if event is not None:
                            return event
        except TimeoutError:
            pass
        raise Timeout(f"no event within {t:g}s")


async def _try_send(conn: _Conn, frame: bytes) -> bool:
    """Send ``frame`` now (NOBLOCK: it completes or fails at once); whether it was queued."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        await sock.send(frame, zmq.NOBLOCK)
    except zmq.ZMQError:  # zmq.Again: no connection (IMMEDIATE) or the queue is full
        return False
    return True


def _left(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    left = deadline - loop.time()
    if left <= 0:
        raise Timeout("the call's deadline passed")
    return left


async def _auto_sync(ref: "weakref.ref[AsyncClient]", interval: float) -> None:
    """Every ``interval`` s (the first after one), ``sync()`` the client; ends with it."""
    while True:
        await asyncio.sleep(interval)
        client = ref()
        if client is None or client._closed:
            return
        try:
            await client.sync(timeout=min(client.timeout, interval))
        except QkvError:
            pass  # keep the list; try again at the next interval
        del client


__all__ = ["AsyncClient", "DEFAULT_ENDPOINT"]
