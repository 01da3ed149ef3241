"""Locks and elections, the pure part shared by concurrency.py (threads) and
aio_concurrency.py (asyncio): etcd's client/v3/concurrency mutex.go and election.go as
effect generators (protocol/client/effects.py): no I/O, no clock, no sleeping.

- the lock key is ``f"{name}/{lease_id:x}"``; acquiring puts it (if absent) with the
  session's lease (etcd's tryAcquire txn); holders are ordered by create revision (fair,
  FIFO);
- a waiter watches only its predecessor (the key with the largest create revision below
  its own) for deletion, then looks again (``wait_deletes``): no thundering herd;
- fencing: ``holds_lock()`` is a compare on our key's create revision;
- an election is the same queue; the leader is the key with the lowest create revision
  and its value is the proclamation (campaign, proclaim, resign, leader, observe).
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from protocol.client.effects import WATCH_ENDED, Algo, Call, Now, WatchClose, WatchGet, WatchOpen
from protocol.client.leasecore import parse
from protocol.client.txn import Compare, Op, range_fields, txn_fields, delete_fields, txn_writes
from protocol.client.types import (
    KeyValue, RangeResponse, ResponseHeader, TxnResponse, prefix_end, to_bytes,
)
from protocol.errors import Internal, QkvError

DEFAULT_SESSION_TTL = 60
L = TypeVar("L", bound="LockCore")
E = TypeVar("E", bound="ElectionCore")
WATCH_POLL_S = 0.2  # how often a waiter looks at its session and deadline


class ConcurrencyError(QkvError):
    code = "concurrency"


class SessionExpired(ConcurrencyError):
    default_message = "session expired"


class LockTimeout(ConcurrencyError):
    default_message = "timed out waiting for the lock"


class Locked(ConcurrencyError):
    default_message = "mutex: Locked by another session"


class ElectionNotLeader(ConcurrencyError):
    default_message = "election: not leader"


class ElectionNoLeader(ConcurrencyError):
    default_message = "election: no leader"


# -- requests -----------------------------------------------------------------------------
def first_create(pfx: bytes) -> Op:
    """etcd's ``WithFirstCreate``: the key under ``pfx`` with the lowest create revision."""
    return Op.get(pfx, prefix_end(pfx), sort_order="ASCEND", sort_target="CREATE", limit=1)


def range_call(key: Any, range_end: Any = None, timeout: float | None = None, **kw: Any) -> Call:
    """A ``range`` (``kw``: the options of ``Client.get``) as a Call effect."""
    return Call({"op": "range", **range_fields(key, range_end, **kw)}, write=False, timeout=timeout)


def txn_call(compare: list[Compare], success: list[Op], failure: list[Op],
             timeout: float | None = None) -> Call:
    """A ``txn`` as a Call effect (a write when one of its ops writes)."""
    req = {"op": "txn", **txn_fields(compare, success, failure)}
    return Call(req, write=txn_writes(req), timeout=timeout)


def delete_call(key: bytes, timeout: float | None = None) -> Call:
    """A ``delete_range`` of one key as a Call effect."""
    return Call({"op": "delete_range", **delete_fields(key)}, write=True, timeout=timeout)


def _range(reply: dict[str, Any]) -> RangeResponse:
    return parse(RangeResponse.from_wire, reply)  # type: ignore[no-any-return]


def _txn(reply: dict[str, Any]) -> TxnResponse:
    return parse(TxnResponse.from_wire, reply)  # type: ignore[no-any-return]


def _sub_kvs(resp: TxnResponse, i: int) -> list[KeyValue]:
    """The kvs of the i-th response of a txn whose i-th op is a get."""
    try:
        kvs = resp.responses[i].kvs
    except (IndexError, AttributeError):
        raise Internal(f"malformed txn reply: no range response at {i}") from None
    return list(kvs)


# -- waiting ------------------------------------------------------------------------------
def _check(lost: Callable[[], bool] | None, now: float, deadline: float | None) -> None:
    if lost is not None and lost():
        raise SessionExpired()
    if deadline is not None and now >= deadline:
        raise LockTimeout()


def _poll(now: float, deadline: float | None) -> float:
    return WATCH_POLL_S if deadline is None else max(0.0, min(WATCH_POLL_S, deadline - now))


