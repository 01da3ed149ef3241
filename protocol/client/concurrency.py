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

The algorithms (etcd's mutex.go / election.go) live in protocol/client/lockcore.py,
shared with the asyncio classes of aio_concurrency.py; this module runs them with
blocking effects (protocol/client/effects.py).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterator

from protocol.client.effects import WATCH_ENDED, Algo, WatchClose, WatchGet, WatchOpen, run_sync
from protocol.client.lease import perform_basic
from protocol.client.lockcore import (
    DEFAULT_SESSION_TTL, WATCH_POLL_S, ConcurrencyError, ElectionCore, ElectionNoLeader,
    ElectionNotLeader, LockCore, Locked, LockTimeout, ObserverCore, SessionCore, SessionExpired,
    first_create,
)
from protocol.client.lockcore import wait_deletes as _wait_deletes_algo
from protocol.client.types import KeyValue, ResponseHeader
from protocol.errors import QkvError

if TYPE_CHECKING:
    from protocol.client.client import Client

__all__ = [
    "Session", "Lock", "Election", "Observer", "wait_deletes", "ConcurrencyError",
    "SessionExpired", "LockTimeout", "Locked", "ElectionNotLeader", "ElectionNoLeader",
    "DEFAULT_SESSION_TTL", "WATCH_POLL_S", "first_create",
]


def perform(client: Any, effect: Any) -> Any:
    """Run one effect of a lock/election algorithm (blocking)."""
    if isinstance(effect, WatchGet):
        try:
            return effect.handle.get(timeout=effect.timeout)
        except StopIteration:
            return WATCH_ENDED
    if isinstance(effect, WatchOpen):
        return client.watch(effect.key, effect.range_end or None, start_revision=effect.start_revision,
                            filters=effect.filters)
    if isinstance(effect, WatchClose):
        effect.handle.cancel()
        return None
    return perform_basic(client, effect)


def _run(client: Any, algo: Algo[Any]) -> Any:
    return run_sync(algo, lambda effect: perform(client, effect))


class Session(SessionCore):
    """A lease kept alive for as long as the session is open (etcd's ``Session``).
    ``done`` is set once the lease is lost (or the session closed)."""

    def __init__(self, client: "Client", ttl: int = DEFAULT_SESSION_TTL, lease_id: int = 0, *,
                 timeout: float | None = None) -> None:
        """Grant the session's lease (``timeout``: of the grant) and keep it alive."""
        from protocol.client.lease import Lease

        self.client = client
        self.lease = Lease(client, ttl, lease_id, timeout=timeout)
        self.lease_id = self.lease.id
        self.ttl = self.lease.granted_ttl

    @property
    def done(self) -> threading.Event:
        """Set once the lease is lost (or the session closed)."""
        return self.lease.done

    @property
    def alive(self) -> bool:
        """False once the lease is lost (or the session closed)."""
        return self.lease.alive

    def close(self, timeout: float | None = None) -> None:
        """Revoke the lease: every lock and candidacy of this session goes with it."""
        self.lease.close(timeout)

    def orphan(self) -> None:
        """Stop the keep-alives without revoking: the lease expires after its TTL."""
        self.lease.stop_keepalive()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_deletes(client: "Client", pfx: bytes, max_create_rev: int, *, session: Session | None = None,
                 deadline: float | None = None) -> ResponseHeader | None:
    """Wait until no key under ``pfx`` has a create revision <= ``max_create_rev``
    (etcd's ``waitDeletes``): watch only the newest such key (our predecessor) for its
    deletion, then look again. Raises ``SessionExpired`` if ``session`` is lost and
    ``LockTimeout`` at ``deadline`` (time.monotonic())."""
    lost = session.lost if session is not None else None
    return _run(client, _wait_deletes_algo(pfx, max_create_rev, lost, deadline))  # type: ignore[no-any-return]


class Lock(LockCore):
    """A fair distributed mutex on ``name`` (etcd's ``concurrency.Mutex``; the key is
    ``name/<lease id in hex>``). Use it as a context manager, or ``acquire``/``release``.

    **Fence every protected write** with ``holds_lock()`` (see the module docstring):
    a lease can expire while its holder still believes it holds the lock."""

    _session_class = Session

    def __init__(self, session: Session, name: Any) -> None:
        """A lock on ``name`` held through ``session``'s lease (nothing is sent)."""
        super().__init__(session, name)

    def acquire(self, timeout: float | None = None) -> "Lock":
        """Wait for the lock (FIFO among waiters); ``timeout`` None = forever. Raises
        ``LockTimeout`` (and leaves the queue) or ``SessionExpired``."""
        return _run(self.client, self.acquire_algo(timeout))  # type: ignore[no-any-return]

    lock = acquire

    def try_acquire(self, timeout: float | None = None) -> "Lock":
        """Take the lock if it is free, else raise ``Locked`` at once (etcd's TryLock).
        ``timeout``: of each call (None: the client's)."""
        return _run(self.client, self.try_acquire_algo(timeout))  # type: ignore[no-any-return]

    def release(self, timeout: float | None = None) -> None:
        """Delete our key: the next waiter gets the lock."""
        _run(self.client, self.release_algo(timeout))

    unlock = release

    def is_acquired(self, timeout: float | None = None) -> bool:
        """Whether we still hold the lock: our key exists with our create revision (a
        linearizable read; a check, not a fence: use ``holds_lock()`` in writes)."""
        return _run(self.client, self.is_acquired_algo(timeout))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the lock's own session (``for_client`` without a session)."""
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


class Election(ElectionCore):
    """A leader election on the prefix ``name`` (etcd's ``concurrency.Election``)."""

    _session_class = Session

    def __init__(self, session: Session, name: Any) -> None:
        """An election on the prefix ``name`` held through ``session``'s lease (nothing is sent)."""
        super().__init__(session, name)

    def campaign(self, value: Any, timeout: float | None = None) -> "Election":
        """Put our candidacy and block until we lead (FIFO by create revision). Raises
        ``LockTimeout`` (and withdraws) or ``SessionExpired``."""
        return _run(self.client, self.campaign_algo(value, timeout))  # type: ignore[no-any-return]

    def proclaim(self, value: Any, timeout: float | None = None) -> None:
        """Change the leader's value without a new election; only the leader may."""
        _run(self.client, self.proclaim_algo(value, timeout))

    def resign(self, timeout: float | None = None) -> None:
        """Give up leadership (or the candidacy): the next candidate takes over."""
        _run(self.client, self.resign_algo(timeout))

    def leader(self, timeout: float | None = None) -> KeyValue:
        """The current leader's key-value; raises ``ElectionNoLeader``."""
        return _run(self.client, self.leader_algo(timeout))  # type: ignore[no-any-return]

    def observe(self) -> "Observer":
        """An iterator of ``KeyValue``s, one per leader change (a new leader, or the
        leader's new proclamation), in revision order; ``cancel()`` ends it."""
        return Observer(self.client, self.prefix)

    def close(self) -> None:
        """Close the election's own session (``for_client`` without a session)."""
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


class Observer(ObserverCore):
    """Follows an election prefix (lockcore.ObserverCore): iterate it for the leaders."""

    def __init__(self, client: "Client", prefix: bytes) -> None:
        self._init_observer(client, prefix)
        self._cancel = threading.Event()
        _run(client, self.start_algo())

    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancel.is_set()

    def get(self, timeout: float | None = None) -> KeyValue | None:
        """The next leader; None when ``timeout`` passes first; StopIteration once
        canceled."""
        kv = _run(self.client, self.next_algo(timeout))
        if kv is WATCH_ENDED:
            raise StopIteration
        return kv  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[KeyValue]:
        return self

    def __next__(self) -> KeyValue:
        kv = self.get()
        assert kv is not None
        return kv

    def cancel(self) -> None:
        """End the iteration (from any thread; the iterating one stops within 0.2 s)."""
        self._cancel.set()

    close = cancel

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()
        w, self._watcher = self._watcher, None
        if w is not None:
            w.cancel()
