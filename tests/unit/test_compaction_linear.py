"""Compaction's cost grows linearly in the revisions it removes (issue 13).

The store is driven in-process over a backend wrapper that counts what compaction asks of
the backend: point reads, iterator seeks, items the iterators yield, and entries written.
Compacting 4x the revisions must cost less than 5x the operations (linear gives ~4x; the
quadratic compaction of issue 13, a rescan per key, gives ~16x). No assert on time.
"""
from __future__ import annotations

from actors.storage.mvcc import MemoryBackend, MVCCStore
from mvcc_kv import n


class CountingBackend:
    """A backend (MemoryBackend unless given) that counts get / iterate (seeks) / items
    yielded / write entries. tests/bench/bench_compaction.py counts RocksDB's with it."""

    def __init__(self, inner=None) -> None:
        self.inner = MemoryBackend() if inner is None else inner
        self.counts = {"get": 0, "seek": 0, "item": 0, "write": 0}

    def reset(self) -> None:
        for k in self.counts:
            self.counts[k] = 0

    @property
    def ops(self) -> int:
        return sum(self.counts.values())

    def get(self, cf, key):
        self.counts["get"] += 1
        return self.inner.get(cf, key)

    def iterate(self, cf, start, end=None, reverse=False):
        self.counts["seek"] += 1
        for item in self.inner.iterate(cf, start, end, reverse):
            self.counts["item"] += 1
            yield item

    def write(self, batch, sync=False):
        self.counts["write"] += len(batch)
        self.inner.write(batch, sync)

    def snapshot(self):
        return self.inner.snapshot()

    def size_bytes(self):
        return self.inner.size_bytes()

    def close(self):
        self.inner.close()


def _loaded(revisions: int, inner=None, value_size: int = 16) -> tuple[CountingBackend, MVCCStore]:
    """`revisions` changes: keys updated 4 times each, every 7th one then deleted."""
    be = CountingBackend(inner)
    store = MVCCStore(be)
    keys = max(1, revisions // 4)
    entries = []
    index = 0
    for round_ in range(4):
        for k in range(keys):
            index += 1
            if round_ == 3 and k % 7 == 0:
                op = n("delete_range", key=b"key/%08d" % k)
            else:
                op = n("put", key=b"key/%08d" % k, value=(b"v%d" % round_ * value_size)[:value_size])
            entries.append((index, op))
    for i in range(0, len(entries), 1000):
        store.apply(entries[i:i + 1000])
    return be, store


def compaction_ops(revisions: int, limit: int = 1000) -> tuple[int, dict, int]:
    """(backend ops, their kinds, slices) of compacting everything of a store of
    `revisions` revisions: the logical apply plus every physical slice."""
    be, store = _loaded(revisions)
    be.reset()
    (res,) = store.apply([(store.applied_index + 1, n("compact", revision=store.current_revision))])
    assert res.error is None
    slices = 0
    while store.compaction_pending:
        store.compact_step(limit)
        slices += 1
    assert list(be.inner.iterate("rev", b"")) == []
    return be.ops, dict(be.counts), slices


def test_compaction_cost_grows_linearly():
    small, small_kinds, small_slices = compaction_ops(4_000)
    big, big_kinds, big_slices = compaction_ops(16_000)
    ratio = big / small
    print(f"4,000 revisions: {small} ops {small_kinds} in {small_slices} slices; "
          f"16,000: {big} ops {big_kinds} in {big_slices} slices; ratio {ratio:.2f}")
    assert ratio < 5, f"compaction cost grew {ratio:.1f}x for 4x the revisions: not linear"
    # and it is a handful of operations per revision removed, not a scan
    assert big / 16_000 < 10


def test_logical_compaction_costs_the_changes_of_its_revision_only():
    """The apply of `compact` reads only the changes of R itself (plus meta), whatever the
    size of the history below it."""
    costs = []
    for revisions in (2_000, 8_000):
        be, store = _loaded(revisions)
        be.reset()
        (res,) = store.apply([(store.applied_index + 1, n("compact", revision=store.current_revision))])
        assert res.error is None and store.compaction_pending
        costs.append(be.ops)
    assert costs[0] == costs[1] and costs[0] < 30, costs


def test_a_slice_is_bounded_by_its_limit_and_by_stop():
    be, store = _loaded(2_000)
    store.apply([(store.applied_index + 1, n("compact", revision=store.current_revision))])
    be.reset()
    assert store.compact_step(100) == 100
    assert be.counts["write"] <= 100 * 3 + 1
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    done = store.compact_step(10_000, stop=stop)
    assert 0 < done < 10_000 and len(asked) == 2