def wait_delete(key: bytes, rev: int, lost: Callable[[], bool] | None,
                deadline: float | None) -> Algo[None]:
    """Return once ``key`` is deleted after revision ``rev`` (a watch with NOPUT).
    Raises ``SessionExpired`` once ``lost()``, ``LockTimeout`` at ``deadline``."""
    handle = yield WatchOpen(key, b"", rev + 1, ("NOPUT",))
    try:
        while True:
            now = yield Now()
            _check(lost, now, deadline)
            wr = yield WatchGet(handle, _poll(now, deadline))
            if wr is WATCH_ENDED:
                raise ConcurrencyError("the watch ended (compacted?) while waiting")
            if wr is None:
                continue
            if wr.canceled:
                raise ConcurrencyError(f"the watch was canceled: {wr.cancel_reason}")
            if any(e.type == "DELETE" for e in wr.events):
                break
    except GeneratorExit:
        raise
    except BaseException:
        yield WatchClose(handle)
        raise
    yield WatchClose(handle)


def wait_deletes(pfx: bytes, max_create_rev: int, lost: Callable[[], bool] | None = None,
                 deadline: float | None = None) -> Algo[ResponseHeader]:
    """Wait until no key under ``pfx`` has a create revision <= ``max_create_rev``
    (etcd's ``waitDeletes``): watch only the newest such key (our predecessor) for its
    deletion, then look again. The header of the last read."""
    end = prefix_end(pfx)
    while True:
        resp = _range((yield range_call(pfx, end, sort_order="DESCEND", sort_target="CREATE",
                                        limit=1, max_create_revision=max_create_rev)))
        if not resp.kvs:
            return resp.header
        yield from wait_delete(resp.kvs[0].key, resp.header.revision, lost, deadline)


# -- sessions -----------------------------------------------------------------------------
class SessionCore:
    """What the algorithms need of a session: its lease id and whether it is lost."""

    lease_id: int
    ttl: int

    @property
    def alive(self) -> bool:
        """False once the session's lease is lost (or the session closed)."""
        raise NotImplementedError

    def lost(self) -> bool:
        """True once the session's lease is lost (or the session closed)."""
        return not self.alive


