"""Physical compaction in slices gives what one-shot compaction gave (issue 13).

The same random histories (puts, deletes, txns, compactions) are applied to stores that
run physical compaction in one slice, in slices of one revision interleaved with the
next entries, or not until the end. At every step the readable state is the same
(`hash_kv` at every revision >= the compact revision, history from the compact
revision); at the end every column family equals a reference computed from an
uncompacted store with the rule of SPEC `compact`. Then: a restart between slices
resumes, a second compaction during the first extends it, the pinned hash job.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc.keys import split_hist_key
from actors.storage.mvcc.revision import Revision
from actors.storage.mvcc.store import (
    CF_HIST, CF_META, CF_REV, COLUMN_FAMILIES, META_COMPACT_CURSOR,
)
from mvcc_kv import n
from tests.lanes import examples

KEYS = [b"a", b"b", b"b\x00", b"c", b"dd", b"e"]


def random_ops(rng: random.Random, count: int) -> list[tuple[str, dict]]:
    """("compact", {"fraction"}) or ("op", normalized op): compactions are given as a
    fraction of the current revision, resolved when applied."""
    ops: list[tuple[str, dict]] = []
    for _ in range(count):
        r = rng.random()
        key = rng.choice(KEYS)
        if r < 0.5:
            ops.append(("op", n("put", key=key, value=b"%d" % rng.randrange(1000))))
        elif r < 0.65:
            ops.append(("op", n("delete_range", key=key)))
        elif r < 0.7:
            ops.append(("op", n("delete_range", key=b"b", range_end=b"d")))
        elif r < 0.85:
            other = rng.choice([k for k in KEYS if k != key])
            ops.append(("op", n("txn", compare=[], success=[
                {"put": {"key": key, "value": b"t"}},
                {"delete_range": {"key": other}} if rng.random() < 0.5 else {"put": {"key": other, "value": b"u"}},
            ], failure=[])))
        else:
            ops.append(("compact", {"fraction": rng.random()}))
    return ops


class Runner:
    """One store over a MemoryBackend; `mode`: "one" (physical at once after each compact),
    "many" (one revision per slice, a slice after every entry), "late" (never until the end),
    "none" (no compaction: the reference's source)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.backend = MemoryBackend()
        self.store = MVCCStore(self.backend)

    def apply(self, op: dict) -> None:
        (res,) = self.store.apply([(self.store.applied_index + 1, op)])
        assert res.error is None, res.error
        if self.mode == "one":
            self.finish(limit=1 << 30)
        elif self.mode == "many":
            self.store.compact_step(1)

    def compact(self, revision: int) -> None:
        if self.mode == "none":
            self.store.apply([(self.store.applied_index + 1, None)])  # keeps indexes in step
            return
        self.apply({"op": "compact", "revision": revision, "physical": False})

    def finish(self, limit: int = 1) -> int:
        slices = 0
        while self.store.compaction_pending:
            self.store.compact_step(limit)
            slices += 1
        return slices

    def cf(self, name: str) -> list:
        return list(self.backend.iterate(name, b""))


def reference(none: Runner, compact: int) -> dict[str, list]:
    """What compaction at `compact` must leave, from the uncompacted store's rows: per key,
    every change above it, plus its newest change <= it unless a tombstone; rev entries
    above it; every other family untouched."""
    hist = none.cf(CF_HIST)
    newest: dict[bytes, bytes] = {}
    for hk, raw in hist:
        esc, _user, rev = split_hist_key(hk)
        if rev.main <= compact:
            newest[esc] = hk
    kept = []
    for hk, raw in hist:
        esc, _user, rev = split_hist_key(hk)
        if rev.main > compact or (newest.get(esc) == hk and raw != b""):
            kept.append((hk, raw))
    out = {name: none.cf(name) for name in COLUMN_FAMILIES if name not in (CF_HIST, CF_REV, CF_META)}
    out[CF_HIST] = kept
    out[CF_REV] = [(rk, raw) for rk, raw in none.cf(CF_REV) if Revision.from_bytes(rk).main > compact]
    return out


def readable(store: MVCCStore) -> list:
    """Everything a client can read: hash_kv at every revision from the compact one, and
    the history from it (events without prev_kv at the compact revision, with after)."""
    out = []
    for rev in range(max(store.compact_revision, 1), store.current_revision + 1):
        out.append(store.hash_kv(rev))
    out.append(store.history(n("history", key=b"\x00", range_end=b"\x00", prev_kv=True)))
    out.append(store.events_between(store.compact_revision, store.current_revision))
    return out


def run_history(ops: list[tuple[str, dict]]) -> None:
    runners = {mode: Runner(mode) for mode in ("one", "many", "late", "none")}
    compact = 0
    for kind, op in ops:
        if kind == "compact":
            cur = runners["one"].store.current_revision
            revision = max(compact + 1, int(op["fraction"] * cur))
            if revision > cur:
                continue
            compact = revision
            for r in runners.values():
                r.compact(revision)
        else:
            for r in runners.values():
                r.apply(op)
        states = [readable(runners[m].store) for m in ("one", "many", "late")]
        assert states[0] == states[1] == states[2]
    for r in runners.values():
        r.finish()
    want = reference(runners["none"], compact)
    for mode in ("one", "many", "late"):
        r = runners[mode]
        assert not r.store.compaction_pending and r.store.physical_revision == compact
        for name, rows in want.items():
            assert r.cf(name) == rows, (mode, name)
    metas = [runners[m].cf(CF_META) for m in ("one", "many", "late")]
    assert metas[0] == metas[1] == metas[2]


@pytest.mark.parametrize("seed", range(12))
def test_slicing_does_not_change_what_compaction_leaves(seed):
    run_history(random_ops(random.Random(seed), 80))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 60))
