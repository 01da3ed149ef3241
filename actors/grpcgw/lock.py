"""v3lockpb.Lock: Lock and Unlock, etcd's server-side mutex (etcdserver/api/v3lock/lock.go,
clientv3/concurrency/mutex.go), made of native requests sent AS THE CALLER (its token or
TLS user), so auth holds exactly as for the caller's own KV requests. Also the pieces
election.py shares: ``Caller``, ``Waker``, ``wait_turn``.

The algorithm (etcd's):
- the lock key is ``name + "/" + hex(lease)``; Lock with lease 0 first grants a 60 s lease
  (etcd's session does), which nobody keeps alive;
- one txn: if the key does not exist, put it ("" with the lease) else read it; and read
  the prefix's oldest key (by create revision). Ours is the oldest, or the only one: held;
  locking twice with the same lease is the same acquisition;
- else wait until no key of the prefix created before ours is left (``wait_turn``). A
  waiter wakes when the key just before it changes: the backend client's watch tells
  (a hint only: it watches as this process, and under auth or client CURVE keys it may
  see nothing), and a poll with a growing interval covers a silent watch; what decides
  is always a range read as the caller;
- while waiting, our own key vanishing (the lease expired or was revoked) ends the Lock
  with etcd 3.5's "mutex: session is expired" (etcd 3.4 would go on and report a lock
  whose key is gone);
- a Lock that fails or is cancelled (the client went away, its deadline passed) deletes
  its key, as etcd's Mutex.Lock does, in a task of its own with the caller's identity.

Errors: etcd's lock and election servers return the in-process client's errors, which
gRPC sends as ``Unknown`` with etcd's message ("etcdserver: requested lease not found",
"etcdserver: key is not provided"...): so do we.

Bounds: a blocked Lock is one open RPC (the server's concurrent-RPC bound counts it), one
watch subscription of the backend client and one range read per poll; nothing queues.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from actors.grpcgw.backend import Backend, rpc
from protocol.client.types import prefix_end
from protocol.errors import QkvError
from protocol.etcdpb import v3lock_pb2, v3lock_pb2_grpc

SERVICE = "v3lockpb.Lock"
SESSION_TTL = 60          # etcd's defaultSessionTTL: the lease a lease-0 request gets
CLEANUP_TIMEOUT_S = 5.0   # deleting a cancelled waiter's key
POLL_MIN_S = 0.25         # the poll of a waiter without a working watch, doubling...
POLL_MAX_S = 2.0          # ...up to this
WATCHED_POLL_MAX_S = 5.0  # with a watch attached the poll is only a safety net
WATCH_ATTACH_S = 3.0      # attaching the backend client's watch
WATCH_RETRY_S = 10.0      # after a watch could not attach, poll only for this long
SESSION_EXPIRED = "mutex: session is expired"
T = TypeVar("T")

_background: set[asyncio.Task[Any]] = set()
_watch_broken_until = 0.0


class CallFailed(Exception):
    """A native request of a Lock/Election RPC failed: etcd's status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Caller:
    """Who an RPC is, for ``Backend.call`` (in place of its context): the caller's
    metadata (token) and TLS identity, kept after the RPC ends so that the clean-up of a
    cancelled Lock still sends as the caller; the RPC's deadline while it lasts. A refusal
    raises ``CallFailed`` instead of ending the RPC: the service decides what to answer."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._metadata = tuple(context.invocation_metadata() or ())
        try:
            self._auth = context.auth_context() or {}
        except Exception:
            self._auth = {}
        self.detached = False

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def auth_context(self) -> dict[str, Any]:
        return self._auth  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        if self.detached:
            return CLEANUP_TIMEOUT_S
        return self._context.time_remaining()  # type: ignore[no-any-return]

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise CallFailed(code, message)


async def answer(context: Any, work: Callable[[Caller], Awaitable[T]]) -> T:
    """Run ``work(caller)``; a ``CallFailed`` ends the RPC as etcd's v3lock/v3election
    servers do: status ``Unknown`` with the error's message."""
    try:
        return await work(Caller(context))
    except CallFailed as failed:
        await context.abort(grpc.StatusCode.UNKNOWN, failed.message)
        raise AssertionError("unreachable")  # context.abort raises