# -- the lock -----------------------------------------------------------------------------
class LockCore:
    """A fair distributed mutex (etcd's ``concurrency.Mutex``); subclasses run the
    algorithms with their driver."""

    _session_class: Any = None  # the subclass's session: Session(client, ttl)

    def __init__(self, session: Any, name: Any) -> None:
        """A lock on ``name`` held through ``session``'s lease (nothing is sent)."""
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name, "lock name") + b"/"
        self.revision = 0  # our key's create revision while we hold or wait; 0 otherwise
        self.header: ResponseHeader | None = None
        self._owned_session = False
        self._timeout: float | None = None

    @classmethod
    def for_client(cls: type[L], client: Any, name: Any, *, ttl: int = DEFAULT_SESSION_TTL,
                   session: Any = None, timeout: float | None = None) -> L:
        """A lock on ``session``, or on a session of its own (``ttl``) closed with the
        lock; ``timeout``: the default of ``acquire`` (None: wait forever)."""
        owned = session is None
        lock = cls(session if session is not None else cls._session_class(client, ttl), name)
        lock._owned_session = owned
        lock._timeout = timeout
        return lock

    @property
    def key(self) -> bytes:
        """Our lock key: ``name/<session lease id in hex>``."""
        return self.prefix + f"{self.session.lease_id:x}".encode()

    def try_algo(self, timeout: float | None = None) -> Algo[tuple[bool, TxnResponse]]:
        """Put our key if it is absent; (the owner is us, the txn response): tryAcquire."""
        if self.session.lost():
            raise SessionExpired()
        key = self.key
        resp = _txn((yield txn_call(
            [Compare.create_revision(key) == 0],
            [Op.put(key, b"", lease=self.session.lease_id), first_create(self.prefix)],
            [Op.get(key), first_create(self.prefix)], timeout)))
        if resp.succeeded:
            self.revision = resp.header.revision
        else:
            mine = _sub_kvs(resp, 0)
            if not mine:  # our key went (with the lease) between the compare and the get
                raise SessionExpired()
            self.revision = mine[0].create_revision
        owner = _sub_kvs(resp, 1)
        return (not owner or owner[0].create_revision == self.revision), resp

    def acquire_algo(self, timeout: float | None = None) -> Algo[Any]:
        """Wait for the lock (FIFO); ``timeout`` None = the lock's default (forever)."""
        if timeout is None:
            timeout = self._timeout
        start = yield Now()
        deadline = None if timeout is None else start + timeout
        mine, resp = yield from self.try_algo()
        if mine:
            self.header = resp.header
            return self
        try:
            hdr = yield from wait_deletes(self.prefix, self.revision - 1, self.session.lost, deadline)
            # Our key may have gone with the session while we waited.
            if not _range((yield range_call(self.key))).kvs:
                raise SessionExpired()
        except GeneratorExit:
            raise
        except BaseException:
            yield from self.delete_key_algo()
            raise
        self.header = hdr or resp.header
        return self

    def try_acquire_algo(self, timeout: float | None = None) -> Algo[Any]:
        """Take the lock if it is free, else raise ``Locked`` (etcd's TryLock)."""
        mine, resp = yield from self.try_algo(timeout)
        if not mine:
            yield from self.delete_key_algo(timeout)
            raise Locked()
        self.header = resp.header
        return self

    def delete_key_algo(self, timeout: float | None = None) -> Algo[None]:
        """Delete our key, best effort (it goes with the lease anyway)."""
        try:
            yield delete_call(self.key, timeout)
        except QkvError:
            pass
        self.revision = 0

    def release_algo(self, timeout: float | None = None) -> Algo[None]:
        """Delete our key: the next waiter gets the lock."""
        yield delete_call(self.key, timeout)
        self.revision = 0
        self.header = None

    def is_acquired_algo(self, timeout: float | None = None) -> Algo[bool]:
        """Our key still exists with our create revision (a linearizable read)."""
        if not self.revision:
            return False
        resp = _range((yield range_call(self.key, timeout=timeout)))
        return bool(resp.kvs) and resp.kvs[0].create_revision == self.revision

    def holds_lock(self) -> Compare:
        """A txn compare that holds only while we hold the lock: our key exists with the
        create revision we acquired it at (etcd's ``Mutex.IsOwner``). Put it in every
        txn that the lock protects."""
        if not self.revision:
            raise ConcurrencyError("holds_lock(): the lock is not held")
        return Compare.create_revision(self.key) == self.revision

    is_owner = holds_lock


# -- the election -------------------------------------------------------------------------
class ElectionCore:
    """A leader election on a prefix (etcd's ``concurrency.Election``)."""

    _session_class: Any = None  # the subclass's session: Session(client, ttl)

    def __init__(self, session: Any, name: Any) -> None:
        """An election on the prefix ``name`` through ``session``'s lease (nothing is sent)."""
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name, "election name") + b"/"
        self.key = b""       # our candidate key, while campaigning or leading
        self.revision = 0    # its create revision
        self.header: ResponseHeader | None = None
        self._owned_session = False

    @classmethod
    def for_client(cls: type[E], client: Any, name: Any, *, ttl: int = DEFAULT_SESSION_TTL,
                   session: Any = None) -> E:
        """An election on ``session``, or on a session of its own (``ttl``) closed with it."""
        owned = session is None
        e = cls(session if session is not None else cls._session_class(client, ttl), name)
        e._owned_session = owned
        return e

    def campaign_algo(self, value: Any, timeout: float | None = None) -> Algo[Any]:
        """Put our candidacy and wait until we lead (FIFO by create revision)."""
        start = yield Now()
        deadline = None if timeout is None else start + timeout
        value = to_bytes(value, "value")
        if self.session.lost():
            raise SessionExpired()
        key = self.prefix + f"{self.session.lease_id:x}".encode()
        resp = _txn((yield txn_call([Compare.create_revision(key) == 0],
                                    [Op.put(key, value, lease=self.session.lease_id)],
                                    [Op.get(key)])))
        self.key, self.revision = key, resp.header.revision
        if not resp.succeeded:
            kvs = _sub_kvs(resp, 0)
            if not kvs:
                self.key, self.revision = b"", 0
                raise SessionExpired()
            self.revision = kvs[0].create_revision
            if kvs[0].value != value:
                yield from self.proclaim_algo(value)
        try:
            yield from wait_deletes(self.prefix, self.revision - 1, self.session.lost, deadline)
        except GeneratorExit:
            raise
        except BaseException:
            try:
                yield from self.resign_algo()
            except QkvError:
                pass
            raise
        self.header = resp.header
        return self

    def proclaim_algo(self, value: Any, timeout: float | None = None) -> Algo[None]:
        """Change the leader's value without a new election; only the leader may."""
        if not self.key:
            raise ElectionNotLeader()
        resp = _txn((yield txn_call([Compare.create_revision(self.key) == self.revision],
                                    [Op.put(self.key, value, lease=self.session.lease_id)], [],
                                    timeout)))
        if not resp.succeeded:
            self.key = b""
            raise ElectionNotLeader()

    def resign_algo(self, timeout: float | None = None) -> Algo[None]:
        """Give up leadership (or the candidacy): the next candidate takes over."""
        if not self.key:
            return
        yield txn_call([Compare.create_revision(self.key) == self.revision],
                       [Op.delete(self.key)], [], timeout)
        self.key, self.revision, self.header = b"", 0, None

    def leader_algo(self, timeout: float | None = None) -> Algo[KeyValue]:
        """The current leader's key-value; raises ``ElectionNoLeader``."""
        resp = _range((yield range_call(self.prefix, prefix_end(self.prefix), timeout=timeout,
                                        sort_order="ASCEND", sort_target="CREATE", limit=1)))
        if not resp.kvs:
            raise ElectionNoLeader()
        return resp.kvs[0]

    def is_leader(self) -> Compare:
        """A txn compare that holds only while we lead (fencing, as ``Lock.holds_lock``)."""
        if not self.key:
            raise ElectionNotLeader()
        return Compare.create_revision(self.key) == self.revision


