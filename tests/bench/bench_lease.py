"""`make bench-lease` (lease part): keep-alive throughput with 10,000 leases.

Grants BENCH_LEASES leases (default 10,000) on a fresh local node, or on the leader of
a fresh 3-node cluster with BENCH_CLUSTER=1, then sends keep-alives for all of them,
round after round, for BENCH_SECONDS (default 10 s), from BENCH_CLIENTS DEALER sockets
with a window of requests in flight each. Prints grant and keep-alive rates and
keep-alive latency percentiles. Then it lets every lease go unrefreshed long enough to be
checkpointed (the node runs with QKV_LEASE_CHECKPOINT_S=1) and times one more round: a
keep-alive of a checkpointed lease is acknowledged only after a clearing checkpoint has
committed, so that round shows the cost of checkpoints. Figures only: nothing here
asserts on time.
"""
from __future__ import annotations

import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

from nodeproc import Cluster, NodeProcess  # noqa: E402
from protocol.codec import pack, unpack  # noqa: E402

LEASES = int(os.environ.get("BENCH_LEASES", "10000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
WINDOW = int(os.environ.get("BENCH_WINDOW", "128"))
CLUSTER = os.environ.get("BENCH_CLUSTER", "") not in ("", "0")


def pipeline(url: str, reqs: list[dict], window: int, latencies: list[float] | None = None,
             stop_at: float | None = None) -> list[dict]:
    """Send reqs with at most `window` in flight on one DEALER; replies in request order."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    sent_at: dict[int, float] = {}
    replies: dict[int, dict] = {}
    try:
        nxt = 0
        while len(replies) < nxt or nxt < len(reqs):
            while nxt < len(reqs) and nxt - len(replies) < window and (stop_at is None or time.monotonic() < stop_at):
                sent_at[nxt] = time.monotonic()
                sock.send(pack({**reqs[nxt], "id": nxt}))
                nxt += 1
            if len(replies) == nxt:
                break
            if not sock.poll(10_000):
                raise RuntimeError(f"no reply after {len(replies)} of {nxt}")
            rep = unpack(sock.recv())
            replies[rep["id"]] = rep
            if latencies is not None:
                latencies.append(time.monotonic() - sent_at[rep["id"]])
    finally:
        sock.close()
    return [replies[i] for i in range(len(replies))]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else 0.0


def main() -> int:
    os.environ.setdefault("QKV_LEASE_CHECKPOINT_S", "1")
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-lease-"))
    cluster = Cluster(tmp, 3) if CLUSTER else None
    node = None
    try:
        if cluster:
            cluster.start()
            node = cluster.leader()
        else:
            node = NodeProcess(tmp, "n1").start()
        where = "the leader of a 3-node cluster" if cluster else "one node"
        t0 = time.monotonic()
        chunks = [list(range(i, LEASES, CLIENTS)) for i in range(CLIENTS)]
        ids: list[int] = []
        lock = threading.Lock()

        def grant(chunk: list[int]) -> None:
            reps = pipeline(node.client_url, [{"op": "lease_grant", "ttl": 60}] * len(chunk), WINDOW)
            with lock:
                ids.extend(r["ID"] for r in reps if r.get("ok"))

        threads = [threading.Thread(target=grant, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        grant_s = time.monotonic() - t0
        print(f"lease grant: {len(ids)} leases in {grant_s:.2f}s = {len(ids) / grant_s:,.0f}/s on {where}")

        latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
        counts = [0] * CLIENTS
        errors = [0] * CLIENTS
        stop_at = time.monotonic() + SECONDS
        per_client = [ids[i::CLIENTS] for i in range(CLIENTS)]

        def keepalive(i: int) -> None:
            while time.monotonic() < stop_at:
                reqs = [{"op": "lease_keepalive", "ID": lease_id} for lease_id in per_client[i]]
                reps = pipeline(node.client_url, reqs, WINDOW, latencies[i], stop_at)
                counts[i] += sum(1 for r in reps if r.get("ok"))
                errors[i] += sum(1 for r in reps if not r.get("ok"))

        t1 = time.monotonic()
        threads = [threading.Thread(target=keepalive, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t1
        lat = list(itertools.chain.from_iterable(latencies))
        total = sum(counts)
        print(f"lease keep-alive: {len(ids)} leases, {CLIENTS} clients x window {WINDOW}: "
              f"{total} keep-alives in {took:.2f}s = {total / took:,.0f}/s, errors {sum(errors)}; "
              f"latency p50 {pct(lat, 0.5) * 1000:.2f} ms, p99 {pct(lat, 0.99) * 1000:.2f} ms")

        # Every lease unrefreshed for > 2 checkpoint intervals + the 1 s margin: all checkpointed.
        wait_until = time.monotonic() + 2 * float(os.environ["QKV_LEASE_CHECKPOINT_S"]) + 1.5
        while time.monotonic() < wait_until:
            time.sleep(0.1)
        latencies = [[] for _ in range(CLIENTS)]
        t2 = time.monotonic()
        results: list[list[dict]] = [[] for _ in range(CLIENTS)]

        def one_round(i: int) -> None:
            reqs = [{"op": "lease_keepalive", "ID": lease_id} for lease_id in per_client[i]]
            results[i] = pipeline(node.client_url, reqs, WINDOW, latencies[i])

        threads = [threading.Thread(target=one_round, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t2
        lat = list(itertools.chain.from_iterable(latencies))
        done = sum(1 for rs in results for r in rs if r.get("ok"))
        print(f"lease keep-alive of checkpointed leases (one round): {done} in {took:.2f}s = "
              f"{done / took:,.0f}/s; latency p50 {pct(lat, 0.5) * 1000:.2f} ms, "
              f"p99 {pct(lat, 0.99) * 1000:.2f} ms")
        return 0
    finally:
        if cluster:
            cluster.stop()
        elif node:
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
