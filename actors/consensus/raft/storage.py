"""MemoryStorage: the stable (persisted) log as the Raft core sees it.

Rules:
- The shell mirrors its on-disk WAL into this object: `apply_snapshot` after persisting a
  Ready's snapshot, `append` after persisting its entries, `compact` after compacting the
  WAL. The core only reads from it.
- `_ents[0]` is a dummy entry holding the compaction point (snapshot index, term); real
  entries follow at consecutive indexes. `bytes` is the size of the real entries (kept
  as they come and go), so the shell can bound the log's memory (issue 12).
- Nothing here performs I/O.
"""

from __future__ import annotations

from .types import Entry, HardState, SnapshotMeta


class CompactedError(Exception):
    """The requested index is at or below the compaction point."""


class UnavailableError(Exception):
    """The requested index is beyond the last entry."""


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """Longest prefix within max_size bytes; always at least one entry."""
    if max_size is None or not ents:
        return ents
    size = ents[0].size()
    n = 1
    while n < len(ents):
        size += ents[n].size()
        if size > max_size:
            break
        n += 1
    return ents[:n]


class MemoryStorage:
    def __init__(self, hard_state: HardState | None = None, snapshot: SnapshotMeta | None = None,
                 entries: list[Entry] | None = None):
        snapshot = snapshot or SnapshotMeta()
        self._hard_state = HardState(**vars(hard_state)) if hard_state else HardState()
        self._snapshot = snapshot.copy()
        # _ents[0].index == snapshot.index; _ents[i].index == snapshot.index + i
        self._ents: list[Entry] = [Entry(snapshot.term, snapshot.index)]
        self.bytes = 0
        if entries:
            self.append(list(entries))

    def initial_state(self) -> HardState:
        return HardState(self._hard_state.term, self._hard_state.vote, self._hard_state.commit)

    def snapshot(self) -> SnapshotMeta:
        return self._snapshot.copy()

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, i: int) -> int:
        offset = self._ents[0].index
        if i < offset:
            raise CompactedError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        return self._ents[i - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), at most max_size bytes (but at least one)."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        assert lo <= hi, (lo, hi)
        return limit_size(self._ents[lo - offset:hi - offset], max_size)

    def append(self, entries: list[Entry]) -> None:
        """Append entries, replacing any conflicting suffix from entries[0].index on."""
        if not entries:
            return
        for a, b in zip(entries, entries[1:]):
            assert b.index == a.index + 1, "entries must be consecutive"
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all compacted already
        if first > entries[0].index:
            entries = entries[first - entries[0].index:]
        offset = entries[0].index - self._ents[0].index
        assert offset <= len(self._ents), f"gap: last {self.last_index()}, append {entries[0].index}"
        self.bytes -= sum(e.size() for e in self._ents[max(1, offset):])
        del self._ents[offset:]
        self._ents.extend(entries)
        self.bytes += sum(e.size() for e in entries)

    def keep_within(self, upto: int, max_bytes: int) -> int:
        """The highest index <= upto such that the entries after it up to `upto` hold at
        most max_bytes (the compaction index that keeps that much below `upto`)."""
        offset = self._ents[0].index
        total = 0
        i = upto
        while i > offset:
            total += self._ents[i - offset].size()
            if total > max_bytes:
                return i
            i -= 1
        return offset

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = HardState(hs.term, hs.vote, hs.commit)

    def compact(self, index: int, conf: SnapshotMeta | None = None) -> None:
        """Drop entries <= index; remember (index, term) as the SnapshotMeta, with the
        membership as of index from `conf` (voters, learners, context) when given."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(index)
        assert index <= self.last_index(), f"compact {index} beyond last {self.last_index()}"
        term = self._ents[index - offset].term
        self.bytes -= sum(e.size() for e in self._ents[1:index - offset + 1])
        self._ents = [Entry(term, index)] + self._ents[index - offset + 1:]
        src = conf if conf is not None else self._snapshot
        self._snapshot = SnapshotMeta(index, term, list(src.voters), list(src.learners), src.context)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Reset the log to a snapshot a leader sent (Ready.snapshot): every entry goes, the
        log is empty at (meta.index, meta.term) and continues at meta.index + 1."""
        if meta.index <= self._snapshot.index:
            raise CompactedError(meta.index)  # older than what we have (etcd ErrSnapOutOfDate)
        self._ents = [Entry(meta.term, meta.index)]
        self.bytes = 0
        self._snapshot = meta.copy()
