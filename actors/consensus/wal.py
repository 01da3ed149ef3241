"""The consensus write-ahead log: Raft hard state and entries in RocksDB (rocksdict).

Rules:
- This module performs I/O; the Raft core does not. The shell mirrors what it loads into
  a MemoryStorage and persists every Ready through `save` before sending its messages.
- Every `save`/`compact` is ONE WriteBatch, so a crash leaves either all of it or none.
- Layout (raw mode, column families):
    "log":  key = index as 8-byte big-endian, value = msgpack [term, type, data]
    "meta": b"hard_state" -> msgpack [term, vote, commit]
            b"snapshot"   -> msgpack [index, term, voters, learners, context] (the
                             compaction point and the membership there; older files hold
                             [index, term] or [index, term, voters])
- Invariant: the stored log is consecutive from snapshot.index + 1 to last_index.
- `verify` reads a log without changing it, before the consensus actor opens it (the
  node's start-up check, nodes/preflight.py). RocksDB replays its own write-ahead file on
  open; `WAL` opens it in point-in-time mode (the default), which silently stops at the
  first record that fails its checksum and drops everything after it (and RocksDB 9.8
  hangs or skips data silently on some damaged framing: actors/runtime/rocks_log.py).
  `verify` scans the framing first, then opens the log read-only in
  tolerate-corrupted-tail-records mode: a record cut short at the end of the file (a
  crash during an append) is dropped, as `WAL` will drop it, but a checksum failure
  anywhere is an error (`WALDamaged`), so the node refuses to start rather than forget
  entries it had acknowledged.
- A full disk (issue 12, actors/runtime/diskfault.py): a `save`/`compact` the disk refuses
  raises and changes nothing here (memory moves only after the write); RocksDB's handle
  cannot write again after that, so the caller holds what it could not persist and calls
  `reopen` later. The WAL opens read-only when the disk refuses a read-write open (at
  start or in `reopen`): `load` works, writes raise the disk error until a `reopen` works.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import msgpack
from rocksdict import AccessType, DBRecoveryMode, Options, Rdict, WriteBatch, WriteOptions

from actors.consensus.raft.types import Entry, HardState, SnapshotMeta
from actors.runtime import rocks_log
from actors.runtime.diskfault import open_or_read_only

LOG_CF = "log"
META_CF = "meta"
HARD_STATE_KEY = b"hard_state"
SNAPSHOT_KEY = b"snapshot"
_KEY_END = b"\xff" * 9  # sorts after every 8-byte key


# RocksDB's memtables of the log's column families together: entries are also kept in
# memory by MemoryStorage (bounded by the actor), so the memtables need not hold many.
MEMTABLE_BYTES = 32 * 1024 * 1024
# RocksDB's own write-ahead files (`*.log`) and info logs: see actors/storage/backend.py.
MAX_WAL_BYTES = 2 * MEMTABLE_BYTES
KEEP_INFO_LOGS = 5


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_db_write_buffer_size(MEMTABLE_BYTES)
    opts.set_max_total_wal_size(MAX_WAL_BYTES)
    opts.set_keep_log_file_num(KEEP_INFO_LOGS)
    return opts


def index_key(index: int) -> bytes:
    return index.to_bytes(8, "big")


def _unpack_snapshot(raw: bytes | None) -> SnapshotMeta:
    if raw is None:
        return SnapshotMeta()
    fields = msgpack.unpackb(raw)
    index, term = fields[0], fields[1]
    voters = list(fields[2]) if len(fields) > 2 else []
    learners = list(fields[3]) if len(fields) > 3 else []
    context = bytes(fields[4]) if len(fields) > 4 else b""
    return SnapshotMeta(index, term, voters, learners, context)


def _unpack_hard_state(raw: bytes | None) -> HardState:
    return HardState(*msgpack.unpackb(raw)) if raw is not None else HardState()


class WALDamaged(Exception):
    """The log cannot be trusted (`verify`); the message says why in one line."""


@dataclass
class WALSummary:
    """What `verify` found: the compaction point, the hard state and the last index
    (snapshot.index when the log holds no entry)."""

    snapshot: SnapshotMeta
    hard_state: HardState
    last_index: int
    entries: int


def verify(path: str) -> WALSummary | None:
    """Check the log at `path` without changing it; None when there is no log yet.

    Raises `WALDamaged` when the framing of RocksDB's write-ahead files is damaged
    (actors/runtime/rocks_log.py), when RocksDB finds a record that fails its checksum
    (anywhere: a record cut short at the very end is a torn append and is dropped, not an
    error), when a file it needs is unreadable, when the hard state or the compaction
    point does not decode, when the entries after the compaction point are not consecutive, or when the
    hard state says more is committed than the log holds. Cost: a read of the write-ahead
    files, one read-only open (RocksDB replays them again) and a walk over the keys."""
    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, "CURRENT")):
        return None
    try:
        rocks_log.scan(path)  # first: damaged framing can make RocksDB's replay hang
    except (rocks_log.DamagedLog, OSError) as exc:
        raise WALDamaged(_one_line(exc)) from None
    opts = Options(raw_mode=True)
    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    try:
        names = set(Rdict.list_cf(path, opts))
        db = Rdict(path, options=opts, access_type=AccessType.read_only(),
                   column_families={n: Options(raw_mode=True) for n in names & {LOG_CF, META_CF}})
    except Exception as exc:  # rocksdict raises a bare Exception: "Corruption: ...", "IO error: ..."
        raise WALDamaged(f"RocksDB cannot read it: {_one_line(exc)}") from None
    try:
        if not {LOG_CF, META_CF} <= names:
            raise WALDamaged(f"its column families are {sorted(names)}, not {LOG_CF!r} and {META_CF!r}")
        return _summarize(db)
    except WALDamaged:
        raise
    except Exception as exc:  # a block that fails its checksum while reading, a bad value
        raise WALDamaged(f"reading it failed: {_one_line(exc)}") from None
    finally:
        db.close()
        del db
        gc.collect()


def _summarize(db: Rdict) -> WALSummary:
    log = db.get_column_family(LOG_CF)
    meta = db.get_column_family(META_CF)
    try:
        try:
            snap = _unpack_snapshot(meta.get(SNAPSHOT_KEY))
            hs = _unpack_hard_state(meta.get(HARD_STATE_KEY))
        except Exception as exc:  # noqa: BLE001 - any garbage: msgpack errors, wrong shapes
            raise WALDamaged(f"its hard state or compaction point does not decode ({exc})") from None
        expected, count = snap.index + 1, 0
        it = log.iter()
        try:
            it.seek(index_key(expected))
            while it.valid():
                key = it.key()
                index = int.from_bytes(key, "big") if len(key) == 8 else -1
                if index != expected:
                    raise WALDamaged(f"entry {expected} is missing (the next key is {key.hex()})")
                expected += 1
                count += 1
                it.next()
        finally:
            del it
        last = expected - 1
        if hs.commit > last:
            raise WALDamaged(f"its hard state says entry {hs.commit} is committed but the log ends at {last}")
        return WALSummary(snap, hs, last, count)
    finally:
        del log, meta


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class WAL:
    def __init__(self, path: str):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._db: Rdict | None = None
        self.read_only = False
        self.open_error: Exception | None = None  # why it is read-only
        self._wo_sync = WriteOptions()
        self._wo_sync.sync = True
        self._wo_nosync = WriteOptions()
        self._wo_nosync.sync = False
        self._open_or_read_only()

    def _open(self, read_only: bool) -> None:
        self._db = Rdict(
            self.path, options=_options(),
            column_families={LOG_CF: _options(), META_CF: _options()},
            access_type=AccessType.read_only() if read_only else AccessType.read_write())
        self.read_only = read_only
        self._log = self._db.get_column_family(LOG_CF)
        self._meta = self._db.get_column_family(META_CF)
        self._log_h = self._db.get_column_family_handle(LOG_CF)
        self._meta_h = self._db.get_column_family_handle(META_CF)
        self._snapshot = self._load_snapshot()
        self._last_index = self._load_last_index()  # snapshot.index when the log is empty

    def _open_or_read_only(self) -> None:
        self.open_error = open_or_read_only(self._open, self._drop)

    def reopen(self) -> None:
        """Close and open read-write again (after a write the disk refused: RocksDB's handle
        stays unable to write, rocksdict has no Resume). The snapshot and last index are
        read again from disk. Raises the open's error when the disk still refuses, after
        opening read-only."""
        self.close()
        self._open_or_read_only()
        if self.open_error is not None:
            raise self.open_error

    def _check_writable(self) -> Rdict:
        """The open database, unless the log is closed or read-only."""
        assert self._db is not None, "wal is closed"
        if self.read_only:
            raise Exception(f"IO error: the log is open read-only since: {self.open_error}")
        return self._db

    # --- reading -------------------------------------------------------------------------
    def _load_snapshot(self) -> SnapshotMeta:
        return _unpack_snapshot(self._meta.get(SNAPSHOT_KEY))

    def _load_last_index(self) -> int:
        it = self._log.iter()
        it.seek_to_last()
        last = int.from_bytes(it.key(), "big") if it.valid() else self._snapshot.index
        del it
        return max(last, self._snapshot.index)

    def load(self) -> tuple[HardState, SnapshotMeta, list[Entry]]:
        assert self._db is not None, "wal is closed"
        hs = _unpack_hard_state(self._meta.get(HARD_STATE_KEY))
        snap = self._snapshot.copy()
        entries: list[Entry] = []
        it = self._log.iter()
        it.seek(index_key(snap.index + 1))
        while it.valid():
            index = int.from_bytes(it.key(), "big")
            term, etype, data = msgpack.unpackb(it.value())
            expected = snap.index + 1 + len(entries)
            assert index == expected, f"wal: hole in the log at {expected} (found {index})"
            entries.append(Entry(term, index, etype, data))
            it.next()
        del it
        return hs, snap, entries

    def last_index(self) -> int:
        return self._last_index

    # --- writing -------------------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool,
             snapshot: SnapshotMeta | None = None) -> None:
        """Persist a Ready's snapshot, hard state and entries in one batch, in that order;
        entries may replace a suffix. A snapshot (Ready.snapshot) drops the whole log."""
        if hard_state is None and not entries and snapshot is None:
            return
        db = self._check_writable()
        wb = WriteBatch(raw_mode=True)
        snap_index, last_index = self._snapshot.index, self._last_index
        if snapshot is not None:
            snap_index = last_index = snapshot.index
            # (>=: a save the disk refused may still have reached it; it is saved again)
            assert snapshot.index >= self._snapshot.index, (
                f"wal: snapshot {snapshot.index} before {self._snapshot.index}")
            wb.delete_range(index_key(0), _KEY_END, self._log_h)
            wb.put(SNAPSHOT_KEY, self._pack_snapshot(snapshot), self._meta_h)
        if entries:
            # Never rewrite the compacted prefix.
            entries = [e for e in entries if e.index > snap_index]
        if entries:
            first = entries[0].index
            assert first <= last_index + 1, f"wal: gap, last {last_index}, got {first}"
            if first <= last_index:
                wb.delete_range(index_key(first), _KEY_END, self._log_h)
            prev = first - 1
            for e in entries:
                assert e.index == prev + 1, "wal: entries must be consecutive"
                prev = e.index
                wb.put(index_key(e.index), msgpack.packb([e.term, e.type, e.data]), self._log_h)
        if hard_state is not None:
            wb.put(HARD_STATE_KEY,
                   msgpack.packb([hard_state.term, hard_state.vote, hard_state.commit]),
                   self._meta_h)
        db.write(wb, self._wo_sync if sync else self._wo_nosync)
        if snapshot is not None:
            self._snapshot = snapshot.copy()
            self._last_index = snapshot.index
        if entries:
            self._last_index = entries[-1].index

    @staticmethod
    def _pack_snapshot(s: SnapshotMeta) -> bytes:
        return msgpack.packb([s.index, s.term, list(s.voters), list(s.learners), s.context],
                             use_bin_type=True)

    def compact(self, index: int, term: int, conf: SnapshotMeta | None = None) -> None:
        """Drop entries <= index and remember (index, term) as the compaction point, with
        the membership as of index from `conf` when given (else the previous one's)."""
        if index <= self._snapshot.index:
            return
        db = self._check_writable()
        assert index <= self._last_index, f"wal: compact {index} beyond last {self._last_index}"
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(index_key(0), index_key(index + 1), self._log_h)
        src = conf if conf is not None else self._snapshot
        snap = SnapshotMeta(index, term, list(src.voters), list(src.learners), src.context)
        wb.put(SNAPSHOT_KEY, self._pack_snapshot(snap), self._meta_h)
        db.write(wb, self._wo_nosync)
        self._snapshot = snap

    def close(self) -> None:
        if self._db is None:
            return
        # rocksdict keeps the lock while any column-family handle is alive.
        del self._log_h, self._meta_h
        for cf in (self._log, self._meta):
            try:
                cf.close() if hasattr(cf, "close") else None
            except Exception:  # a handle whose writes failed: see _drop
                pass
        del self._log, self._meta
        self._drop()

    def _drop(self) -> None:
        """Close the db; one whose writes failed raises from close() ("Writer has previous
        error") but is closed all the same (its lock is free): not an error of ours."""
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass
            del db
        gc.collect()
