"""Sessions, distributed locks and leader elections, as etcd's client/v3/concurrency.

    with Session(client, ttl=10) as s:
        lock = Lock(s, "jobs/lock")
        with lock:                                   # waits its turn (FIFO)
            client.txn([lock.holds_lock(), ...], [Op.put(...)], [])   # fenced write

A lock is only as safe as its fencing
-------------------------------------
A lock here is a key attached to the session's lease. If the holder pauses (GC, swap,
SIGSTOP, a partition) for longer than the lease TTL, the lease expires, the key goes, the
next waiter gets the lock, and the old holder *still believes it holds it* when it wakes
up. No client-side check closes that window (Jepsen's analyses of etcd and others show
exactly this). The only safe use is fencing: make every write that the lock protects a
txn whose compare is ``lock.holds_lock()`` (our key still exists with our create
revision); a stale holder's write then fails instead of corrupting data. Writes to other
systems need their own fencing token: use ``lock.revision`` (it grows with each holder).

Semantics (etcd's mutex.go / election.go):
- the lock key is ``f"{name}/{lease_id:x}"``; acquiring puts it (if absent) with the
  session's lease; holders are ordered by create revision (fair, FIFO);
- a waiter watches only its predecessor (the key with the largest create revision below
  its own) for deletion, then re-checks: no thundering herd;
- an election is the same queue; the leader is the key with the lowest create revision
  and its value is the proclamation.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from protocol.client.txn import Compare, Op
from protocol.client.types import KeyValue, ResponseHeader, prefix_end, to_bytes
from protocol.errors import QkvError

if TYPE_CHECKING:
    from protocol.client.client import Client

DEFAULT_SESSION_TTL = 60
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


class Session:
    """A lease kept alive for as long as the session is open (etcd's ``Session``).
    ``done`` is set once the lease is lost (or the session closed)."""

    def __init__(self, client: "Client", ttl: int = DEFAULT_SESSION_TTL, lease_id: int = 0) -> None:
        from protocol.client.lease import Lease

        self.client = client
        self.lease = Lease(client, ttl, lease_id)
        self.lease_id = self.lease.id
        self.ttl = self.lease.granted_ttl

    @property
    def done(self) -> threading.Event:
        return self.lease.done

    @property
    def alive(self) -> bool:
        return self.lease.alive

    def close(self) -> None:
        """Revoke the lease: every lock and candidacy of this session goes with it."""
        self.lease.close()

    def orphan(self) -> None:
        """Stop the keep-alives without revoking: the lease expires after its TTL."""
        self.lease.stop_keepalive()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the queue shared by Lock and Election ---------------------------------------------------
def _first_create(pfx: bytes) -> Op:
    """etcd's ``WithFirstCreate``: the key under ``pfx`` with the lowest create revision."""
    return Op.get(pfx, prefix_end(pfx), sort_order="ASCEND", sort_target="CREATE", limit=1)


def wait_deletes(client: "Client", pfx: bytes, max_create_rev: int, *, session: Session | None = None,
                 deadline: float | None = None) -> ResponseHeader | None:
    """Wait until no key under ``pfx`` has a create revision <= ``max_create_rev``
    (etcd's ``waitDeletes``): watch only the newest such key (our predecessor) for its
    deletion, then look again. Raises ``SessionExpired`` if ``session`` is lost and
    ``LockTimeout`` at ``deadline``."""
    end = prefix_end(pfx)
    while True:
        resp = client.get(pfx, end, sort_order="DESCEND", sort_target="CREATE", limit=1,
                          max_create_revision=max_create_rev)
        if not resp.kvs:
            return resp.header
        _wait_delete(client, resp.kvs[0].key, resp.header.revision, session, deadline)


def _check(session: Session | None, deadline: float | None) -> None:
    if session is not None and session.done.is_set():
        raise SessionExpired()
    if deadline is not None and time.monotonic() >= deadline:
        raise LockTimeout()


def _wait_delete(client: "Client", key: bytes, rev: int, session: Session | None,
                 deadline: float | None) -> None:
    """Return once ``key`` is deleted after revision ``rev``."""
    with client.watch(key, start_revision=rev + 1, filters=("NOPUT",)) as w:
        while True:
            _check(session, deadline)
            wait = WATCH_POLL_S if deadline is None else max(0.0, min(WATCH_POLL_S, deadline - time.monotonic()))
            try:
                wr = w.get(timeout=wait)
            except StopIteration:
                raise ConcurrencyError("the watch ended (compacted?) while waiting") from None
            if wr is None:
                continue
            if wr.canceled:
                raise ConcurrencyError(f"the watch was canceled: {wr.cancel_reason}")
            if any(e.type == "DELETE" for e in wr.events):
                return


class Lock:
    """A fair distributed mutex on ``name`` (etcd's ``concurrency.Mutex``; the key is
    ``name/<lease id in hex>``). Use it as a context manager, or ``acquire``/``release``.

    **Fence every protected write** with ``holds_lock()`` (see the module docstring):
    a lease can expire while its holder still believes it holds the lock."""

    def __init__(self, session: Session, name: Any) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name, "lock name") + b"/"
        self.key = self.prefix + f"{session.lease_id:x}".encode()
        self.revision = 0  # our key's create revision while we hold or wait; 0 otherwise
        self.header: ResponseHeader | None = None
        self._owned_session = False
        self._ttl = session.ttl
        self._timeout: float | None = None

    @classmethod
    def for_client(cls, client: "Client", name: Any, *, ttl: int = DEFAULT_SESSION_TTL,
                   session: Session | None = None, timeout: float | None = None) -> "Lock":
        owned = session is None
        s = session if session is not None else Session(client, ttl)
        lock = cls(s, name)
        lock._owned_session = owned
        lock._timeout = timeout
        return lock

    # -- acquiring --------------------------------------------------------------------
    def _try(self) -> tuple[bool, Any]:
        """Put our key if it is absent; (owner is us, txn response). etcd's tryAcquire."""
        if self.session.done.is_set():
            raise SessionExpired()
        resp = self.client.txn(
            [Compare.create_revision(self.key) == 0],
            [Op.put(self.key, b"", lease=self.session.lease_id), _first_create(self.prefix)],
            [Op.get(self.key), _first_create(self.prefix)])
        if resp.succeeded:
            self.revision = resp.header.revision
        else:
            self.revision = resp.responses[0].kvs[0].create_revision
        owner = resp.responses[1].kvs
        return (not owner or owner[0].create_revision == self.revision), resp

    def acquire(self, timeout: float | None = None) -> "Lock":
        """Wait for the lock (FIFO among waiters); ``timeout`` None = forever. Raises
        ``LockTimeout`` (and leaves the queue) or ``SessionExpired``."""
        if timeout is None:
            timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        mine, resp = self._try()
        if mine:
            self.header = resp.header
            return self
        try:
            hdr = wait_deletes(self.client, self.prefix, self.revision - 1, session=self.session,
                               deadline=deadline)
            # Our key may have gone with the session while we waited.
            if not self.client.get(self.key).kvs:
                raise SessionExpired()
        except BaseException:
            self._delete_key()
            raise
        self.header = hdr or resp.header
        return self

    lock = acquire

    def try_acquire(self) -> "Lock":
        """Take the lock if it is free, else raise ``Locked`` at once (etcd's TryLock)."""
        mine, resp = self._try()
        if not mine:
            self._delete_key()
            raise Locked()
        self.header = resp.header
        return self

    def _delete_key(self) -> None:
        try:
            self.client.delete(self.key)
        except QkvError:
            pass  # the key goes with the lease anyway
        self.revision = 0

    def release(self) -> None:
        """Delete our key: the next waiter gets the lock."""
        self.client.delete(self.key)
        self.revision = 0
        self.header = None

    unlock = release

    # -- fencing ----------------------------------------------------------------------
    def holds_lock(self) -> Compare:
        """A txn compare that holds only while we hold the lock: our key exists with the
        create revision we acquired it at (etcd's ``Mutex.IsOwner``). Put it in every
        txn that the lock protects."""
        if not self.revision:
            raise ConcurrencyError("holds_lock(): the lock is not held")
        return Compare.create_revision(self.key) == self.revision

    is_owner = holds_lock

    def close(self) -> None:
        if self._owned_session:
            self.session.close()

    def __enter__(self) -> "Lock":
        try:
            return self.acquire()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.revision:
                try:
                    self.release()
                except QkvError:
                    pass  # the lease revoke below (or its expiry) deletes the key
        finally:
            self.close()