class ObserverCore:
    """Follows an election prefix: the state of the prefix from one read, then every
    revision from the watch; emits the lowest-create-revision key whenever it (or its
    value) changes. Revisions come in order, so the leaders do."""

    def _init_observer(self, client: Any, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self._state: dict[bytes, KeyValue] = {}
        self._last: tuple[bytes, int] | None = None
        self._watcher: Any = None
        self.revision = 0

    def cancelled(self) -> bool:
        """Whether the observer was canceled (the subclass's flag)."""
        raise NotImplementedError

    def start_algo(self) -> Algo[None]:
        """Read the prefix, then watch it from the next revision."""
        resp = _range((yield range_call(self.prefix, prefix_end(self.prefix))))
        self._state = {kv.key: kv for kv in resp.kvs}
        self.revision = resp.header.revision
        self._watcher = yield WatchOpen(self.prefix, prefix_end(self.prefix), resp.header.revision + 1)

    def _leader(self) -> KeyValue | None:
        if not self._state:
            return None
        return min(self._state.values(), key=lambda kv: kv.create_revision)

    def _changed(self) -> KeyValue | None:
        cur = self._leader()
        if cur is None:
            return None
        mark = (cur.key, cur.mod_revision)
        if mark == self._last:
            return None
        self._last = mark
        return cur

    def next_algo(self, timeout: float | None = None) -> Algo[Any]:
        """The next leader; None when ``timeout`` passes first; ``WATCH_ENDED`` once
        canceled (the watch is closed then)."""
        first = self._changed()
        if first is not None:
            return first
        start = yield Now()
        deadline = None if timeout is None else start + timeout
        while True:
            if self.cancelled():
                w, self._watcher = self._watcher, None
                if w is not None:
                    yield WatchClose(w)
                return WATCH_ENDED
            now = yield Now()
            wr = yield WatchGet(self._watcher, _poll(now, deadline))
            if wr is WATCH_ENDED:
                return WATCH_ENDED
            if wr is None:
                now = yield Now()
                if deadline is not None and now >= deadline:
                    return None
                continue
            if wr.canceled:
                raise ConcurrencyError(f"the watch was canceled: {wr.cancel_reason}")
            for ev in wr.events:
                if ev.type == "DELETE":
                    self._state.pop(ev.kv.key, None)
                else:
                    self._state[ev.kv.key] = ev.kv
            self.revision = max(self.revision, wr.revision)
            cur = self._changed()
            if cur is not None:
                return cur
