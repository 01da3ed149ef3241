"""MemoryStorage keeps the byte size of its entries as they are appended, replaced,
compacted and reset, and finds the compaction index that keeps a byte budget (the
consensus shell bounds the in-memory log with it: issue 12)."""
from __future__ import annotations

import random

from actors.consensus.raft.storage import MemoryStorage
from actors.consensus.raft.types import Entry, SnapshotMeta


def ents(first: int, sizes: list[int], term: int = 1) -> list[Entry]:
    return [Entry(term, first + i, data=b"x" * n) for i, n in enumerate(sizes)]


def real_bytes(ms: MemoryStorage) -> int:
    return sum(e.size() for e in ms._ents[1:])


def test_bytes_follow_append_replace_compact_and_snapshot():
    rng = random.Random(7)
    ms = MemoryStorage()
    for _ in range(300):
        action = rng.random()
        last = ms.last_index()
        if action < 0.5 or last < ms.first_index():
            ms.append(ents(last + 1, [rng.randrange(0, 500) for _ in range(rng.randrange(1, 6))]))
        elif action < 0.7:
            start = rng.randrange(ms.first_index(), last + 1)  # a conflicting suffix
            ms.append(ents(start, [rng.randrange(0, 500) for _ in range(rng.randrange(1, 4))], term=2))
        elif action < 0.95:
            ms.compact(rng.randrange(ms.first_index(), last + 1))
        else:
            ms.apply_snapshot(SnapshotMeta(last + 10, 3))
        assert ms.bytes == real_bytes(ms)


def test_keep_within_keeps_at_most_the_budget_below_an_index():
    ms = MemoryStorage()
    ms.append(ents(1, [100] * 10))  # each entry is 100 bytes + overhead
    size = ms._ents[1].size()
    assert ms.keep_within(10, 3 * size) == 7  # entries 8, 9, 10 fit; compact at 7
    assert ms.keep_within(10, 3 * size - 1) == 8
    assert ms.keep_within(5, 100 * size) == 0  # everything fits: nothing to drop
    ms.compact(7)
    assert ms.bytes == 3 * size


def test_inflights_are_full_at_their_byte_budget():
    from actors.consensus.raft.progress import Inflights

    inf = Inflights(capacity=10, max_bytes=1000)
    inf.add(1, 400)
    inf.add(2, 500)
    assert not inf.full()
    inf.add(3, 200)  # one message may go past the budget; then nothing more
    assert inf.full() and inf.bytes == 1100
    inf.free_le(2)
    assert not inf.full() and inf.bytes == 200
    inf.free_first_one()
    assert inf.bytes == 0
    inf.add(4, 5000)
    inf.reset()
    assert inf.bytes == 0 and len(inf) == 0