class Election:
    """A leader election on the prefix ``name`` (etcd's ``concurrency.Election``)."""

    def __init__(self, session: Session, name: Any) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name, "election name") + b"/"
        self.key = b""       # our candidate key, while campaigning or leading
        self.revision = 0    # its create revision
        self.header: ResponseHeader | None = None
        self._owned_session = False

    @classmethod
    def for_client(cls, client: "Client", name: Any, *, ttl: int = DEFAULT_SESSION_TTL,
                   session: Session | None = None) -> "Election":
        owned = session is None
        e = cls(session if session is not None else Session(client, ttl), name)
        e._owned_session = owned
        return e

    def campaign(self, value: Any, timeout: float | None = None) -> "Election":
        """Put our candidacy and block until we lead (FIFO by create revision). Raises
        ``LockTimeout`` (and withdraws) or ``SessionExpired``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        value = to_bytes(value, "value")
        if self.session.done.is_set():
            raise SessionExpired()
        key = self.prefix + f"{self.session.lease_id:x}".encode()
        resp = self.client.txn([Compare.create_revision(key) == 0],
                               [Op.put(key, value, lease=self.session.lease_id)], [Op.get(key)])
        self.key, self.revision = key, resp.header.revision
        if not resp.succeeded:
            kv = resp.responses[0].kvs[0]
            self.revision = kv.create_revision
            if kv.value != value:
                self.proclaim(value)
        try:
            wait_deletes(self.client, self.prefix, self.revision - 1, session=self.session,
                         deadline=deadline)
        except BaseException:
            try:
                self.resign()
            except QkvError:
                pass
            raise
        self.header = resp.header
        return self

    def proclaim(self, value: Any) -> None:
        """Change the leader's value without a new election; only the leader may."""
        if not self.key:
            raise ElectionNotLeader()
        resp = self.client.txn([Compare.create_revision(self.key) == self.revision],
                               [Op.put(self.key, value, lease=self.session.lease_id)], [])
        if not resp.succeeded:
            self.key = b""
            raise ElectionNotLeader()

    def resign(self) -> None:
        """Give up leadership (or the candidacy): the next candidate takes over."""
        if not self.key:
            return
        self.client.txn([Compare.create_revision(self.key) == self.revision],
                        [Op.delete(self.key)], [])
        self.key, self.revision, self.header = b"", 0, None

    def is_leader(self) -> Compare:
        """A txn compare that holds only while we lead (fencing, as ``Lock.holds_lock``)."""
        if not self.key:
            raise ElectionNotLeader()
        return Compare.create_revision(self.key) == self.revision

    def leader(self) -> KeyValue:
        """The current leader's key-value; raises ``ElectionNoLeader``."""
        resp = self.client.get(self.prefix, prefix_end(self.prefix), sort_order="ASCEND",
                               sort_target="CREATE", limit=1)
        if not resp.kvs:
            raise ElectionNoLeader()
        return resp.kvs[0]

    def observe(self) -> "Observer":
        """An iterator of ``KeyValue``s, one per leader change (a new leader, or the
        leader's new proclamation), in revision order; ``cancel()`` ends it."""
        return Observer(self.client, self.prefix)

    def close(self) -> None:
        if self._owned_session:
            self.session.close()

    def __enter__(self) -> "Election":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.key:
                try:
                    self.resign()
                except QkvError:
                    pass
        finally:
            self.close()


