"""In-process compaction figures on RocksDB (issue 13), for whichever checkout is on
PYTHONPATH: time and backend operations to compact N revisions (N/4 keys x 4 versions,
every 7th key deleted at the end): the `compact` apply, then (sliced compaction) every
physical slice of at most 1,000 revisions / a 4 ms scan, as the storage actor runs them.
Figures only, no asserts: `python tests/bench/bench_compaction.py [N ...]`
(default 10,000 40,000 160,000; data under $TMPDIR, removed after)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path += [str(HERE.parent.parent), str(HERE.parent / "unit")]  # after PYTHONPATH's checkout

from actors.storage.backend import RocksBackend  # noqa: E402
from mvcc_kv import n  # noqa: E402
from test_compaction_linear import _loaded  # noqa: E402

ROOT = os.path.join(os.environ.get("QKV_BENCH_DIR") or tempfile.gettempdir(), "qkv-bench-compaction")


def run(revisions: int, value_size: int = 64) -> None:
    path = f"{ROOT}-{revisions}"
    shutil.rmtree(path, ignore_errors=True)
    be, store = _loaded(revisions, RocksBackend(path), value_size)
    idx = store.applied_index
    be.reset()
    t0 = time.perf_counter()
    (res,) = store.apply([(idx + 1, n("compact", revision=store.current_revision))])
    assert res.error is None
    apply_s = time.perf_counter() - t0
    slices = []
    if hasattr(store, "compact_step"):
        limit = 1000
        while store.compaction_pending:
            s0 = time.perf_counter()
            deadline = s0 + 0.004  # the actor's COMPACTION_SCAN_S
            store.compact_step(limit, stop=lambda: time.perf_counter() >= deadline)
            slices.append(time.perf_counter() - s0)
    total = time.perf_counter() - t0
    ops = be.ops
    line = (f"{revisions:>7} revisions: compact apply {apply_s * 1000:8.1f} ms, total {total:7.3f} s, "
            f"backend ops {ops} {be.counts}")
    if slices:
        slices.sort()
        line += (f", {len(slices)} slices (limit 1000 / scan 4 ms): p50 {slices[len(slices) // 2] * 1000:.2f} ms, "
                 f"max {slices[-1] * 1000:.2f} ms, sum {sum(slices):.3f} s")
    print(line, flush=True)
    be.close()
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    for r in [int(a) for a in sys.argv[1:]] or [10_000, 40_000, 160_000]:
        run(r)
