"""Client throughput, asyncio against threads (figures only, no asserts of speed): N
concurrent asyncio tasks through ONE AsyncClient, then T threads through ONE threaded
Client, the same total of operations, against a fresh local node.

Each task (thread) alternates a put of its own key and a get of it, and checks that
every answer is there and in order: the put's revision is above anything the task saw
before, the get sees that very put (value and mod revision) at a revision not below it.
tests/integration/test_client_async.py runs the asyncio half as an acceptance test.

    python tests/bench/bench_client.py [--tasks 1000] [--ops 100] [--threads 64]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for p in (str(ROOT), str(HERE.parent)):
    if p not in sys.path:
        sys.path.insert(0, p)


class Order:
    """One task's (thread's) view: every answer arrives, in order."""

    def __init__(self, worker: int) -> None:
        self.key = f"bench-client/{worker:05d}"
        self.seen = 0  # the highest revision this worker has seen
        self.ops = 0

    def put_answered(self, i: int, resp: Any) -> None:
        rev = resp.header.revision
        assert rev > self.seen, f"{self.key}: put {i} at revision {rev} after seeing {self.seen}"
        self.seen = rev
        self.ops += 1

    def get_answered(self, i: int, resp: Any) -> None:
        assert resp.kvs, f"{self.key}: get {i} does not see the put before it"
        kv = resp.kvs[0]
        assert kv.value == str(i).encode() and kv.mod_revision == self.seen, \
            f"{self.key}: get {i} saw {kv.value!r} at {kv.mod_revision}, put was at {self.seen}"
        assert resp.header.revision >= self.seen, f"{self.key}: get {i} went back in time"
        self.seen = resp.header.revision
        self.ops += 1


async def async_ordered(client: Any, tasks: int, ops: int) -> dict[str, float]:
    """``tasks`` tasks, ``ops`` operations each (put, get, put, get...), all through one
    AsyncClient; raises AssertionError on a missing or out-of-order answer."""
    orders = [Order(t) for t in range(tasks)]

    async def work(o: Order) -> None:
        for i in range(ops // 2):
            o.put_answered(i, await client.put(o.key, str(i)))
            o.get_answered(i, await client.get(o.key))

    t0 = time.perf_counter()
    await asyncio.gather(*(work(o) for o in orders))
    took = time.perf_counter() - t0
    done = sum(o.ops for o in orders)
    assert done == tasks * (ops // 2) * 2, done
    return {"ops": done, "seconds": took, "per_s": done / took}


def threaded_ordered(client: Any, threads: int, total_ops: int) -> dict[str, float]:
    """``threads`` threads sharing one threaded Client, ``total_ops`` in all."""
    per = total_ops // threads
    orders = [Order(t) for t in range(threads)]
    errors: list[BaseException] = []

    def work(o: Order) -> None:
        try:
            for i in range(per // 2):
                o.put_answered(i, client.put(o.key, str(i)))
                o.get_answered(i, client.get(o.key))
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(o,)) for o in orders]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    done = sum(o.ops for o in orders)
    return {"ops": done, "seconds": took, "per_s": done / took}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--ops", type=int, default=100, help="operations per task")
    ap.add_argument("--threads", type=int, default=64)
    args = ap.parse_args()
    from nodeproc import NodeProcess

    from protocol.client import Client
    from protocol.client.aio import AsyncClient

    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-client-"))
    node = NodeProcess(tmp, "n1")
    try:
        node.start()
        total = args.tasks * args.ops

        async def run_async() -> dict[str, float]:
            async with AsyncClient([node.client_url], timeout=30) as c:
                return await async_ordered(c, args.tasks, args.ops)

        a = asyncio.run(run_async())
        print(f"asyncio: {args.tasks} tasks x {args.ops} ops through one AsyncClient: "
              f"{a['per_s']:8.0f} ops/s ({a['ops']:.0f} ops in {a['seconds']:.1f} s)")
        with Client([node.client_url], timeout=30) as c:
            t = threaded_ordered(c, args.threads, total)
        print(f"threads: {args.threads} threads, {total} ops through one Client:      "
              f"{t['per_s']:8.0f} ops/s ({t['ops']:.0f} ops in {t['seconds']:.1f} s)")
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
