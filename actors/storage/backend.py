"""RocksDB implementation of the MVCC store's ordered ``Backend`` (see mvcc/memory.py).

Rules:
- raw mode everywhere (``Options(raw_mode=True)``): keys and values are bytes, no pickling;
- one column family per name the store uses (``mvcc.store.COLUMN_FAMILIES``); a name that
  is not open yet is created on first write;
- ``write`` is one RocksDB ``WriteBatch`` (atomic); ``sync=True`` fsyncs the WAL;
- iteration uses ``seek`` / ``seek_for_prev`` plus an upper bound in the read options
  (``set_iterate_lower_bound`` is broken in rocksdict: it sets the upper bound);
- ``close`` drops every column-family handle before closing the db (rocksdict keeps the
  lock while any handle is alive);
- a full disk (actors/runtime/diskfault.py): a failed write leaves the handle unable to
  write but able to read; ``reopen`` closes it and opens read-write again, or read-only
  (reads go on) when the disk still refuses. A write or a WAL sync on a read-only handle
  raises the disk error that made it read-only.

The on-disk layout of the data is the store's business (mvcc/store.py docstring).
"""
from __future__ import annotations

import gc
import os
import time
import weakref
from typing import Callable, Iterator, Iterable

from rocksdict import (
    AccessType, BottommostLevelCompaction, Checkpoint, ColumnFamily, CompactOptions, DBCompressionType, Options,
    ReadOptions, Rdict, WriteBatch, WriteOptions,
)

from actors.runtime.diskfault import open_or_read_only
from actors.storage.mvcc.store import COLUMN_FAMILIES


# RocksDB's memtables of every column family together (README "Limits"): past it the
# largest is flushed. Without it each family may hold 2 x 64 MiB of recent writes in memory.
MEMTABLE_BYTES = 64 * 1024 * 1024
# RocksDB's own write-ahead files (`*.log`): past this much, the column families whose
# memtables keep the oldest file alive are flushed so it can go. Left at 0 (RocksDB's
# default) the bound is 4 x the write buffers of every family (7 x 2 x 64 MiB: 3.5 GiB).
MAX_WAL_BYTES = 2 * MEMTABLE_BYTES
# RocksDB's info logs (`LOG`, `LOG.old.*`): one more per open, 1,000 kept by default.
KEEP_INFO_LOGS = 5
# The last level, where nearly all the data ends, is compressed with zstd (upper levels
# keep RocksDB's default, snappy: cheap for data that moves on soon). Measured on the
# families of 1M keys (issue 13): `hist` 9.4 -> 3.8 MB and `rev` 12.1 -> 4.7 MB after a full
# compaction; random values do not compress (RocksDB then keeps a block uncompressed),
# real ones (JSON, protobuf) do.
BOTTOMMOST_COMPRESSION = DBCompressionType.zstd


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_db_write_buffer_size(MEMTABLE_BYTES)
    opts.set_max_total_wal_size(MAX_WAL_BYTES)
    opts.set_keep_log_file_num(KEEP_INFO_LOGS)
    opts.set_bottommost_compression_type(BOTTOMMOST_COMPRESSION())
    return opts


