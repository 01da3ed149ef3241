"""Lock figures for `make bench-lease` (figures only, no asserts): acquire/release cycles
per second on one lock with 1 and 16 contenders (each a process with its own session),
against a fresh local 3-node cluster. `--fake` runs against the in-process fake gateway
(a smoke run of this script; its figures mean nothing).

    python tests/bench/bench_lock.py [--duration 10] [--contenders 1,16] [--fake]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))


def contender(endpoints: list[str], duration: float, start_at: float, out: "mp.Queue") -> None:
    from protocol.client import Client
    from protocol.client.concurrency import Lock, Session

    with Client(endpoints, timeout=10) as c, Session(c, ttl=10) as s:
        lock = Lock(s, "bench-lock")
        lat: list[float] = []
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        while time.time() < end:
            t0 = time.perf_counter()
            lock.acquire(timeout=max(1.0, end - time.time() + 5))
            lock.release()
            lat.append(time.perf_counter() - t0)
        out.put(lat)


def run(endpoints: list[str], n: int, duration: float) -> dict:
    q: mp.Queue = mp.Queue()
    start_at = time.time() + 2.0
    ps = [mp.Process(target=contender, args=(endpoints, duration, start_at, q)) for _ in range(n)]
    for p in ps:
        p.start()
    lats = [q.get(timeout=duration + 60) for _ in ps]
    for p in ps:
        p.join(10)
    all_lat = sorted(x for l in lats for x in l)
    cycles = len(all_lat)
    return {"contenders": n, "cycles": cycles, "per_s": cycles / duration,
            "p50_ms": 1000 * all_lat[len(all_lat) // 2] if all_lat else 0,
            "p99_ms": 1000 * all_lat[int(len(all_lat) * 0.99)] if all_lat else 0,
            "min_per_contender": min(len(l) for l in lats)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--contenders", default="1,16")
    ap.add_argument("--fake", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-lock-"))
    cluster = srv = None
    try:
        if args.fake:
            from fakeserver import FakeServer

            srv = FakeServer().start()
            endpoints = [srv.endpoint]
            what = "the fake gateway"
        else:
            from nodeproc import Cluster

            cluster = Cluster(tmp, 3).start()
            endpoints = [n.client_url for n in cluster.nodes]
            what = "a local 3-node cluster"
        print(f"lock acquire/release cycles on one lock, {what}, {args.duration:g} s each")
        for n in (int(x) for x in args.contenders.split(",")):
            r = run(endpoints, n, args.duration)
            print(f"  {r['contenders']:>2} contender(s): {r['per_s']:8.1f} cycles/s "
                  f"({r['cycles']} cycles; per cycle, waiting included: p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms; fewest cycles of one contender: {r['min_per_contender']})")
    finally:
        if cluster is not None:
            cluster.stop()
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
