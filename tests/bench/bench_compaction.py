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

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from protocol.requests import Limits, normalize_request

ROOT = os.path.join(os.environ.get("QKV_BENCH_DIR") or tempfile.gettempdir(), "qkv-bench-compaction")


def n(op, **f):
    return normalize_request({"op": op, **f}, Limits())


class Counting:
    def __init__(self, inner):
        self.inner = inner
        self.c = {"get": 0, "seek": 0, "item": 0, "write": 0}
        self.on = False

    def get(self, cf, key):
        if self.on:
            self.c["get"] += 1
        return self.inner.get(cf, key)

    def iterate(self, cf, start, end=None, reverse=False):
        if self.on:
            self.c["seek"] += 1
        for item in self.inner.iterate(cf, start, end, reverse):
            if self.on:
                self.c["item"] += 1
            yield item

    def write(self, batch, sync=False):
        if self.on:
            self.c["write"] += len(batch)
        self.inner.write(batch, sync)

    def snapshot(self):
        return self.inner.snapshot()

    def size_bytes(self):
        return self.inner.size_bytes()

    def close(self):
        self.inner.close()


def run(revisions: int, value_size: int = 64) -> None:
    path = f"{ROOT}-{revisions}"
    shutil.rmtree(path, ignore_errors=True)
    be = Counting(RocksBackend(path))
    store = MVCCStore(be)
    keys = revisions // 4
    entries = []
    idx = 0
    for rnd in range(4):
        for k in range(keys):
            idx += 1
            if rnd == 3 and k % 7 == 0:
                op = n("delete_range", key=b"key/%08d" % k)
            else:
                op = n("put", key=b"key/%08d" % k, value=bytes([65 + rnd]) * value_size)
            entries.append((idx, op))
    for i in range(0, len(entries), 1000):
        store.apply(entries[i:i + 1000])
    be.on = True
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
    ops = sum(be.c.values())
    line = (f"{revisions:>7} revisions: compact apply {apply_s * 1000:8.1f} ms, total {total:7.3f} s, "
            f"backend ops {ops} {be.c}")
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