def test_slicing_does_not_change_what_compaction_leaves_hypothesis(rng, count):
    run_history(random_ops(rng, count))


def _history(runner: Runner, rng: random.Random, count: int) -> None:
    for kind, op in random_ops(rng, count):
        if kind == "op":
            runner.apply(op)


def test_a_restart_between_slices_resumes(tmp_path):
    rng = random.Random(7)
    late, none = Runner("late"), Runner("none")
    ops = [op for kind, op in random_ops(rng, 300) if kind == "op"]
    for op in ops:
        late.apply(op)
        none.apply(op)
    revision = late.store.current_revision - 5
    late.compact(revision)
    for _ in range(3):
        late.store.compact_step(7)
    progress = late.store.physical_revision
    assert late.store.compaction_pending and 0 < progress < revision
    late.store = MVCCStore(late.backend)  # a crash: everything written so far is there
    assert late.store.compaction_pending and late.store.physical_revision == progress
    assert late.finish(limit=7) > 1
    for name, rows in reference(none, revision).items():
        assert late.cf(name) == rows, name


def test_a_second_compaction_during_the_first_extends_it():
    rng = random.Random(11)
    late, none = Runner("late"), Runner("none")
    for op in [op for kind, op in random_ops(rng, 200) if kind == "op"]:
        late.apply(op)
        none.apply(op)
    first = late.store.current_revision // 2
    late.compact(first)
    late.store.compact_step(5)
    before = late.store.physical_revision
    for op in [op for kind, op in random_ops(rng, 100) if kind == "op"]:
        late.apply(op)
        none.apply(op)
    second = late.store.current_revision - 3
    late.compact(second)
    assert late.store.compaction_pending and late.store.physical_revision == before
    late.finish(limit=3)
    assert late.store.physical_revision == second
    for name, rows in reference(none, second).items():
        assert late.cf(name) == rows, name


def test_a_store_compacted_before_slicing_has_nothing_pending():
    """Stores written by the one-shot compaction have no cursor: nothing is pending, and
    the next compaction starts right after the old compact revision."""
    r = Runner("one")
    for i in range(20):
        r.apply(n("put", key=b"k%d" % (i % 3), value=b"%d" % i))
    r.compact(10)
    r.backend.write([(CF_META, META_COMPACT_CURSOR, None)])
    store = MVCCStore(r.backend)
    assert not store.compaction_pending and store.physical_revision == 10
    (res,) = store.apply([(store.applied_index + 1, n("compact", revision=15))])
    assert res.error is None and store.compaction_pending and store.physical_revision == 10
    while store.compact_step(2):
        pass
    assert store.physical_revision == 15
    assert all(Revision.from_bytes(rk).main > 15 for rk, _ in r.cf(CF_REV))


@pytest.mark.parametrize("kind", ["memory", "rocks"])
def test_hash_job_reads_a_pinned_view(tmp_path, kind):
    backend = MemoryBackend() if kind == "memory" else RocksBackend(tmp_path / "db")
    try:
        store = MVCCStore(backend)
        index = 0
        for i in range(600):
            index += 1
            store.apply([(index, n("put", key=b"k%04d" % (i % 200), value=b"v%d" % i))])
        index += 1
        store.apply([(index, n("compact", revision=300))])
        want_now = store.hash_kv()
        want_old = store.hash_kv(400)
        now_job, old_job = store.hash_kv_job(), store.hash_kv_job(400)
        steps = 0
        while not (now_job.done and old_job.done):
            now_job.step(17)
            old_job.step(5)
            steps += 1
            # writes, deletes and physical compaction between steps change nothing
            index += 1
            store.apply([(index, n("delete_range", key=b"k%04d" % (steps % 200)))])
            store.compact_step(50)
        assert steps > 10
        assert now_job.result == want_now and old_job.result == want_old
        assert store.hash_kv(400) == want_old  # history at 400 survives the compaction at 300
    finally:
        backend.close()


def test_rocks_snapshot_iterates_as_the_backend_did(tmp_path):
    backend = RocksBackend(tmp_path / "db")
    try:
        backend.write([("key", b"k%02d" % i, b"%d" % i) for i in range(30)])
        snap = backend.snapshot()
        cases = [(b"", None, False), (b"", None, True), (b"k05", b"k10", False), (b"k05", b"k10", True),
                 (b"k10", b"k05", False), (b"k295", None, True), (b"a", b"k00", True)]
        want = [list(backend.iterate("key", *c)) for c in cases]
        backend.write([("key", b"k%02d" % i, None) for i in range(0, 30, 2)] + [("key", b"k07x", b"new")])
        assert [list(snap.iterate("key", *c)) for c in cases] == want
        assert snap.get("key", b"k00") == b"0" and backend.get("key", b"k00") is None
        assert snap.get("key", b"k07x") is None
        assert list(snap.iterate("nope", b"")) == []
        walk = snap.iterate("key", b"")
        next(walk)
        backend.close()  # closes the snapshot too; the suspended walk ends
        assert list(walk) == []
    finally:
        backend.close()
