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
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import msgpack
from rocksdict import AccessType, DBRecoveryMode, Options, Rdict, WriteBatch, WriteOptions

from actors.consensus.raft.types import Entry, HardState, SnapshotMeta
from actors.runtime import rocks_log

LOG_CF = "log"
META_CF = "meta"
HARD_STATE_KEY = b"hard_state"
SNAPSHOT_KEY = b"snapshot"
_KEY_END = b"\xff" * 9  # sorts after every 8-byte key


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
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
        self._db: Rdict | None = Rdict(
            self.path, options=_options(),
            column_families={LOG_CF: _options(), META_CF: _options()})
        self._log = self._db.get_column_family(LOG_CF)
        self._meta = self._db.get_column_family(META_CF)
        self._log_h = self._db.get_column_family_handle(LOG_CF)
        self._meta_h = self._db.get_column_family_handle(META_CF)
        self._wo_sync = WriteOptions()
        self._wo_sync.sync = True
        self._wo_nosync = WriteOptions()
        self._wo_nosync.sync = False
        self._snapshot = self._load_snapshot()
        self._last_index = self._load_last_index()  # snapshot.index when the log is empty

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
        assert self._db is not None, "wal is closed"
        if hard_state is None and not entries and snapshot is None:
            return
        wb = WriteBatch(raw_mode=True)
        snap_index, last_index = self._snapshot.index, self._last_index
        if snapshot is not None:
            snap_index = last_index = snapshot.index
            assert snapshot.index > self._snapshot.index, (
                f"wal: snapshot {snapshot.index} not after {self._snapshot.index}")
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
        self._db.write(wb, self._wo_sync if sync else self._wo_nosync)
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
        assert self._db is not None, "wal is closed"
        if index <= self._snapshot.index:
            return
        assert index <= self._last_index, f"wal: compact {index} beyond last {self._last_index}"
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(index_key(0), index_key(index + 1), self._log_h)
        src = conf if conf is not None else self._snapshot
        snap = SnapshotMeta(index, term, list(src.voters), list(src.learners), src.context)
        wb.put(SNAPSHOT_KEY, self._pack_snapshot(snap), self._meta_h)
        self._db.write(wb, self._wo_nosync)
        self._snapshot = snap

    def close(self) -> None:
        if self._db is None:
            return
        db = self._db
        self._db = None
        # rocksdict keeps the lock while any column-family handle is alive.
        del self._log_h, self._meta_h
        for cf in (self._log, self._meta):
            cf.close() if hasattr(cf, "close") else None
        del self._log, self._meta
        db.close()
        del db
        gc.collect()
