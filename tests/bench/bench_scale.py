"""`make bench-scale`: Kubernetes-sized figures for quorumkv, with etcd 3.4's beside them
(when /usr/bin/etcd is installed) for the same workload, one system after the other.
Figures only: nothing here asserts.

For each system (SCALE_SYSTEMS, default "quorumkv,etcd"), each on a fresh one-member
store with its data dir on disk under SCALE_DIR (default: the system temp dir):
1. load SCALE_KEYS keys of 256 B (default 1,000,000), then, on another fresh store,
   SCALE_BIG_KEYS of 4 KB (default 100,000): load rate, RSS of every process, data dir
   size (`du`), clean restart -> first linearizable read, RSS after the restart;
2. on a third fresh store, SCALE_CHURN_KEYS keys of 256 B (default 100,000), and on it:
   - a prefix list of them paged with limit SCALE_PAGE (500), as the API server lists;
   - SCALE_WATCHERS watchers (10,000) over SCALE_WATCH_PREFIXES prefixes (1,000) under
     SCALE_WATCH_RATE puts/s (2,000) for SCALE_WATCH_S s: delivery latency from the
     writer's acknowledgement to the consumer, and the watch server's RSS per watcher;
   - SCALE_LEASES leases (10,000), one key each, kept alive by SCALE_LEASE_SESSIONS
     sessions (100) for SCALE_LEASE_S s: CPU of the server; then all of them left to
     expire together: the longest stall of a concurrent client doing gets/puts, and how
     long until every lease key is gone;
   - churn: SCALE_CLIENTS (64) requests in flight updating the keys in a loop (3 puts :
     1 linearizable get) for SCALE_CHURN_S s without compaction, then again while a
     compaction of everything written before that second phase started runs
     (the API server compacts what is older than 5 minutes; here "older" = the load and
     the whole first phase): p50/p99 of gets and puts in both, timeouts (no reply
     within SCALE_TIMEOUT_S), and how long the compaction took.
Load is generated the same way for both: SCALE_PROCS client processes sharing
SCALE_CLIENTS requests in flight (quorumkv: one DEALER socket each, raw requests as in
SPEC.md; etcd: one gRPC channel each, futures), values os.urandom(256 / 4096).
The machine may be shared: figures are noisy.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_node import cpu_seconds  # noqa: E402


def env_int(name: str, default: int) -> int:
    return int(float(os.environ.get(name, default)))


SYSTEMS = [s.strip() for s in os.environ.get("SCALE_SYSTEMS", "quorumkv,etcd").split(",") if s.strip()]
KEYS = env_int("SCALE_KEYS", 1_000_000)
BIG_KEYS = env_int("SCALE_BIG_KEYS", 100_000)
CHURN_KEYS = env_int("SCALE_CHURN_KEYS", 100_000)
CLIENTS = env_int("SCALE_CLIENTS", 64)
PROCS = env_int("SCALE_PROCS", 2)
CHURN_S = float(os.environ.get("SCALE_CHURN_S", "10"))
COMPACT_WAIT_S = float(os.environ.get("SCALE_COMPACT_WAIT_S", "120"))
TIMEOUT_S = float(os.environ.get("SCALE_TIMEOUT_S", "5"))
PAGE = env_int("SCALE_PAGE", 500)
WATCHERS = env_int("SCALE_WATCHERS", 10_000)
WATCH_PREFIXES = env_int("SCALE_WATCH_PREFIXES", 1_000)
WATCH_CONNS = env_int("SCALE_WATCH_CONNS", 100)
WATCH_RATE = env_int("SCALE_WATCH_RATE", 2_000)
WATCH_S = float(os.environ.get("SCALE_WATCH_S", "10"))
LEASES = env_int("SCALE_LEASES", 10_000)
LEASE_SESSIONS = env_int("SCALE_LEASE_SESSIONS", 100)
LEASE_S = float(os.environ.get("SCALE_LEASE_S", "10"))
LEASE_TTL = env_int("SCALE_LEASE_TTL", 10)
CONSUMER_PROCS = env_int("SCALE_CONSUMER_PROCS", 4)
BASE_DIR = os.environ.get("SCALE_DIR") or None


# --- small helpers -----------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def du_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total / 2**20


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


_T0 = time.monotonic()
FIGURES: dict[str, dict[str, str]] = {}  # figure -> system -> text, in insertion order


def figure(system: str, name: str, text: str) -> None:
    FIGURES.setdefault(name, {})[system] = text
    print(f"[{system} +{time.monotonic() - _T0:.0f}s] {name}: {text}", flush=True)


# --- connections: one request API over both wires -----------------------------------------
# An op is a tuple: ("put", key, value, lease) | ("get", key) | ("range", key, end, limit,
# count_only) | ("compact", revision) | ("status",) | ("grant", ttl) | ("keepalive", id).
# A result is a dict: ok, revision, and per op kvs (keys), more, count, ID, timeout.
class QkvConn:
    def __init__(self, url: str) -> None:
        import zmq

        from protocol.codec import pack, unpack

        self._pack, self._unpack, self._zmq = pack, unpack, zmq
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        self.next_id = 0
        self.pending: dict[int, float] = {}

    def send(self, op: tuple, timeout: float | None = None) -> int:
        self.next_id += 1
        i = self.next_id
        kind = op[0]
        if kind == "put":
            req = {"op": "put", "key": op[1], "value": op[2]}
            if op[3]:
                req["lease"] = op[3]
        elif kind == "get":
            req = {"op": "range", "key": op[1]}
        elif kind == "range":
            req = {"op": "range", "key": op[1], "range_end": op[2], "limit": op[3], "count_only": op[4]}
        elif kind == "compact":
            req = {"op": "compact", "revision": op[1], "physical": True}
        elif kind == "status":
            req = {"op": "status"}
        elif kind == "grant":
            req = {"op": "lease_grant", "ttl": op[1]}
        elif kind == "keepalive":
            req = {"op": "lease_keepalive", "ID": op[1]}
        else:
            raise ValueError(kind)
        req["id"] = i
        self.sock.send(self._pack(req))
        self.pending[i] = time.monotonic() + (TIMEOUT_S if timeout is None else timeout)
        return i

    def recv(self, timeout: float) -> tuple[int, dict] | None:
        """The next reply, or None after `timeout` s; a request pending past its
        deadline (TIMEOUT_S, or call()'s timeout) is given up as ("timeout")."""
        now = time.monotonic()
        if self.pending:
            oldest = next(iter(self.pending))
            if now > self.pending[oldest]:
                del self.pending[oldest]
                return oldest, {"ok": False, "timeout": True}
        if not self.sock.poll(int(timeout * 1000)):
            return None
        rep = self._unpack(self.sock.recv())
        i = rep.get("id")
        if self.pending.pop(i, None) is None:
            return self.recv(0)  # a late reply to a request given up on
        out = {"ok": rep.get("ok", False)}
        if out["ok"]:
            out["revision"] = rep["header"]["revision"]
            if "kvs" in rep:
                out["kvs"] = [kv["key"] for kv in rep["kvs"]]
                out["more"] = rep.get("more", False)
                out["count"] = rep.get("count", 0)
            if "ID" in rep:
                out["ID"] = rep["ID"]
            if "compact_revision" in rep:
                out["compact_revision"] = rep["compact_revision"]
        else:
            out["error"] = rep.get("error")
        return i, out

    def call(self, op: tuple, timeout: float = 30.0) -> dict:
        i = self.send(op, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.recv(0.5)
            if got and got[0] == i:
                return got[1]
        self.pending.pop(i, None)
        return {"ok": False, "timeout": True}

    def close(self) -> None:
        self.sock.close()


class EtcdConn:
    def __init__(self, target: str) -> None:
        import grpc

        import etcd_driver

        self._grpc = grpc
        self.pb = etcd_driver.load_pb().rpc
        self.channel = etcd_driver.channel(target)
        self.stubs = etcd_driver.stubs(self.channel)
        self.done: queue.Queue = queue.Queue()
        self.next_id = 0

    def _future(self, op: tuple, timeout: float):
        pb, s, kind = self.pb, self.stubs, op[0]
        if kind == "put":
            return s.kv.Put.future(pb.PutRequest(key=op[1], value=op[2], lease=op[3]), timeout=timeout)
        if kind == "get":
            return s.kv.Range.future(pb.RangeRequest(key=op[1]), timeout=timeout)
        if kind == "range":
            return s.kv.Range.future(pb.RangeRequest(key=op[1], range_end=op[2], limit=op[3], count_only=op[4]),
                                     timeout=timeout)
        if kind == "compact":
            return s.kv.Compact.future(pb.CompactionRequest(revision=op[1], physical=True), timeout=timeout)
        if kind == "status":
            return s.maint.Status.future(pb.StatusRequest(), timeout=timeout)
        if kind == "grant":
            return s.lease.LeaseGrant.future(pb.LeaseGrantRequest(TTL=op[1]), timeout=timeout)
        raise ValueError(kind)

    def send(self, op: tuple, timeout: float | None = None) -> int:
        self.next_id += 1
        i = self.next_id
        fut = self._future(op, TIMEOUT_S if timeout is None else timeout)
        # The completion time is taken in gRPC's callback, not when this process's loop
        # gets to it, as the DEALER's is taken when its reply is read.
        fut.add_done_callback(lambda f, i=i: self.done.put((i, f, time.monotonic())))
        return i

    def _result(self, f) -> dict:
        exc = f.exception()
        if exc is not None:
            timed_out = exc.code() == self._grpc.StatusCode.DEADLINE_EXCEEDED
            return {"ok": False, "timeout": timed_out, "error": str(exc.details())}
        r = f.result()
        out = {"ok": True, "revision": r.header.revision}
        if hasattr(r, "kvs"):
            out["kvs"] = [kv.key for kv in r.kvs]
            out["more"] = r.more
            out["count"] = r.count
        if hasattr(r, "ID"):
            out["ID"] = r.ID
        if hasattr(r, "dbSize"):
            out["db_size"] = r.dbSize
        return out

    def recv(self, timeout: float) -> tuple[int, dict] | None:
        try:
            i, f, t = self.done.get(timeout=timeout)
        except queue.Empty:
            return None
        return i, dict(self._result(f), t=t)

    def call(self, op: tuple, timeout: float = 30.0) -> dict:
        f = self._future(op, timeout)
        try:
            f.result()
        except Exception:
            pass
        return self._result(f)

    def close(self) -> None:
        self.channel.close()


def connect(system: str, endpoint: str):
    return QkvConn(endpoint) if system == "quorumkv" else EtcdConn(endpoint)


# --- load workers (child processes) --------------------------------------------------------
def op_worker(system: str, endpoint: str, job: dict, window: int, go, stop, out) -> None:
    """Runs one job with `window` requests in flight; puts its result on `out`.
    job kinds: load (keys lo..hi step), churn (random keys, until `stop`), paced (puts at
    a rate, recording each revision's acknowledgement time)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = connect(system, endpoint)
    kind = job["kind"]
    rng = random.Random(os.getpid())
    size = job.get("value_size", 256)
    if kind == "load":
        keys = iter(range(job["lo"], job["hi"], job["step"]))
        prefix = job["prefix"]

        def next_op():
            k = next(keys, None)
            return None if k is None else ("put", b"%s%08d" % (prefix, k), os.urandom(size), 0)
    elif kind == "churn":
        n, prefix = job["keys"], job["prefix"]
        count = [0]

        def next_op():
            count[0] += 1
            if count[0] % 64 == 0 and stop.is_set():
                return None
            k = b"%s%08d" % (prefix, rng.randrange(n))
            if rng.random() < 0.25:
                return ("get", k)
            return ("put", k, os.urandom(size), 0)
    elif kind == "paced":
        rate, total, prefixes = job["rate"], job["total"], job["prefixes"]
        seq = [job["first"]]
        t_start = [0.0]

        def next_op():
            s = seq[0]
            if s - job["first"] >= total:
                return None
            due = t_start[0] + (s - job["first"]) / rate
            if time.monotonic() < due:
                return "wait"
            seq[0] += 1
            return ("put", b"w/%04d/%d" % (s % prefixes, s), b"x" * 64, 0)
    else:
        raise ValueError(kind)
    go.wait(600)
    t0 = time.monotonic()
    if kind == "paced":
        t_start[0] = t0
    offset = time.time() - time.monotonic()
    inflight: dict[int, tuple[float, str]] = {}
    lat: list[tuple[float, float, str]] = []  # (sent at, seconds, kind) for churn
    acks: dict[int, float] = {}
    done = errors = timeouts = 0
    first_error = None
    exhausted = False
    while True:
        while not exhausted and len(inflight) < window:
            op = next_op()
            if op is None:
                exhausted = True
                break
            if op == "wait":
                break
            inflight[conn.send(op)] = (time.monotonic(), op[0])
        if exhausted and not inflight:
            break
        got = conn.recv(0.002 if kind == "paced" else 1.0)
        if got is None:
            continue
        i, res = got
        sent = inflight.pop(i, None)
        if sent is None:
            continue
        now = res.get("t") or time.monotonic()
        done += 1
        if not res["ok"]:
            errors += 1
            timeouts += 1 if res.get("timeout") else 0
            if first_error is None:
                first_error = res.get("error")
        elif kind == "paced":
            acks[res["revision"]] = now + offset
        if kind == "churn":
            lat.append((sent[0] - t0, (TIMEOUT_S if res.get("timeout") else now - sent[0]), sent[1]))
    out.put({"done": done, "errors": errors, "timeouts": timeouts, "first_error": first_error,
             "t0": t0 + offset, "elapsed": time.monotonic() - t0, "lat": lat, "acks": acks})
    conn.close()


def run_workers(system: str, endpoint: str, jobs: list[dict], window: int,
                stop_after: float | None = None, during=None) -> list[dict]:
    """One process per job, started together; `during(stop_event)` runs in this process
    while they work (it may set the stop event)."""
    ctx = mp.get_context("spawn")
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=op_worker, args=(system, endpoint, job, window, go, stop, out), daemon=True)
             for job in jobs]
    for p in procs:
        p.start()
    time.sleep(1.0)  # imports and connections, before the clock starts
    go.set()
    try:
        if during is not None:
            during(stop)
        elif stop_after is not None:
            time.sleep(stop_after)
            stop.set()
        results = [out.get(timeout=600) for _ in procs]
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return results


def load_keys(sut, prefix: bytes, n: int, value_size: int) -> float:
    jobs = [{"kind": "load", "prefix": prefix, "lo": i, "hi": n, "step": PROCS, "value_size": value_size}
            for i in range(PROCS)]
    t0 = time.monotonic()
    results = run_workers(sut.system, sut.endpoint, jobs, max(1, CLIENTS // PROCS))
    took = time.monotonic() - t0 - 1.0
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"[{sut.system}] load: {errors} errors, first {next(r['first_error'] for r in results if r['errors'])}")
    return n / max(took, 1e-9)


# --- the systems under test -----------------------------------------------------------------
class Quorumkv:
    system = "quorumkv"

    def __init__(self, base: Path, name: str) -> None:
        from nodeproc import NodeProcess

        self.node = NodeProcess(base, name)
        self._log_offset = 0

    def start(self) -> None:
        self.node.start(timeout=60)
        self.endpoint = self.node.client_url
        self.conn = QkvConn(self.endpoint)

    def stop(self) -> None:
        self.node.stop()

    def pids(self) -> dict[str, int]:
        pids = dict(self.node.actor_pids())
        if self.node.proc is not None and self.node.proc.poll() is None:
            pids["supervisor"] = self.node.proc.pid
        return pids

    @property
    def watch_pid(self) -> int:
        return self.node.actor_pids()["watch"]

    @property
    def data_dir(self) -> str:
        return self.node.data_dir

    def db_size(self) -> str:
        st = self.node.request({"op": "status"}, timeout=10)
        return f"status db_size {st['db_size'] / 2**20:.0f} MiB" if st and st.get("ok") else "status failed"

    def restart_to_first_read(self, key: bytes) -> float:
        self.node.stop()
        self.conn.close()
        t0 = time.monotonic()
        self.node.start(wait=False)
        while True:
            rep = self.node.request({"op": "range", "key": key}, timeout=0.5)
            if rep and rep.get("ok") and rep["kvs"]:
                took = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no linearizable read within 120 s: {self.node.log_text()[-2000:]}")
            time.sleep(0.01)
        self.conn = QkvConn(self.endpoint)
        return took

    def compaction_logged(self) -> bool:
        """True once the node's log has a `compaction_finished` line (the background
        compaction's end) since the last call to mark_log()."""
        try:
            with open(self.node.log_path, "rb") as f:
                f.seek(self._log_offset)
                return b"compaction_finished" in f.read()
        except OSError:
            return False

    def mark_log(self) -> None:
        try:
            self._log_offset = os.path.getsize(self.node.log_path)
        except OSError:
            self._log_offset = 0


class Etcd:
    system = "etcd"

    def __init__(self, base: Path, name: str) -> None:
        from etcd_driver import EtcdProcess

        self.proc = EtcdProcess(base, name)

    def start(self) -> None:
        self.proc.start()
        self.endpoint = self.proc.target
        self.conn = EtcdConn(self.endpoint)

    def stop(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass
        self.proc.stop()

    def pids(self) -> dict[str, int]:
        return {"etcd": self.proc.pid} if self.proc.proc and self.proc.proc.poll() is None else {}

    @property
    def watch_pid(self) -> int:
        return self.proc.pid

    @property
    def data_dir(self) -> str:
        return self.proc.data_dir

    def db_size(self) -> str:
        st = self.conn.call(("status",))
        return f"status dbSize {st['db_size'] / 2**20:.0f} MiB" if st.get("ok") else "status failed"

    def restart_to_first_read(self, key: bytes) -> float:
        self.conn.close()
        self.proc.stop()
        t0 = time.monotonic()
        self.proc.start(wait=False)
        conn = EtcdConn(self.proc.target)
        while True:
            rep = conn.call(("get", key), timeout=0.5)
            if rep.get("ok") and rep["kvs"]:
                took = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no linearizable read within 120 s: {self.proc.log_text()[-2000:]}")
            time.sleep(0.01)
        self.conn = conn
        return took

    def compaction_logged(self) -> bool:
        return False

    def mark_log(self) -> None:
        pass


def make_sut(system: str, base: Path, name: str):
    return Quorumkv(base, name) if system == "quorumkv" else Etcd(base, name)


def rss_text(sut) -> str:
    rss = {name: rss_mib(pid) for name, pid in sorted(sut.pids().items())}
    total = sum(rss.values())
    if len(rss) == 1:
        return f"{total:.0f} MiB"
    return f"{total:.0f} MiB (" + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()) + ")"


# --- 1. big keyspaces ------------------------------------------------------------------------
def bench_keyspace(system: str, base: Path, label: str, n: int, value_size: int) -> None:
    sut = make_sut(system, base, f"{system}-{n}x{value_size}")
    try:
        sut.start()
        rate = load_keys(sut, b"k/", n, value_size)
        figure(system, f"{label}: load rate ({CLIENTS} in flight)", f"{rate:,.0f} puts/s")
        figure(system, f"{label}: RSS after load", rss_text(sut))
        time.sleep(1)
        figure(system, f"{label}: data dir", f"du {du_mib(sut.data_dir):,.0f} MiB; {sut.db_size()}")
        took = sut.restart_to_first_read(b"k/%08d" % random.randrange(n))
        figure(system, f"{label}: restart -> first linearizable read", f"{took:.2f} s")
        time.sleep(1)
        figure(system, f"{label}: RSS after restart", rss_text(sut))
        figure(system, f"{label}: data dir after restart", f"du {du_mib(sut.data_dir):,.0f} MiB")
    finally:
        sut.stop()
        shutil.rmtree(sut.data_dir, ignore_errors=True)


# --- 2a. paged prefix list ------------------------------------------------------------------------
def bench_list(sut, prefix: bytes, n: int) -> None:
    from protocol.client.types import prefix_end

    end = prefix_end(prefix)
    key = prefix
    times: list[float] = []
    got = 0
    t0 = time.monotonic()
    while True:
        t = time.monotonic()
        rep = sut.conn.call(("range", key, end, PAGE, False))
        times.append(time.monotonic() - t)
        if not rep.get("ok"):
            print(f"[{sut.system}] list failed: {rep}")
            break
        got += len(rep["kvs"])
        if not rep["more"] or not rep["kvs"]:
            break
        key = rep["kvs"][-1] + b"\x00"
    total = time.monotonic() - t0
    figure(sut.system, f"list {n:,} keys, limit {PAGE}",
           f"{got:,} keys in {len(times)} pages, {total:.2f} s; page p50 {pct(times, .5) * 1000:.1f} ms, "
           f"max {max(times) * 1000:.1f} ms")


# --- 2b. many watchers ---------------------------------------------------------------------------
def watch_prefix(p: int) -> bytes:
    return b"w/%04d/" % p


def conn_prefixes(c: int, per: int) -> list[int]:
    """The prefixes connection `c` watches: `per` consecutive ones, so that every
    prefix is watched by WATCHERS // WATCH_PREFIXES connections."""
    first = (c * per) % WATCH_PREFIXES
    return [(first + j) % WATCH_PREFIXES for j in range(per)]


def qkv_watch_proc(url: str, conns: list[int], per: int, ready, done, out) -> None:
    import zmq

    from protocol.client.types import prefix_end
    from protocol.client.watch import watch_topic
    from protocol.codec import unpack

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    for c in conns:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.connect(url)
        for p in conn_prefixes(c, per):
            s.setsockopt(zmq.SUBSCRIBE, watch_topic(watch_prefix(p), prefix_end(watch_prefix(p))))
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    arrivals: list[tuple[int, float]] = []
    progress = 0
    want = len(conns) * per
    signalled = False
    while not done.is_set():
        for s, _ in poller.poll(100):
            while True:
                try:
                    _, payload = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.time()
                msg = unpack(payload)
                if "revision" in msg:
                    arrivals.append((msg["revision"], now))
                else:
                    progress += 1
        if not signalled and progress >= want:
            ready.set()
            signalled = True
    out.put(arrivals)
    for s in socks:
        s.close()


def etcd_watch_proc(target: str, conns: list[int], per: int, ready, done, out) -> None:
    import etcd_driver
    from protocol.client.types import prefix_end

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pb = etcd_driver.load_pb().rpc
    arrivals: list[tuple[int, float]] = []
    created = [0]
    lock = threading.Lock()
    channels = []
    # The request streams stay open until the end on a thread Event: 25 gRPC threads
    # waiting on the multiprocessing `done` deadlocked its set() (seen in a full run).
    finished = threading.Event()

    def requests(c: int):
        for p in conn_prefixes(c, per):
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=watch_prefix(p),
                                                                      range_end=prefix_end(watch_prefix(p))))
        finished.wait()

    def reader(c: int) -> None:
        ch = etcd_driver.channel(target)
        channels.append(ch)
        try:
            for resp in etcd_driver.stubs(ch).watch.Watch(requests(c)):
                if resp.created:
                    with lock:
                        created[0] += 1
                    continue
                now = time.time()
                last = -1
                for ev in resp.events:
                    if ev.kv.mod_revision != last:
                        last = ev.kv.mod_revision
                        arrivals.append((last, now))
        except Exception:
            pass

    threads = [threading.Thread(target=reader, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    while not done.is_set():
        if created[0] >= len(conns) * per:
            ready.set()
        time.sleep(0.05)
    finished.set()
    out.put(arrivals)
    for ch in channels:
        ch.close()


def bench_watchers(sut) -> None:
    ctx = mp.get_context("spawn")
    per = max(1, WATCHERS // WATCH_CONNS)
    pid = sut.watch_pid
    before = rss_mib(pid)
    done, out = ctx.Event(), ctx.Queue()
    if sut.system == "quorumkv":
        target, url = qkv_watch_proc, sut.node.watch_url
    else:
        target, url = etcd_watch_proc, sut.endpoint
    groups = [list(range(i, WATCH_CONNS, CONSUMER_PROCS)) for i in range(CONSUMER_PROCS)]
    readies = [ctx.Event() for _ in groups]
    procs = [ctx.Process(target=target, args=(url, g, per, readies[i], done, out), daemon=True)
             for i, g in enumerate(groups)]
    t0 = time.monotonic()
    try:
        for p in procs:
            p.start()
        ready = all(r.wait(180) for r in readies)
        setup = time.monotonic() - t0
        time.sleep(3)  # let the server settle (allocations, a heartbeat for quorumkv)
        after = rss_mib(pid)
        watchers = per * WATCH_CONNS
        figure(sut.system, f"{watchers:,} watchers over {WATCH_PREFIXES:,} prefixes: setup, server RSS",
               f"{'ready' if ready else 'NOT all confirmed'} in {setup:.1f} s; RSS {before:.0f} -> {after:.0f} MiB = "
               f"{(after - before) * 2**20 / watchers:,.0f} B per watcher")
        job = {"kind": "paced", "rate": WATCH_RATE / PROCS, "total": int(WATCH_RATE * WATCH_S / PROCS),
               "prefixes": WATCH_PREFIXES}
        jobs = [dict(job, first=i * 10**8) for i in range(PROCS)]
        cpu0 = {k: cpu_seconds(v) for k, v in sut.pids().items()}
        t_load = time.monotonic()
        results = run_workers(sut.system, sut.endpoint, jobs, max(1, CLIENTS // PROCS))
        took = time.monotonic() - t_load - 1.0
        cpu = sum(cpu_seconds(v) - cpu0.get(k, 0) for k, v in sut.pids().items())
        time.sleep(2)
        done.set()
        arrivals = [a for _ in procs for a in out.get(timeout=120)]
        acks: dict[int, float] = {}
        for r in results:
            acks.update(r["acks"])
        lat = [(t - acks[rev]) * 1000 for rev, t in arrivals if rev in acks]
        puts = sum(r["done"] - r["errors"] for r in results)
        expected = puts * (watchers // WATCH_PREFIXES)
        figure(sut.system, f"watch delivery under {WATCH_RATE:,} puts/s",
               f"{puts / took:,.0f} puts/s achieved; {len(lat):,} of {expected:,} deliveries seen; latency "
               f"p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms, max {max(lat) if lat else float('nan'):.1f} "
               f"ms; server CPU {cpu / took * 100:.0f}% of a core")
        figure(sut.system, "watch server RSS after the load", f"{rss_mib(pid):.0f} MiB")
    finally:
        done.set()
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()


# --- 2c. leases -----------------------------------------------------------------------------------
def lease_proc(system: str, endpoint: str, sessions: list[int], per: int, ttl: int, ready, go, stop, out) -> None:
    """Grants `per` leases for each session with one key each, keeping every granted
    lease alive from then on (granting 10,000 can take longer than a TTL), in rounds
    every ttl/3 s (each session sends all its keep-alives at once) until `stop`; puts
    the wall time of the end of the last round on `out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = connect(system, endpoint)
    ids: dict[int, list[int]] = {}
    if system == "quorumkv":
        import zmq

        from protocol.codec import pack, unpack

        socks = {}
        for s in sessions:
            sk = zmq.Context.instance().socket(zmq.DEALER)
            sk.setsockopt(zmq.LINGER, 0)
            sk.connect(endpoint)
            socks[s] = sk

        def one_round(active: list[int]) -> int:
            for s in active:
                for lease in ids[s]:
                    socks[s].send(pack({"id": lease, "op": "lease_keepalive", "ID": lease}))
            ok = 0
            for s in active:
                for _ in ids[s]:
                    if not socks[s].poll(10_000):
                        break
                    ok += 1 if unpack(socks[s].recv()).get("ok") else 0
            return ok
    else:
        import etcd_driver

        pb = etcd_driver.load_pb().rpc
        streams = {}
        for s in sessions:
            q: queue.Queue = queue.Queue()

            def reqs(q=q):
                while True:
                    item = q.get()
                    if item is None:
                        return
                    yield item

            ch = etcd_driver.channel(endpoint)
            streams[s] = (ch, q, etcd_driver.stubs(ch).lease.LeaseKeepAlive(reqs()))

        def one_round(active: list[int]) -> int:
            for s in active:
                for lease in ids[s]:
                    streams[s][1].put(pb.LeaseKeepAliveRequest(ID=lease))
            ok = 0
            for s in active:
                for _ in ids[s]:
                    ok += 1 if next(streams[s][2]).TTL > 0 else 0  # TTL <= 0: the lease was gone
            return ok

    active: list[int] = []
    last_round = time.monotonic()
    for s in sessions:
        pending = [conn.send(("grant", ttl)) for _ in range(per)]
        got = {}
        while len(got) < len(pending):
            r = conn.recv(5)
            if r:
                got[r[0]] = r[1]
        ids[s] = [got[i]["ID"] for i in pending if got[i]["ok"]]
        pending = [conn.send(("put", b"l/%04d/%08d" % (s, lease), b"x" * 64, lease)) for lease in ids[s]]
        n = 0
        while n < len(pending):
            n += 1 if conn.recv(5) else 0
        active.append(s)
        if time.monotonic() - last_round >= ttl / 3:
            one_round(active)
            last_round = time.monotonic()
    ready.set()
    while not go.is_set():  # the other processes may still be granting
        if time.monotonic() - last_round >= ttl / 3:
            one_round(active)
            last_round = time.monotonic()
        go.wait(0.1)
    rounds = oks = 0
    last = time.time()
    while not stop.is_set():
        t = time.monotonic()
        oks += one_round(active)
        rounds += 1
        last = time.time()
        stop.wait(max(0.0, ttl / 3 - (time.monotonic() - t)))
    out.put({"last_round_end": last, "rounds": rounds, "ok": oks, "leases": sum(len(v) for v in ids.values())})
    if system != "quorumkv":
        for ch, q, _ in streams.values():
            q.put(None)
            ch.close()
    conn.close()


def bench_leases(sut) -> None:
    ctx = mp.get_context("spawn")
    per = max(1, LEASES // LEASE_SESSIONS)
    ready_evs = []
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    groups = [list(range(i, LEASE_SESSIONS, PROCS)) for i in range(PROCS)]
    procs = []
    for g in groups:
        r = ctx.Event()
        ready_evs.append(r)
        procs.append(ctx.Process(target=lease_proc, args=(sut.system, sut.endpoint, g, per, LEASE_TTL, r, go, stop,
                                                           out), daemon=True))
    try:
        t0 = time.monotonic()
        for p in procs:
            p.start()
        for r in ready_evs:
            r.wait(300)
        setup = time.monotonic() - t0
        pids = sut.pids()
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        go.set()
        time.sleep(LEASE_S)
        cpu = {k: (cpu_seconds(v) - cpu0[k]) / LEASE_S * 100 for k, v in pids.items()}
        stop.set()
        results = [out.get(timeout=120) for _ in procs]
        leases = sum(r["leases"] for r in results)
        figure(sut.system, f"{leases:,} leases (1 key each) kept alive by {LEASE_SESSIONS} sessions",
               f"granted+attached in {setup:.1f} s; server CPU over {LEASE_S:.0f} s: {sum(cpu.values()):.0f}% of a core"
               + ("" if len(cpu) == 1 else " (" + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(cpu.items())) + ")")
               + f"; {sum(r['rounds'] for r in results) // len(results)} rounds, "
               f"{sum(r['ok'] for r in results):,} keep-alives acknowledged")
        # Every lease was refreshed last by the final round: they expire together.
        last = max(r["last_round_end"] for r in results)
        expire_at = last + LEASE_TTL
        from protocol.client.types import prefix_end

        probe = connect(sut.system, sut.endpoint)
        lat: list[float] = []
        stalls = 0
        gone_at = None
        next_count = 0.0
        deadline = time.time() + LEASE_TTL + 90
        i = 0
        while time.time() < deadline:
            i += 1
            op = ("put", b"probe/%d" % (i % 100), b"x" * 64, 0) if i % 2 else ("get", b"probe/%d" % (i % 100))
            t = time.monotonic()
            rep = probe.call(op, timeout=10)
            lat.append(time.monotonic() - t)
            stalls += 0 if rep.get("ok") else 1
            if time.time() >= next_count and time.time() > expire_at:
                next_count = time.time() + 0.1
                rep = probe.call(("range", b"l/", prefix_end(b"l/"), 0, True), timeout=10)
                if rep.get("ok") and rep["count"] == 0:
                    gone_at = time.time()
                    break
            time.sleep(0.002)
        probe.close()
        lat_ms = [x * 1000 for x in lat]
        gone = f"all gone {gone_at - expire_at:.1f} s after their expiry" if gone_at else "NOT all gone within 90 s"
        figure(sut.system, f"{leases:,} leases expiring in the same second",
               f"{gone}; concurrent get/put client: longest {max(lat_ms):.1f} ms, p99 {pct(lat_ms, .99):.1f} ms, "
               f"{len(lat_ms):,} requests, {stalls} failed")
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()


# --- 2d. churn with compaction --------------------------------------------------------------------
def bench_churn(sut, prefix: bytes) -> None:
    jobs = [{"kind": "churn", "prefix": prefix, "keys": CHURN_KEYS, "value_size": 256} for _ in range(PROCS)]
    window = max(1, CLIENTS // PROCS)
    results = run_workers(sut.system, sut.endpoint, jobs, window, stop_after=CHURN_S)
    base_lat = [x for r in results for x in r["lat"]]
    marks: dict[str, float] = {}

    def during(stop) -> None:
        time.sleep(2.0)
        rev = sut.conn.call(("status",))["revision"]
        marks["rev"] = rev
        sut.mark_log()
        marks["start"] = time.time()
        finished = threading.Event()

        def compact() -> None:
            rep = sut.conn.call(("compact", rev), timeout=COMPACT_WAIT_S)
            marks["reply"] = time.time()
            marks["ok"] = rep.get("ok")
            marks["error"] = rep.get("error") or ("timeout" if rep.get("timeout") else None)
            finished.set()

        threading.Thread(target=compact, daemon=True).start()
        deadline = time.time() + COMPACT_WAIT_S
        while time.time() < deadline and "logged" not in marks:
            if sut.compaction_logged():
                marks["logged"] = time.time()
            if finished.is_set() and sut.system != "quorumkv":
                break
            if finished.is_set() and time.time() > marks["reply"] + 5:
                break  # no log line (the background compaction isn't there): the reply is the end
            time.sleep(0.1)
        finished.wait(max(0.0, deadline - time.time()))
        marks["end"] = max(marks.get("reply", time.time()), marks.get("logged", 0))
        time.sleep(min(CHURN_S, 10))
        stop.set()

    results2 = run_workers(sut.system, sut.endpoint, jobs, window, during=during)
    t_run0 = min(r["t0"] for r in results2)
    c0 = marks["start"] - t_run0
    c1 = marks["end"] - t_run0
    during_lat = [x for r in results2 for x in r["lat"] if c0 <= x[0] <= c1]
    after_lat = [x for r in results2 for x in r["lat"] if x[0] > c1]

    def summary(lat: list[tuple[float, float, str]], seconds: float) -> str:
        parts = []
        for kind in ("put", "get"):
            ms = [x[1] * 1000 for x in lat if x[2] == kind]
            parts.append(f"{kind} p50 {pct(ms, .5):.1f} / p99 {pct(ms, .99):.1f} ms")
        slow = sum(1 for x in lat if x[1] >= TIMEOUT_S)
        return f"{len(lat) / max(seconds, 1e-9):,.0f} req/s; " + ", ".join(parts) + f"; timeouts {slow}"

    base_s = max(r["elapsed"] for r in results)
    figure(sut.system, f"churn {CHURN_KEYS:,} keys, {CLIENTS} in flight, no compaction", summary(base_lat, base_s))
    figure(sut.system, "churn while compacting", summary(during_lat, max(c1 - c0, 1e-3)))
    figure(sut.system, "churn after the compaction", summary(after_lat, max(r["elapsed"] for r in results2) - c1))
    how = f"compact revision {marks['rev']:,} (everything before this phase); request -> reply " + (
        f"{marks['reply'] - marks['start']:.2f} s" if "reply" in marks else f"NO REPLY in {COMPACT_WAIT_S:.0f} s")
    if "logged" in marks:
        how += f", -> compaction_finished logged {marks['logged'] - marks['start']:.2f} s"
    if marks.get("error"):
        how += f" (error {marks['error']})"
    figure(sut.system, "compaction took", how)
    errors = sum(r["errors"] - r["timeouts"] for r in results + results2)
    if errors:
        first = next((r["first_error"] for r in results + results2 if r["first_error"]), None)
        print(f"[{sut.system}] churn: {errors} failed requests besides timeouts, first: {first}")


def bench_k8s(system: str, base: Path) -> None:
    sut = make_sut(system, base, f"{system}-k8s")
    try:
        sut.start()
        rate = load_keys(sut, b"c/", CHURN_KEYS, 256)
        figure(system, f"{CHURN_KEYS:,} keys x 256 B: load rate", f"{rate:,.0f} puts/s")
        bench_list(sut, b"c/", CHURN_KEYS)
        bench_watchers(sut)
        bench_leases(sut)
        bench_churn(sut, b"c/")
        figure(system, "k8s store: RSS at the end", rss_text(sut))
    finally:
        sut.stop()
        shutil.rmtree(sut.data_dir, ignore_errors=True)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt  # a SIGTERM stops the stores as Ctrl-C does (the finally blocks)


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    systems = list(SYSTEMS)
    if "etcd" in systems:
        import etcd_driver

        if not etcd_driver.available():
            print(f"{etcd_driver.ETCD} not installed: quorumkv figures only")
            systems.remove("etcd")
    print(f"bench-scale: {', '.join(systems)}; keys {KEYS:,} x 256 B, {BIG_KEYS:,} x 4 KB; churn/list "
          f"{CHURN_KEYS:,} keys x {CHURN_S:.0f} s; {WATCHERS:,} watchers/{WATCH_PREFIXES:,} prefixes at "
          f"{WATCH_RATE:,} puts/s x {WATCH_S:.0f} s; {LEASES:,} leases/{LEASE_SESSIONS} sessions x "
          f"{LEASE_S:.0f} s, TTL {LEASE_TTL} s; {CLIENTS} requests in flight from {PROCS} client processes; "
          f"{os.cpu_count()} cores (shared: figures are noisy)", flush=True)
    if BASE_DIR:
        os.makedirs(BASE_DIR, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="qkv-bench-scale-", dir=BASE_DIR))
    started = time.monotonic()
    try:
        for system in systems:
            t = time.monotonic()
            if KEYS:
                bench_keyspace(system, base, f"{KEYS:,} keys x 256 B", KEYS, 256)
            if BIG_KEYS:
                bench_keyspace(system, base, f"{BIG_KEYS:,} keys x 4 KB", BIG_KEYS, 4096)
            if CHURN_KEYS:
                bench_k8s(system, base)
            print(f"[{system}] done in {time.monotonic() - t:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
        print(f"\n=== bench-scale summary ({time.monotonic() - started:.0f} s) ===")
        for name, by in FIGURES.items():
            print(f"{name}:")
            for system in systems:
                print(f"    {system:<9} {by.get(system, '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