class Observer:
    """Follows an election prefix: the state of the prefix from one read, then every
    revision from the watch; emits the lowest-create-revision key whenever it (or its
    value) changes. Revisions come in order, so the leaders do."""

    def __init__(self, client: "Client", prefix: bytes) -> None:
        self.prefix = prefix
        resp = client.get(prefix, prefix_end(prefix))
        self._state: dict[bytes, KeyValue] = {kv.key: kv for kv in resp.kvs}
        self._last: tuple[bytes, int] | None = None
        self._watcher = client.watch(prefix, prefix_end(prefix), start_revision=resp.header.revision + 1)
        self._cancel = threading.Event()
        self.revision = resp.header.revision

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

    def get(self, timeout: float | None = None) -> KeyValue | None:
        """The next leader; None when ``timeout`` passes first; StopIteration once
        canceled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = self._changed()
        if first is not None:
            return first
        while True:
            if self._cancel.is_set():
                self._watcher.cancel()
                raise StopIteration
            wait = WATCH_POLL_S if deadline is None else max(0.0, min(WATCH_POLL_S, deadline - time.monotonic()))
            wr = self._watcher.get(timeout=wait)
            if wr is None:
                if deadline is not None and time.monotonic() >= deadline:
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

    def __iter__(self) -> Iterator[KeyValue]:
        return self

    def __next__(self) -> KeyValue:
        kv = self.get()
        assert kv is not None
        return kv

    def cancel(self) -> None:
        self._cancel.set()

    close = cancel

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()
        self._watcher.cancel()