def spawn_cleanup(caller: Caller, b: Backend, req: dict[str, Any]) -> None:
    """Send ``req`` as ``caller`` from a task of its own (the RPC's task is being
    cancelled); failures are dropped (the key then goes with its lease)."""
    caller.detached = True

    async def run() -> None:
        try:
            await b.call(caller, req, timeout=CLEANUP_TIMEOUT_S)
        except (CallFailed, QkvError):
            pass

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


# --- native requests (pure) ---------------------------------------------------------------
def session_key(name: bytes, lease: int) -> bytes:
    """etcd's ``fmt.Sprintf("%s%x", pfx, lease)`` with pfx = name + "/"."""
    return name + b"/" + format(lease, "x").encode()


def grant_session() -> dict[str, Any]:
    return {"op": "lease_grant", "ttl": SESSION_TTL}


def first_created(pfx: bytes) -> dict[str, Any]:
    """etcd's ``Get(pfx, WithFirstCreate()...)``: the prefix's oldest key."""
    return {"key": pfx, "range_end": prefix_end(pfx), "sort_target": "CREATE", "sort_order": "ASCEND", "limit": 1}


def lock_txn(key: bytes, pfx: bytes, lease: int) -> dict[str, Any]:
    """Mutex.Lock's txn: create the key if absent (else read it), and read the owner."""
    return {"op": "txn",
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": key, "create_revision": 0}],
            "success": [{"put": {"key": key, "value": b"", "lease": lease}}, {"range": first_created(pfx)}],
            "failure": [{"range": {"key": key}}, {"range": first_created(pfx)}]}


def turn_range(pfx: bytes, my_rev: int) -> dict[str, Any]:
    """Our key and the newest key created before it: the prefix's keys created at or
    before ``my_rev``, newest first, two of them."""
    return {"op": "range", "key": pfx, "range_end": prefix_end(pfx), "sort_target": "CREATE",
            "sort_order": "DESCEND", "limit": 2, "max_create_revision": my_rev}


