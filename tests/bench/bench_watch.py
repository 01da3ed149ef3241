"""`make bench-watch`: watch figures against a fresh local node (figures only, no asserts).

1. 1,000 watchers (4 consumer processes) over 100 prefixes under a 2,000 puts/s load:
   delivery latency from commit (the put's acknowledgement) to the consumer, p50/p99,
   and events/s delivered.
2. 10,000 idle watchers (10 processes, one key each): the broadcaster's RSS.
3. One watcher taking 100,000 events as fast as it can: live (written with 256 puts in
   flight while it watches) and replayed from history (a watch from the past).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "integration"))

from nodeproc import NodeProcess  # noqa: E402

PREFIXES = 100
WATCHERS = int(os.environ.get("BENCH_WATCHERS", "1000"))
CONSUMER_PROCS = 4
RATE = int(os.environ.get("BENCH_RATE", "2000"))
DURATION_S = float(os.environ.get("BENCH_DURATION_S", "10"))
IDLE = int(os.environ.get("BENCH_IDLE_WATCHERS", "10000"))
IDLE_PROCS = 10
FAST_EVENTS = int(os.environ.get("BENCH_FAST_EVENTS", "100000"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


# --- 1. many watchers under load --------------------------------------------------------
def consumer_proc(url: str, first: int, count: int, ready, done, out) -> None:
    import zmq

    from protocol.client import Client

    c = Client([url])
    watchers = [c.watch(f"p{(first + i) % PREFIXES:02d}/", prefix=True) for i in range(count)]
    poller = zmq.Poller()
    by_sock = {}
    for w in watchers:
        poller.register(w._sub, zmq.POLLIN)
        by_sock[w._sub] = w
    ready.set()
    cpu0 = time.process_time()
    arrivals: list[tuple[int, float]] = []
    events = 0
    while not done.is_set():
        # A zmq.Poller over 250 sockets costs ~0.1 ms a call: let messages gather for a
        # millisecond between polls instead of waking up for each one.
        time.sleep(0.001)
        for sock, _ in poller.poll(100):
            w = by_sock[sock]
            while True:
                resp = w.get(timeout=0)
                if resp is None:
                    break
                now = time.time()
                events += len(resp.events)
                arrivals.append((resp.revision, now))
    out.put((events, arrivals, time.process_time() - cpu0))
    for w in watchers:
        w.cancel()
    c.close()


def bench_many(node: NodeProcess) -> None:
    from test_watch_support import Load

    ctx = mp.get_context("spawn")
    done = ctx.Event()
    out = ctx.Queue()
    per = WATCHERS // CONSUMER_PROCS
    readies = [ctx.Event() for _ in range(CONSUMER_PROCS)]
    procs = [ctx.Process(target=consumer_proc, args=(node.client_url, i * per, per, readies[i], done, out))
             for i in range(CONSUMER_PROCS)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(120)
    time.sleep(1)
    load = Load(node.client_url, prefix="", total=int(RATE * DURATION_S), window=64, rate=RATE)
    load._request = lambda seq: {"id": seq, "op": "put", "key": f"p{seq % PREFIXES:02d}/{seq}".encode(),
                                 "value": b"%.6f" % time.time()}
    load.record_times = True
    # commit time: when the acknowledgement arrived (wall clock, comparable across processes)
    pids = node.actor_pids()
    cpu0 = {role: cpu_s(pid) for role, pid in pids.items()}
    t0 = time.time()
    load.start()
    load.join(DURATION_S * 5 + 60)
    elapsed = time.time() - t0
    cpu = {role: cpu_s(pid) - cpu0[role] for role, pid in pids.items()}
    time.sleep(1.5)
    done.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    # ack times were taken with time.monotonic(); convert to wall clock
    offset = time.time() - time.monotonic()
    acks = {rev: t + offset for rev, t in load.commit_times.items()}
    events = sum(r[0] for r in results)
    lat_ms = [(t - acks[rev]) * 1000 for _, arr, _ in results for rev, t in arr if rev in acks]
    consumer_cpu = sum(r[2] for r in results)
    expected = len(acks) * (WATCHERS // PREFIXES)
    print(f"[many] {WATCHERS} watchers over {PREFIXES} prefixes, {CONSUMER_PROCS} consumer processes; "
          f"load {load.acked} puts in {elapsed:.1f}s = {load.acked / elapsed:.0f} puts/s (target {RATE})")
    print(f"[many] delivered {events} events (expected {expected}) = {events / elapsed:.0f} events/s")
    print(f"[many] latency commit(ack) -> consumer: p50 {pct(lat_ms, 0.5):.2f} ms, "
          f"p99 {pct(lat_ms, 0.99):.2f} ms, max {max(lat_ms):.2f} ms "
          f"(negative = delivered before the writer got its ack)")
    print("[many] CPU seconds per actor during the load: "
          + ", ".join(f"{role} {v:.1f}" for role, v in sorted(cpu.items()))
          + f"; the {CONSUMER_PROCS} consumer processes {consumer_cpu:.1f} (2-core machine)")
    watch_pid = node.actor_pids()["watch"]
    print(f"[many] broadcaster RSS {rss_mib(watch_pid):.1f} MiB")


# --- 2. idle watchers -------------------------------------------------------------------
def idle_proc(url: str, first: int, count: int, ready, done) -> None:
    from protocol.client import Client

    c = Client([url])
    watchers = [c.watch(f"idle/{first + i:06d}") for i in range(count)]
    ready.set()
    done.wait(600)
    for w in watchers:
        w.cancel()
    c.close()


def bench_idle(node: NodeProcess) -> None:
    pid = node.actor_pids()["watch"]
    before = rss_mib(pid)
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    per = IDLE // IDLE_PROCS
    readies = [ctx.Event() for _ in range(IDLE_PROCS)]
    procs = [ctx.Process(target=idle_proc, args=(node.client_url, i * per, per, readies[i], done))
             for i in range(IDLE_PROCS)]
    t0 = time.time()
    for p in procs:
        p.start()
    for r in readies:
        r.wait(300)
    took = time.time() - t0
    time.sleep(3)  # subscriptions arrive, a heartbeat goes by
    after = rss_mib(pid)
    cpu0 = cpu_s(pid)
    time.sleep(4)
    idle_cpu = (cpu_s(pid) - cpu0) / 4
    from protocol.client import Client

    with Client([node.client_url]) as c:
        c.put("idle/000005", "x")
    time.sleep(0.5)
    print(f"[idle] {IDLE} idle watchers (one key each, {IDLE_PROCS} processes), set up in {took:.1f}s: "
          f"broadcaster RSS {before:.1f} MiB -> {after:.1f} MiB "
          f"({(after - before) * 1024 / IDLE:.1f} KiB per watcher); idle CPU {idle_cpu * 100:.0f}% "
          f"of a core (progress heartbeats)")
    done.set()
    for p in procs:
        p.join(60)


# --- 3. one fast watcher ----------------------------------------------------------------
def bench_fast(node: NodeProcess) -> None:
    from protocol.client import Client
    from test_watch_support import Load

    with Client([node.client_url]) as c:
        w = c.watch("fast/", prefix=True)
        start_rev = w.start_revision
        load = Load(node.client_url, prefix="fast/", total=FAST_EVENTS, window=256, keys=FAST_EVENTS)
        t0 = time.perf_counter()
        load.start()
        got = 0
        while got < FAST_EVENTS:
            resp = w.get(timeout=10)
            if resp is None:
                break
            got += len(resp.events)
        live_s = time.perf_counter() - t0
        load.join(60)
        write_s = time.perf_counter() - t0
        w.cancel()
        print(f"[fast] live: {got} events to one watcher in {live_s:.2f}s "
              f"({got / live_s:.0f} events/s) while 256 puts in flight wrote them "
              f"(writer done after {write_s:.2f}s); catch-ups {w.catchups}")
        t0 = time.perf_counter()
        got = 0
        with c.watch("fast/", prefix=True, start_revision=start_rev) as w2:
            while got < FAST_EVENTS:
                resp = w2.get(timeout=10)
                if resp is None:
                    break
                got += len(resp.events)
        hist_s = time.perf_counter() - t0
        print(f"[fast] replay: {got} events from history to one watcher in {hist_s:.2f}s "
              f"({got / hist_s:.0f} events/s)")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-watch-"))
    node = NodeProcess(tmp).start()
    try:
        print(f"node {node.client_url}, watch {node.watch_url}")
        bench_fast(node)
        bench_many(node)
        bench_idle(node)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