def _position(it, start: bytes, end: bytes | None, reverse: bool) -> None:
    """Put a RocksDB iterator on the first key of a walk of ``[start, end)``: ``start``
    going forward, the last key below ``end`` (or the last key) going backward."""
    if not reverse:
        it.seek(start)
    elif end is None:
        it.seek_to_last()
    else:
        it.seek_for_prev(end)
        if it.valid() and it.key() >= end:
            it.prev()


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RocksBackend:
    # Called with the seconds each `write` took (the storage actor points it at
    # etcd_disk_backend_commit_duration_seconds; this module imports no metrics).
    write_observer: Callable[[float], None] | None = None

    def __init__(self, path: str | os.PathLike, column_families: Iterable[str] = COLUMN_FAMILIES,
                 fallback_read_only: bool = False) -> None:
        """Open read-write. With `fallback_read_only`, a disk error (runtime/diskfault.py:
        a full disk) opens it read-only instead, so reads go on, and is kept in
        ``open_error`` (``reopen`` tries read-write again)."""
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._names = set(column_families)
        self._db: Rdict | None = None
        self._cfs: dict[str, Rdict] = {}
        self._handles: dict[str, ColumnFamily] = {}
        # Live iterate() generators: close() ends them, as each holds a RocksDB iterator.
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._wo_sync = WriteOptions()
        self._wo_sync.sync = True
        self._wo_nosync = WriteOptions()
        self._wo_nosync.sync = False
        self.read_only = False
        self.open_error: Exception | None = None
        if fallback_read_only:
            self._open_or_read_only()
        else:
            self._open(read_only=False)

    def _open(self, read_only: bool) -> None:
        names = set(self._names)
        try:
            names.update(Rdict.list_cf(self.path, _options()))
        except Exception:  # a new database has no column families to list yet
            pass
        names.discard("default")
        if read_only:
            # Only what exists: a read-only handle creates nothing.
            names &= set(Rdict.list_cf(self.path, _options())) - {"default"}
        self._db = Rdict(self.path, options=_options(), column_families={n: _options() for n in sorted(names)},
                         access_type=AccessType.read_only() if read_only else AccessType.read_write())
        self.read_only = read_only
        for name in sorted(names):
            self._open_cf(name)

    def _open_or_read_only(self) -> None:
        self.open_error = open_or_read_only(self._open, self._drop_handles)

    def reopen(self) -> None:
        """Close and open again read-write: the only way out of RocksDB's error state after
        a failed write (rocksdict has no Resume). Raises the open's error when the disk
        still refuses, after opening read-only so that reads go on."""
        self.close()
        self._open_or_read_only()
        if self.open_error is not None:
            raise self.open_error

    def _open_cf(self, name: str) -> None:
        assert self._db is not None, "backend is closed"
        self._cfs[name] = self._db.get_column_family(name)
        self._handles[name] = self._db.get_column_family_handle(name)

    def _cf(self, name: str) -> Rdict:
        cf = self._cfs.get(name)
        if cf is None:
            assert self._db is not None, "backend is closed"
            self._db.create_column_family(name, _options())
            self._open_cf(name)
            cf = self._cfs[name]
        return cf

    def get(self, cf: str, key: bytes) -> bytes | None:
        if self.read_only and cf not in self._cfs:
            return None  # a read-only handle creates nothing: the family is empty
        return self._cf(cf).get(key)

    def iterate(
        self, cf: str, start: bytes, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        gen = self._iterate(cf, start, end, reverse)
        self._iterators.add(gen)
        return gen

    def _iterate(
        self, cf: str, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        if self.read_only and cf not in self._cfs:
            return
        ro = ReadOptions()
        if end is not None:
            if end <= start:
                return
            ro.set_iterate_upper_bound(end)
        it = self._cf(cf).iter(ro)
        try:
            yield from self._walk(it, start, end, reverse)
        finally:
            del it

    def count(self, cf: str, start: bytes, end: bytes | None = None) -> int:
        """How many keys are in ``[start, end)``: a keys-only walk inside rocksdict (about
        3x faster than ``iterate``, which makes a Python tuple of key and value per key)."""
        if self.read_only and cf not in self._cfs:
            return 0
        ro = ReadOptions()
        if end is not None:
            if end <= start:
                return 0
            ro.set_iterate_upper_bound(end)
        n = 0
        for _ in self._cf(cf).keys(from_key=start, read_opt=ro):
            n += 1
        return n

    @staticmethod
    def _walk(it, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        _position(it, start, end, reverse)
        if not reverse:
            while it.valid():
                yield it.key(), it.value()
                it.next()
        else:
            while it.valid():
                k = it.key()
                if k < start:
                    break
                yield k, it.value()
                it.prev()

    def snapshot(self) -> "RocksSnapshot":
        """A read-only view (get, iterate) pinned at this instant; ``close()`` releases it
        (``close`` of the backend releases it too)."""
        assert self._db is not None, "backend is closed"
        snap = RocksSnapshot(self._cfs)
        self._iterators.add(snap)  # closed with the backend, like a live iterate()
        return snap

    def _check_writable(self) -> Rdict:
        """The open database, unless the backend is closed or read-only."""
        assert self._db is not None, "backend is closed"
        if self.read_only:
            # A new exception each time (re-raising one object would grow its traceback);
            # it reads as the disk error that made the handle read-only (diskfault.py).
            raise Exception(f"IO error: the database is open read-only since: {self.open_error}")
        return self._db

    def write(self, batch: list[tuple[str, bytes, bytes | None]], sync: bool = False) -> None:
        db = self._check_writable()
        wb = WriteBatch(raw_mode=True)
        for cf, key, value in batch:
            self._cf(cf)
            handle = self._handles[cf]
            if value is None:
                wb.delete(key, handle)
            else:
                wb.put(key, value, handle)
        observe = self.write_observer
        if observe is None:
            db.write(wb, self._wo_sync if sync else self._wo_nosync)
            return
        started = time.perf_counter()
        db.write(wb, self._wo_sync if sync else self._wo_nosync)
        observe(time.perf_counter() - started)

    def flush_wal(self, sync: bool = True) -> None:
        self._check_writable().flush_wal(sync)

    def sync(self) -> None:
        """A durability point: fsync the WAL, so every write so far survives a crash."""
        self.flush_wal(sync=True)

    def checkpoint(self, path: str) -> None:
        """A consistent copy of the whole database at ``path`` (hard links where it can;
        ``path`` must not exist). Used to ship the store to a follower as a snapshot."""
        assert self._db is not None, "backend is closed"
        Checkpoint(self._db).create_checkpoint(path)

    def size_bytes(self) -> int:
        """Approximate bytes on disk plus in memtables, summed over column families."""
        total = 0
        for cf in self._cfs.values():
            for prop in ("rocksdb.total-sst-files-size", "rocksdb.size-all-mem-tables"):
                total += cf.property_int_value(prop) or 0
        return total

    def size_in_use_bytes(self) -> int:
        """RocksDB's estimate of the live data (what a full compaction would keep) plus the
        memtables: what ``defragment`` can shrink ``size_bytes`` to."""
        total = 0
        for cf in self._cfs.values():
            for prop in ("rocksdb.estimate-live-data-size", "rocksdb.size-all-mem-tables"):
                total += cf.property_int_value(prop) or 0
        return total

    def defragment(self) -> None:
        """Compact every column family fully (memtables flushed, deleted and overwritten
        data dropped from the files). rocksdict releases the GIL inside compact_range, so
        a thread may run this while the owner keeps reading and writing (RocksDB is
        thread-safe); ``close`` must wait for it."""
        opts = CompactOptions()
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        for cf in list(self._cfs.values()):
            cf.compact_range(None, None, opts)

    def _drop_handles(self) -> None:
        self._handles.clear()
        self._cfs.clear()
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:  # a handle whose writes failed: closed all the same
                pass
            del db
        gc.collect()

    def close(self) -> None:
        """Close; a handle whose writes failed (RocksDB's error state) raises from its own
        close, but is closed all the same: that error is not ours to raise."""
        if self._db is None:
            return
        for gen in list(self._iterators):
            gen.close()
        self._iterators.clear()
        self._drop_handles()


class RocksSnapshot:
    """The data of every column family as of its creation, read-only.

    rocksdict's ``Snapshot`` serves pinned point reads, but iterating it reads live data
    (BUILDING-BLOCKS); a RocksDB iterator, though, sees the data as of its creation, also
    across later writes, flushes and compactions. So each column family gets one iterator,
    all made at the same instant (the owner's thread writes nothing in between), and
    ``iterate`` seeks it: one walk at a time per column family (a new ``iterate`` of the
    family ends the previous one, which then raises). ``get`` uses a ``Snapshot``.
    It holds memtables and files alive until ``close``: keep it short-lived."""

    def __init__(self, cfs: dict[str, Rdict]) -> None:
        self._iters = {name: cf.iter(ReadOptions()) for name, cf in cfs.items()}
        self._snaps = {name: cf.snapshot() for name, cf in cfs.items()}
        self._owner: dict[str, object] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        snap = self._snaps.get(cf)
        if snap is None:
            return None
        try:
            return snap[key]
        except KeyError:
            return None
        except Exception as exc:  # rocksdict's Snapshot says a missing key this way
            if "not found" in str(exc):
                return None
            raise

    def iterate(
        self, cf: str, start: bytes, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._walk(cf, start, end, reverse, object())

    def _walk(self, cf: str, start: bytes, end: bytes | None, reverse: bool,
              token: object) -> Iterator[tuple[bytes, bytes]]:
        # No reference to the RocksDB iterator survives a yield: once closed (``close``,
        # or the backend's), a suspended walk holds nothing that keeps the database open.
        it = self._iters.get(cf)
        if it is None or (end is not None and end <= start):
            return
        self._owner[cf] = token
        _position(it, start, end, reverse)
        while it.valid():
            k = it.key()
            if (k < start) if reverse else (end is not None and k >= end):
                return
            v = it.value()
            del it
            yield k, v
            it = self._iters.get(cf)
            if it is None:
                return  # closed meanwhile
            assert self._owner.get(cf) is token, "another walk of this snapshot's column family started"
            if reverse:
                it.prev()
            else:
                it.next()

    def close(self) -> None:
        self._iters = {}
        self._snaps = {}
        self._owner = {}

    def size_bytes(self) -> int:
        return 0

    def write(self, batch: list, sync: bool = False) -> None:
        raise AssertionError("a snapshot is read-only")
