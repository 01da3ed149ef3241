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
"""

from __future__ import annotations

import gc
import os

import msgpack
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from actors.consensus.raft.types import Entry, HardState, SnapshotMeta

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
        raw = self._meta.get(SNAPSHOT_KEY)
        if raw is None:
            return SnapshotMeta()
        fields = msgpack.unpackb(raw)
        index, term = fields[0], fields[1]
        voters = list(fields[2]) if len(fields) > 2 else []
        learners = list(fields[3]) if len(fields) > 3 else []
        context = bytes(fields[4]) if len(fields) > 4 else b""
        return SnapshotMeta(index, term, voters, learners, context)

    def _load_last_index(self) -> int:
        it = self._log.iter()
        it.seek_to_last()
        last = int.from_bytes(it.key(), "big") if it.valid() else self._snapshot.index
        del it
        return max(last, self._snapshot.index)

    def load(self) -> tuple[HardState, SnapshotMeta, list[Entry]]:
        assert self._db is not None, "wal is closed"
        raw = self._meta.get(HARD_STATE_KEY)
        hs = HardState(*msgpack.unpackb(raw)) if raw is not None else HardState()
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
