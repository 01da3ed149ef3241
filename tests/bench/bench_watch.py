"""`make bench-watch`: watch figures against a fresh local node (figures only, no asserts).

1. fast: one watcher taking 100,000 events as fast as it can: live (written with 256 puts
   in flight while it watches) and replayed from history (a watch from the past).
2. many: 1,000 watchers of the client library (Client.watch; 4 consumer processes, the
   watchers of each sharing its client's one SUB connection) over 100 prefixes under a 2,000 puts/s load: delivery latency
   from commit (the put's acknowledgement) to the consumer, p50/p99, and events/s.
3. load: 10,000 watchers over 1,000 prefixes under 2,000 puts/s, as subscriptions of
   plain SUB sockets (100 connections of 100 subscriptions): latency p50/p99 and the
   broadcaster's RSS per watcher.
4. idle: 10,000 idle watchers, the broadcaster's RSS per watcher, in three shapes (each on
   a fresh node): ``conn`` one SUB connection per watcher (what the client library does
   today), ``prefix`` 100 connections x 100 subscriptions over 1,000 prefixes (10
   watchers share each topic), ``keys`` the same over 10,000 distinct keys.

BENCH_STEPS (comma-separated: fast,many,load,idle) picks steps; BENCH_IDLE_SHAPES
(conn,prefix,keys) the idle shapes; other knobs below.
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
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "100"))  # the shared shapes' connections
IDLE_PROCS = 10
IDLE_SHAPES = os.environ.get("BENCH_IDLE_SHAPES", "conn,prefix,keys").split(",")
PREFIX_TOPICS = 1000
LOAD_WATCHERS = int(os.environ.get("BENCH_LOAD_WATCHERS", "10000"))
LOAD_CONNS = int(os.environ.get("BENCH_LOAD_CONNS", "100"))
FAST_EVENTS = int(os.environ.get("BENCH_FAST_EVENTS", "100000"))
STEPS = os.environ.get("BENCH_STEPS", "fast,many,load,idle").split(",")


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
    from protocol.client import Client

    c = Client([url])  # its watchers share one SUB socket (protocol/client/watch.py)
    watchers = [c.watch(f"p{(first + i) % PREFIXES:02d}/", prefix=True) for i in range(count)]
    ready.set()
    cpu0 = time.process_time()
    arrivals: list[tuple[int, float]] = []
    events = 0
    while not done.is_set():
        # Let messages gather for a millisecond, then take what each watcher has (a
        # get(timeout=0) only looks at the watcher's inbox: no socket, no wait).
        time.sleep(0.001)
        for w in watchers:
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
# A watcher is one subscription (a topic on a SUB connection, SPEC section 5). The client
# library today opens a SUB socket (and a DEALER) per watcher, so 1,000 watchers in one
# process pass zmq's 1,023 sockets per context: these consumers are plain SUB sockets, as
# a consumer in any language may be, each holding as many subscriptions as the shape says.
def prefix_topic(i: int) -> bytes:
    from protocol.client.types import prefix_end
    from protocol.client.watch import watch_topic

    p = f"p{i:03d}/".encode()
    return watch_topic(p, prefix_end(p))


def key_topic(i: int) -> bytes:
    from protocol.client.watch import watch_topic

    return watch_topic(f"idle/{i:06d}".encode())


def shape_topics(shape: str, watchers: int, conns: int) -> list[list[bytes]]:
    """The topics of each connection: ``conn`` = one key per connection; ``prefix`` =
    ``watchers`` subscriptions over ``conns`` connections on PREFIX_TOPICS prefixes (so
    watchers // PREFIX_TOPICS connections share each); ``keys`` = the same over distinct
    keys."""
    per = watchers // conns
    if shape == "prefix":
        return [[prefix_topic((c * per + j) % PREFIX_TOPICS) for j in range(per)] for c in range(conns)]
    return [[key_topic(c * per + j) for j in range(per)] for c in range(conns)]


def sub_proc(url: str, conn_topics: list[list[bytes]], ready, done, out, record: bool) -> None:
    """Plain SUB consumers: one socket per entry of conn_topics, subscribed to its topics.
    Ready once every subscription was answered (the broadcaster sends a progress message
    on each subscribe it grants); then drains, and with ``record`` keeps (revision,
    arrival) of each events message."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(conn_topics) + 64)
    socks = []
    for topics in conn_topics:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.connect(url)
        for t in topics:
            s.subscribe(t)
        socks.append(s)
    waiting = {(i, t) for i, topics in enumerate(conn_topics) for t in topics}
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    arrivals: list[tuple[int, float]] = []
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for s, _ in poller.poll(100):
            i = index[s]
            while True:
                try:
                    topic, _payload = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                waiting.discard((i, topic))
    ready.set()
    msgs = 0
    while not done.is_set():
        if record:
            time.sleep(0.001)  # let messages gather: one poll over many sockets per ms
        for s, _ in poller.poll(100):
            while True:
                try:
                    _topic, payload = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msgs += 1
                if record and payload[1:2] != b"\x82":  # not a progress message (a 2-entry map)
                    now = time.time()
                    body = msgpack.unpackb(payload[1:])
                    rev = body.get("revision")
                    if rev is not None:
                        arrivals.append((rev, now))
    out.put((len(waiting), msgs, arrivals))
    for s in socks:
        s.close(linger=0)
    ctx.term()


class Subscribers:
    """Consumer processes holding ``conn_topics`` (split over ``procs`` processes)."""

    def __init__(self, url: str, conn_topics: list[list[bytes]], procs: int, record: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.done = ctx.Event()
        self.out = ctx.Queue()
        procs = max(1, min(procs, len(conn_topics)))
        chunks = [conn_topics[i::procs] for i in range(procs)]
        self.readies = [ctx.Event() for _ in chunks]
        self.procs = [ctx.Process(target=sub_proc, args=(url, chunk, self.readies[i], self.done, self.out, record))
                      for i, chunk in enumerate(chunks)]
        t0 = time.time()
        for p in self.procs:
            p.start()
        for r in self.readies:
            r.wait(360)
        self.setup_s = time.time() - t0

    def stop(self) -> tuple[int, int, list[tuple[int, float]]]:
        """(subscriptions never answered, messages received, arrivals)."""
        self.done.set()
        results = [self.out.get(timeout=120) for _ in self.procs]
        for p in self.procs:
            p.join(60)
        return (sum(r[0] for r in results), sum(r[1] for r in results),
                [a for r in results for a in r[2]])


def smaps(pid: int) -> dict[str, float]:
    """MiB of the process's resident memory: heap (glibc main arena), other anonymous
    mappings (glibc thread arenas, pymalloc arenas, mmapped blocks), file-backed."""
    out = {"heap": 0.0, "anon": 0.0, "file": 0.0}
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                kib = int(parts[1]) / 1024
                if name == "[heap]":
                    out["heap"] += kib
                elif name == "" or name.startswith("[anon"):
                    out["anon"] += kib
                else:
                    out["file"] += kib
    return {k: round(v, 1) for k, v in out.items()}


def bench_idle_shape(node: NodeProcess, shape: str, watchers: int, conns: int, procs: int) -> None:
    pid = node.actor_pids()["watch"]
    time.sleep(1)
    before, sm0 = rss_mib(pid), smaps(pid)
    subs = Subscribers(node.watch_url, shape_topics(shape, watchers, conns), procs)
    time.sleep(3)  # a heartbeat goes by
    after, sm1 = rss_mib(pid), smaps(pid)
    cpu0 = cpu_s(pid)
    time.sleep(4)
    idle_cpu = (cpu_s(pid) - cpu0) / 4
    missing, msgs, _ = subs.stop()
    distinct = len({t for ts in shape_topics(shape, watchers, conns) for t in ts})
    what = {"conn": "one key per connection", "prefix": f"{distinct} prefixes",
            "keys": f"{distinct} distinct keys"}[shape]
    delta = {k: round(sm1[k] - sm0[k], 1) for k in sm0}
    print(f"[idle:{shape}] {watchers} watchers on {conns} SUB connections ({what}), set up in "
          f"{subs.setup_s:.1f}s{f', {missing} NOT ANSWERED' if missing else ''}: broadcaster RSS "
          f"{before:.1f} -> {after:.1f} MiB = {(after - before) * 1024 * 1024 / watchers:.0f} B per watcher; "
          f"growth heap {delta['heap']} anon {delta['anon']} MiB; idle CPU {idle_cpu * 100:.0f}% of a core")
    # The broadcaster gives memory back (every 2 s, once enough went away). libzmq removes
    # a closed connection's pipe by walking the XPUB's whole subscription tries (two with
    # XPUB_MANUAL) in the broadcaster's thread: 10,000 connections closing at once keep it
    # busy for about a minute here (a bare XPUB: 1,000 connections 0.2 CPU s, 3,000
    # 2.3 CPU s). So: wait until most of the growth came back, or (few connections) RSS
    # stopped moving for 6 s after 20 s, at most 30 s + 1 s per 80 connections.
    t_left = time.time()
    deadline = t_left + 30 + conns / 80
    last, still_since = rss_mib(pid), time.time()
    while time.time() < deadline:
        time.sleep(1)
        now = rss_mib(pid)
        if abs(now - last) > 0.5:
            last, still_since = now, time.time()
        if now < before + (after - before) / 4:
            break
        if conns < 1000 and time.time() - t_left >= 20 and time.time() - still_since >= 6:
            break
    print(f"[idle:{shape}] after they left: broadcaster RSS {rss_mib(pid):.1f} MiB "
          f"({time.time() - t_left:.0f}s later)")


def bench_idle(node_factory) -> None:
    for shape, conns in (("conn", IDLE), ("prefix", IDLE_CONNS), ("keys", IDLE_CONNS)):
        if shape not in IDLE_SHAPES:
            continue
        node = node_factory()
        try:
            bench_idle_shape(node, shape, IDLE, conns, IDLE_PROCS)
        finally:
            node.stop()


# --- 4. many watchers sharing connections, under load -----------------------------------
def bench_load(node: NodeProcess) -> None:
    """LOAD_WATCHERS watchers over PREFIX_TOPICS prefixes on LOAD_CONNS SUB connections
    under RATE puts/s: delivery latency from commit (the put's acknowledgement) to the
    consumer, p50/p99, and the broadcaster's RSS per watcher."""
    from test_watch_support import Load

    pid = node.actor_pids()["watch"]
    time.sleep(1)
    before = rss_mib(pid)
    conn_topics = shape_topics("prefix", LOAD_WATCHERS, LOAD_CONNS)
    subs = Subscribers(node.watch_url, conn_topics, CONSUMER_PROCS, record=True)
    time.sleep(2)
    with_watchers = rss_mib(pid)
    load = Load(node.client_url, prefix="", total=int(RATE * DURATION_S), window=64, rate=RATE)
    load._request = lambda seq: {"id": seq, "op": "put", "key": f"p{seq % PREFIX_TOPICS:03d}/{seq}".encode(),
                                 "value": b"v" * 16}
    load.record_times = True
    pids = node.actor_pids()
    cpu0 = {role: cpu_s(p) for role, p in pids.items()}
    t0 = time.time()
    load.start()
    load.join(DURATION_S * 5 + 60)
    elapsed = time.time() - t0
    cpu = {role: cpu_s(p) - cpu0[role] for role, p in pids.items()}
    loaded = rss_mib(pid)
    time.sleep(1.5)
    missing, msgs, arrivals = subs.stop()
    offset = time.time() - time.monotonic()
    acks = {rev: t + offset for rev, t in load.commit_times.items()}
    lat_ms = [(t - acks[rev]) * 1000 for rev, t in arrivals if rev in acks]
    per_topic = LOAD_WATCHERS // PREFIX_TOPICS
    expected = len(acks) * per_topic
    print(f"[load] {LOAD_WATCHERS} watchers over {PREFIX_TOPICS} prefixes on {LOAD_CONNS} SUB connections "
          f"({CONSUMER_PROCS} consumer processes, set up in {subs.setup_s:.1f}s"
          f"{f', {missing} NOT ANSWERED' if missing else ''}); load {load.acked} puts in {elapsed:.1f}s = "
          f"{load.acked / elapsed:.0f} puts/s (target {RATE}){f', failed {load.failed}' if load.failed else ''}")
    print(f"[load] delivered {len(arrivals)} events messages (expected {expected}: {per_topic} per put)")
    if lat_ms:
        print(f"[load] latency commit(ack) -> consumer: p50 {pct(lat_ms, 0.5):.2f} ms, "
              f"p99 {pct(lat_ms, 0.99):.2f} ms, max {max(lat_ms):.2f} ms")
    print("[load] CPU seconds per actor during the load: "
          + ", ".join(f"{role} {v:.1f}" for role, v in sorted(cpu.items()))
          + f"; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: "
          f"the tail follows it)")
    print(f"[load] broadcaster RSS {before:.1f} MiB -> {with_watchers:.1f} with the watchers "
          f"({(with_watchers - before) * 1024 * 1024 / LOAD_WATCHERS:.0f} B per watcher) -> {loaded:.1f} after the load")


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
    nodes: list[NodeProcess] = []

    def fresh_node() -> NodeProcess:
        tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-watch-"))
        node = NodeProcess(tmp).start()
        nodes.append(node)
        return node

    try:
        node = fresh_node()
        print(f"node {node.client_url}, watch {node.watch_url}")
        if "fast" in STEPS:
            bench_fast(node)
        if "many" in STEPS:
            bench_many(node)
        if "load" in STEPS:
            load_node = fresh_node()
            bench_load(load_node)
            load_node.stop()
        if "idle" in STEPS:
            bench_idle(fresh_node)
    finally:
        for node in nodes:
            node.stop()


if __name__ == "__main__":
    main()
