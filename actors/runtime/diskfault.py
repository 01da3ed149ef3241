"""A full (or failing) disk under a RocksDB directory, as one actor sees it (issue 12, item 4).

What RocksDB does (rocksdict 0.3.29, measured on a small tmpfs; notes/12-disk.md):
- a write that cannot append to its WAL raises ``Exception("IO error: No space left on
  device: While appending to file: <dir>/000004.log: ...")``; from then on EVERY write of
  that handle fails (the WAL writer keeps its error: "Writer has previous error"), also
  after space came back: RocksDB does not recover by itself, and rocksdict has no
  ``Resume()``. Reads (get, iterators) keep working on that handle;
- ``close()`` of such a handle raises too, but the database is closed (the lock is free);
- opening read-write needs space (RocksDB flushes the recovered WAL to an SST file and
  writes a MANIFEST, OPTIONS and a new WAL): on a full disk it fails;
- opening read-only (``AccessType.read_only()``) writes nothing and sees everything the
  WAL holds: it works on a full disk;
- a failed write is not applied (the WAL record is torn or absent), so nothing in memory
  may change before the write returned (mvcc/store.py and consensus/wal.py already hold
  that rule); after a reopen the state is read again from disk anyway.
So an actor that meets such an error keeps its handle for reads, refuses what needs a
write, and every so often (``DiskFault.due``, backing off; only when the filesystem shows
room, ``enough_room``) closes and reopens the database read-write; a reopen that fails
leaves a read-only handle so that reads go on.

``DiskFault`` is pure (the caller passes the time): the state of one episode, the backoff,
and which failures are worth a log line (the first of an episode; an episode that starts
again within ``LOG_EVERY_S`` of the last logged one is counted, not logged).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Callable

NO_SPACE = "no_space"
IO_ERROR = "io_error"
RETRY_MIN_S = 0.25
RETRY_MAX_S = 2.0
LOG_EVERY_S = 30.0
ROOM_MARGIN_BYTES = 1024 * 1024  # besides the WAL files: MANIFEST, OPTIONS, a new WAL, LOG
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_IO_ERRNOS = (errno.EIO, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def disk_error_kind(exc: BaseException) -> str | None:
    """NO_SPACE or IO_ERROR when `exc` says the disk refused a write (RocksDB's "IO error:
    ..." or an OSError of the disk); None for anything else (a bug, corruption, ...)."""
    if isinstance(exc, OSError):
        if exc.errno in _NO_SPACE_ERRNOS:
            return NO_SPACE
        return IO_ERROR if exc.errno in _IO_ERRNOS else None
    if type(exc) is not Exception:  # rocksdict raises plain Exception
        return None
    text = str(exc)
    if not text.startswith("IO error"):
        return None
    lowered = text.lower()
    if "no space left" in lowered or "quota exceeded" in lowered:
        return NO_SPACE
    return IO_ERROR


def wal_bytes(path: str) -> int:
    """Bytes in RocksDB's WAL files (*.log) under `path`: about what a read-write open
    writes back as an SST file before it can take writes."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.name.endswith(".log") and e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def enough_room(path: str) -> bool:
    """Whether the filesystem of `path` seems to have room for a read-write reopen (a quota
    that statvfs does not show is found out by trying: `DiskFault.due` still backs off)."""
    try:
        return free_bytes(path) >= wal_bytes(path) + ROOM_MARGIN_BYTES
    except OSError:
        return False


@dataclass
class DiskFault:
    """One actor's writes to one directory: healthy (``kind`` None) or failing since
    ``since``, retried at ``next_try``."""

    path: str
    kind: str | None = None
    error: str = ""
    since: float = 0.0
    attempts: int = 0
    next_try: float = 0.0
    episodes: int = 0  # episodes started, logged or not
    unlogged: int = 0  # episodes not logged since the last logged one
    last_logged: float | None = None
    logged: bool = False  # the current episode was logged (so is its end)

    @property
    def failed(self) -> bool:
        return self.kind is not None

    def fail(self, now: float, exc: BaseException, kind: str) -> dict[str, Any] | None:
        """A write failed. The fields of a log line when this starts an episode worth one
        (not when an episode was logged less than LOG_EVERY_S ago: that one is counted
        and told with the next logged one); None otherwise."""
        self.error = _short(exc)
        if self.failed:
            self.attempts += 1
            self.next_try = now + self.delay()
            return None
        self.kind = kind
        self.since = now
        self.attempts = 0
        self.next_try = now + RETRY_MIN_S
        self.episodes += 1
        self.logged = self.last_logged is None or now - self.last_logged >= LOG_EVERY_S
        if not self.logged:
            self.unlogged += 1
            return None
        self.last_logged = now
        info = {"path": self.path, "kind": kind, "error": self.error, "unlogged_before": self.unlogged}
        self.unlogged = 0
        return info

    def delay(self) -> float:
        return min(RETRY_MAX_S, RETRY_MIN_S * 2 ** self.attempts)

    def due(self, now: float) -> bool:
        return self.failed and now >= self.next_try

    def not_yet(self, now: float) -> None:
        """A retry was due but the filesystem shows no room: look again a little later
        (the backoff does not grow: a look is cheap)."""
        self.next_try = now + RETRY_MIN_S

    def recover(self, now: float) -> dict[str, Any] | None:
        """Writes work again. The fields of a log line when the episode was logged."""
        info = {"path": self.path, "down_s": round(now - self.since, 3), "retries": self.attempts + 1}
        logged = self.logged
        self.kind = None
        self.error = ""
        self.attempts = 0
        self.logged = False
        return info if logged else None

    def wire(self, now: float) -> dict[str, Any] | None:
        """What status replies carry: None when healthy."""
        if not self.failed:
            return None
        return {"state": self.kind, "path": self.path, "error": self.error,
                "since_s": round(now - self.since, 3)}


def _short(exc: BaseException) -> str:
    return str(exc)[:300] or type(exc).__name__


def open_or_read_only(open_db: Callable[[bool], None], drop: Callable[[], None]) -> Exception | None:
    """Open a RocksDB read-write (`open_db(False)`); when the disk refuses, drop what the
    failed open left (`drop()`) and open it read-only (`open_db(True)`) so reads go on.
    Returns the disk's error, or None when it opened read-write. Any other error raises."""
    try:
        open_db(False)
        return None
    except Exception as exc:
        if disk_error_kind(exc) is None:
            raise
        drop()
        open_db(True)
        return exc