def txn_ranges(reply: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The kvs of each range response of a txn reply, in order."""
    out = []
    for item in reply.get("responses") or ():
        body = item.get("range") if isinstance(item, dict) else None
        if isinstance(body, dict):
            out.append(list(body.get("kvs") or ()))
    return out


def my_revision(reply: dict[str, Any]) -> int:
    """The create revision of our key after the lock/campaign txn: the txn's revision when
    it created the key, else the existing key's."""
    if reply.get("succeeded"):
        return int(reply["header"]["revision"])
    mine = txn_ranges(reply)[0]
    return int(mine[0]["create_revision"])


def holds(reply: dict[str, Any], my_rev: int) -> bool:
    """Mutex.Lock's fast path: no owner, or the owner is us."""
    owner = txn_ranges(reply)[-1]
    return not owner or int(owner[0]["create_revision"]) == my_rev


# --- sessions and waiting (as the caller) ----------------------------------------------
async def session_lease(b: Backend, caller: Caller, lease: int) -> int:
    """etcd's ``NewSession(WithLease(lease))``: 0 is a new lease of SESSION_TTL seconds; a
    negative id names no lease here (ours are > 0): etcd's "lease not found"."""
    if lease == 0:
        return int((await b.call(caller, grant_session()))["ID"])
    if lease < 0:
        raise CallFailed(grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
    return lease


class Waker:
    """Wakes a waiter when ``[key, range_end)`` may have changed since ``start_revision``:
    the backend client's watch (a hint: it watches as this process), else, or also, a poll
    interval that grows while nothing happens. The waiter re-reads as the caller."""

    def __init__(self, b: Backend, key: bytes, range_end: bytes, start_revision: int) -> None:
        self.b = b
        self.key, self.range_end, self.start = key, range_end, start_revision
        self.watcher: Any = None
        self.tried = False
        self.poll = POLL_MIN_S

    async def _attach(self) -> None:
        global _watch_broken_until
        self.tried = True
        if time.monotonic() < _watch_broken_until:
            return
        w = self.b.client.watch(self.key, self.range_end or None, start_revision=self.start)

        async def attached() -> None:
            await w

        try:
            await asyncio.wait_for(attached(), WATCH_ATTACH_S)
        except (QkvError, TimeoutError):
            w.cancel()
            _watch_broken_until = time.monotonic() + WATCH_RETRY_S
            return
        except BaseException:
            w.cancel()
            raise
        self.watcher = w

    async def wait(self) -> None:
        """Until a change is hinted or the poll interval passes."""
        if not self.tried:
            await self._attach()
        w, poll = self.watcher, self.poll
        self.poll = min(poll * 2, WATCHED_POLL_MAX_S if w is not None else POLL_MAX_S)
        if w is None:
            await asyncio.sleep(poll)
            return
        deadline = asyncio.get_running_loop().time() + poll
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                resp = await w.get(left)
            except (QkvError, StopAsyncIteration):
                self.close()
                await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
                return
            if resp is None:
                return
            if resp.events or resp.canceled:
                self.poll = POLL_MIN_S
                return

    def close(self) -> None:
        w, self.watcher = self.watcher, None
        if w is not None:
            w.cancel()


async def wait_turn(b: Backend, caller: Caller, pfx: bytes, key: bytes, my_rev: int,
                    expired: str) -> dict[str, Any]:
    """etcd's ``waitDeletes(pfx, my_rev - 1)``: until no key of ``pfx`` created before
    ours is left; the reply of the range that saw none. Raises ``CallFailed(expired)``
    when our own key is gone meanwhile."""
    waker: Waker | None = None
    waiting_on: bytes | None = None
    try:
        while True:
            reply = await b.call(caller, turn_range(pfx, my_rev))
            kvs = list(reply.get("kvs") or ())
            if not kvs or kvs[0].get("key") != key or int(kvs[0].get("create_revision", 0)) != my_rev:
                raise CallFailed(grpc.StatusCode.UNKNOWN, expired)
            if len(kvs) == 1:
                return reply
            before = bytes(kvs[1]["key"])
            if before != waiting_on:
                if waker is not None:
                    waker.close()
                waiting_on = before
                waker = Waker(b, before, b"", int(reply["header"]["revision"]) + 1)
            assert waker is not None
            await waker.wait()
    finally:
        if waker is not None:
            waker.close()


# --- the service -------------------------------------------------------------------------
class LockServicer(v3lock_pb2_grpc.LockServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    async def _lock(self, caller: Caller, name: bytes, lease: int) -> v3lock_pb2.LockResponse:
        b = self.b
        lease = await session_lease(b, caller, lease)
        pfx, key = name + b"/", session_key(name, lease)
        reply = await b.call(caller, lock_txn(key, pfx, lease))
        my_rev = my_revision(reply)
        if not holds(reply, my_rev):
            try:
                reply = await wait_turn(b, caller, pfx, key, my_rev, SESSION_EXPIRED)
            except BaseException:  # failed or cancelled: leave no waiter behind
                spawn_cleanup(caller, b, {"op": "delete_range", "key": key})
                raise
        return v3lock_pb2.LockResponse(header=b.header(reply), key=key)

    @rpc(SERVICE, "Lock")
    async def Lock(self, request: v3lock_pb2.LockRequest, context: Any) -> v3lock_pb2.LockResponse:
        return await answer(context, lambda caller: self._lock(caller, request.name, request.lease))

    @rpc(SERVICE, "Unlock")
    async def Unlock(self, request: v3lock_pb2.UnlockRequest, context: Any) -> v3lock_pb2.UnlockResponse:
        async def unlock(caller: Caller) -> v3lock_pb2.UnlockResponse:
            reply = await self.b.call(caller, {"op": "delete_range", "key": request.key})
            return v3lock_pb2.UnlockResponse(header=self.b.header(reply))
        return await answer(context, unlock)


def add(server: Any, backend: Backend) -> None:
    v3lock_pb2_grpc.add_LockServicer_to_server(LockServicer(backend), server)
