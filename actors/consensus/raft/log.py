"""RaftLog: the stable log (MemoryStorage) plus the unstable tail not yet persisted.

Rules:
- Invariants: applied <= committed <= last_index(); unstable entries start at
  `unstable_offset` and may replace (once persisted) a suffix of the storage log.
- The log never truncates at or below `committed`.
- After `restore(snapshot)` (a SNAP from the leader) the log is empty at the snapshot until
  the shell persists it: `unstable_snapshot` then stands in for the storage entirely.
- Nothing here performs I/O.
"""

from __future__ import annotations

from .storage import CompactedError, MemoryStorage, UnavailableError, limit_size
from .types import Entry, SnapshotMeta


class RaftLog:
    def __init__(self, storage: MemoryStorage, applied: int = 0):
        self.storage = storage
        # Entries not yet persisted; unstable[i].index == unstable_offset + i.
        self.unstable: list[Entry] = []
        self.unstable_offset = storage.last_index() + 1
        # Restored from a SNAP, not yet persisted: the storage's log is stale until then.
        self.unstable_snapshot: SnapshotMeta | None = None
        first = storage.first_index()
        self.committed = first - 1  # highest index known committed; committed <= last_index()
        self.applied = first - 1  # highest index handed to the state machine; applied <= committed
        hs = storage.initial_state()
        if hs.commit:
            self.commit_to(hs.commit)
        if applied > self.applied:
            self.applied_to(min(applied, self.committed))

    # --- indexes and terms -------------------------------------------------------------
    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable_offset + len(self.unstable) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return self.storage.last_index()

    def snapshot(self) -> SnapshotMeta:
        """The compaction point of our log (what a lagging follower is sent)."""
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.copy()
        return self.storage.snapshot()

    def term(self, i: int) -> int | None:
        """Term of entry i; None when i is compacted away or beyond the last entry."""
        if self.unstable_offset <= i < self.unstable_offset + len(self.unstable):
            return self.unstable[i - self.unstable_offset].term
        if i >= self.unstable_offset and self.unstable:
            return None
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.term if i == self.unstable_snapshot.index else None
        try:
            return self.storage.term(i)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None
        return t

    def match_term(self, i: int, term: int) -> bool:
        return self.term(i) == term

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Paper 5.4.1: the candidate's log is at least as up-to-date as ours."""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    def stable_last_index(self) -> int:
        """Last index of the log prefix that is persisted and agrees with our log."""
        if self.unstable_snapshot is not None:
            return 0  # nothing on disk agrees with us until the snapshot is persisted
        return self.unstable_offset - 1 if self.unstable else self.last_index()

    # --- reading -----------------------------------------------------------------------
    def entries(self, lo: int, max_size: int | None = None) -> list[Entry] | None:
        """Entries from lo to the end, size-limited; None when lo is compacted away."""
        return self.slice(lo, self.last_index() + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry] | None:
        if lo > self.last_index():
            return []
        if lo < self.first_index():
            return None
        assert lo <= hi <= self.last_index() + 1, (lo, hi)
        ents: list[Entry] = []
        if lo < self.unstable_offset:
            ents = self.storage.entries(lo, min(hi, self.unstable_offset), max_size)
            if len(ents) < min(hi, self.unstable_offset) - lo:
                return ents  # hit the size limit inside storage
        if hi > self.unstable_offset:
            u_lo = max(lo, self.unstable_offset)
            ents = ents + self.unstable[u_lo - self.unstable_offset:hi - self.unstable_offset]
        return limit_size(ents, max_size)

    def all_entries(self) -> list[Entry]:
        return self.slice(self.first_index(), self.last_index() + 1) or []

    def next_committed_entries(self) -> list[Entry]:
        if self.committed <= self.applied:
            return []
        ents = self.slice(self.applied + 1, self.committed + 1)
        assert ents is not None, "committed entries were compacted before being applied"
        return ents

    # --- writing -----------------------------------------------------------------------
    def append(self, ents: list[Entry]) -> int:
        """Append to the unstable tail, truncating a conflicting suffix; return last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        assert after >= self.committed, f"truncating committed entries: {after} < {self.committed}"
        assert after <= self.last_index(), f"gap: append after {after}, last {self.last_index()}"
        if after == self.unstable_offset + len(self.unstable) - 1:
            self.unstable.extend(ents)
        elif after < self.unstable_offset:
            # Replaces part of the stable log; the storage suffix is overwritten on persist.
            self.unstable_offset = after + 1
            self.unstable = list(ents)
        else:
            del self.unstable[after + 1 - self.unstable_offset:]
            self.unstable.extend(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term (fast back-off)."""
        while index > 0:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, committed: int,
                     ents: list[Entry]) -> int | None:
        """Follower side of APP: None if (index, log_term) does not match our log."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise ValueError(f"append conflicts with committed entry {ci}")
            self.append(ents[ci - (index + 1):])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, tocommit: int) -> None:
        if tocommit > self.committed:
            assert tocommit <= self.last_index(), f"commit {tocommit} > last {self.last_index()}"
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to max_index only if that entry is of the current term (paper 5.4.2)."""
        if max_index > self.committed and self.term(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        assert self.applied <= i <= self.committed, (self.applied, i, self.committed)
        self.applied = i

    def restore(self, snap: SnapshotMeta) -> None:
        """Drop the whole log: it becomes empty at the snapshot, everything up to it is
        committed and (as far as the log is concerned) applied."""
        assert snap.index > self.committed, f"restore {snap.index} <= committed {self.committed}"
        self.unstable_snapshot = snap.copy()
        self.unstable = []
        self.unstable_offset = snap.index + 1
        self.committed = snap.index
        self.applied = snap.index

    def stable_snap_to(self, index: int) -> None:
        """The snapshot at index is persisted (and applied to the storage)."""
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) are persisted: drop them from the unstable tail."""
        if not self.unstable or index < self.unstable_offset:
            return
        t = self.term(index)
        if t != term:
            return  # replaced since it was handed out
        del self.unstable[:index + 1 - self.unstable_offset]
        self.unstable_offset = index + 1
