"""`make bench-compare`: etcd 3.4 and quorumkv side by side on this machine, one after the
other, each fresh on empty data dirs (a temporary dir, free ports): one node, then a 3-node
cluster. Same shapes for all: 8-byte keys, 256-byte values, a key space of 100,000.
quorumkv is measured twice: through its native protocol (ZeroMQ) and through etcd's gRPC
API (a node with --listen-grpc-urls, its grpc actor), the latter with etcd's own load.

Rows: put with 1 client, put with 64 clients, linearizable and serializable get of one key
with 64 clients, and watch (one watcher on a prefix, then 10,000 puts under it from 64
clients: the time from the first put sent until the watcher has every event).
- etcd (/usr/bin/etcd; skipped with a message when missing) is driven by
  tests/bench/etcd_load.py: grpc.aio, 2 processes each with one channel, the logical clients
  split between them, each keeping one request in flight;
- quorumkv (`qkv` defaults: no security, the metrics actor on) by `qkvctl benchmark`
  (put / range / watch: one process driving every logical client, one DEALER each; the
  watcher a process of its own);
- quorumkv gRPC (the same node plus --listen-grpc-urls) by etcd's load generator above,
  request for request: the grpc actor turns each RPC into a native request to its node's
  gateway, so its CPU per request (the `grpc` role) is the price of the extra hop.
On a cluster all are driven through the leader's client (or gRPC) URL.

Prints one table: requests/s with p99 per row, and the ratio quorumkv/etcd for each of
quorumkv's protocols (watch: the
seconds, and etcd's time / quorumkv's, so that > 1 is better for quorumkv too); whether
quorumkv's p99 is no worse than etcd's per row; and the CPU seconds per 1,000 requests of
each process (etcd: each member and the load generator; quorumkv: each actor role summed over
the nodes, and the benchmark client), from /proc and the load generator's rusage.

Knobs (env): BENCH_TOTAL (requests of each 64-client row, default 50000), BENCH_TOTAL_1 (puts
of the 1-client row, default 4000), BENCH_WATCH_EVENTS (10000), BENCH_CLIENTS (64),
BENCH_SYSTEMS (etcd,qkv,qkv-grpc), BENCH_SIZES (1,3), BENCH_ROWS (put1,put,get-l,get-s,watch).
The same as flags: `--systems`, `--sizes`, `--rows`; `--grpc-only` is `--systems etcd,qkv-grpc`
(the gRPC rows beside etcd's, without the native ones). Figures only: nothing here asserts on
time. Last, the floors under one client's write (tests/bench/floors.py): fdatasync on this
filesystem and a bare ZeroMQ round trip between two Python processes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_node import cpu_seconds, requests_per_s  # noqa: E402

TOTAL = int(os.environ.get("BENCH_TOTAL", "50000"))
TOTAL_1 = int(os.environ.get("BENCH_TOTAL_1", "4000"))
WATCH_EVENTS = int(os.environ.get("BENCH_WATCH_EVENTS", "10000"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "64"))
SYSTEMS = [s.strip() for s in os.environ.get("BENCH_SYSTEMS", "etcd,qkv,qkv-grpc").split(",") if s.strip()]
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1,3").split(",") if s.strip()]
KEY_SPACE = 100_000
VALUE = b"x" * 256

# name -> (title, kind, clients, total)
ALL_ROWS = {
    "put1": ("put, 1 client", "put", 1, TOTAL_1),
    "put": (f"put, {CLIENTS} clients", "put", CLIENTS, TOTAL),
    "get-l": (f"linearizable get, {CLIENTS} clients", "range-l", CLIENTS, TOTAL),
    "get-s": (f"serializable get, {CLIENTS} clients", "range-s", CLIENTS, TOTAL),
    "watch": (f"watch, {WATCH_EVENTS / 1000:g}k events to 1 watcher", "watch", CLIENTS, WATCH_EVENTS),
}
ROWS = [ALL_ROWS[r.strip()] for r in os.environ.get("BENCH_ROWS", ",".join(ALL_ROWS)).split(",") if r.strip()]
NAMES = {"etcd": "etcd", "qkv": "quorumkv", "qkv-grpc": "quorumkv gRPC"}
QKV_SYSTEMS = ("qkv", "qkv-grpc")  # compared with etcd


@dataclass
class Figure:
    rps: float = math.nan
    p99_ms: float = math.nan
    watch_s: float = math.nan
    requests: int = 0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process (or role) -> CPU seconds
    failed: str = ""
    client_all_s: float = math.nan  # the load generator's CPU seconds, start-up included (rusage)


def run_client(cmd: list[str], pids: dict[str, int]) -> tuple[str, float, dict[str, float]]:
    """Run a load generator in a session of its own: its output, its CPU seconds (its own and
    its children's, from wait4's rusage) and the CPU seconds each of `pids` spent meanwhile.
    Stopped (its whole process group) when anything goes wrong here, Ctrl-C included."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        out.seek(0)
        text = out.read()
    after = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed with {proc.returncode}:\n{text[-3000:]}")
    return text, usage.ru_utime + usage.ru_stime, after


# -- etcd -----------------------------------------------------------------------------------------
class EtcdSystem:
    name = "etcd"
    driver = ("tests/bench/etcd_load.py: grpc.aio, 2 processes with one channel each, the clients split "
              "between them, one request in flight per client")

    def __init__(self, base: Path, size: int) -> None:
        from etcd_driver import EtcdProcess
        from nodeproc import free_port

        ports = [free_port() for _ in range(size)]
        self.members = [EtcdProcess(base, f"etcd{i + 1}", peer_port=ports[i]) for i in range(size)]
        if size > 1:
            initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
            for m in self.members:
                m.initial_cluster = initial
        self.target = ""

    def start(self) -> None:
        from etcd_load import leader

        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        self.target = leader([m.target for m in self.members])
        import etcd_driver

        pb = etcd_driver.load_pb()
        with etcd_driver.channel(self.target) as ch:
            pb.grpc.KVStub(ch).Put(pb.rpc.PutRequest(key=b"foo", value=VALUE), timeout=10)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def pids(self) -> dict[str, int]:
        return {m.name: m.pid for m in self.members}

    def where(self) -> str:
        lead = next(m.name for m in self.members if m.target == self.target)
        return f"{lead} (the leader) at {self.target}" if len(self.members) > 1 else self.target

    def command(self, kind: str, clients: int, total: int) -> list[str]:
        return load_command(self.target, "etcd", kind, clients, total)

    def measure(self, kind: str, clients: int, total: int) -> Figure:
        text, client_all, cpu = run_client(self.command(kind, clients, total), self.pids())
        return load_figure(text, client_all, cpu)


def load_command(target: str, name: str, kind: str, clients: int, total: int) -> list[str]:
    """etcd_load.py's command line for one row against a gRPC endpoint."""
    base = [sys.executable, str(HERE / "etcd_load.py"), "--endpoint", target, "--name", name]
    common = ["--clients", str(clients), "--total", str(total)]
    if kind == "put":
        return base + ["put", *common]
    if kind.startswith("range"):
        return base + ["range", "--key", "foo", "--consistency", kind[-1], *common]
    return base + ["watch", *common]


def load_figure(text: str, client_all: float, cpu: dict[str, float]) -> Figure:
    """The Figure of an etcd_load.py run (its RESULT line)."""
    res = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[7:])
    cpu["load generator"] = res["cpu_s"]
    return Figure(rps=res["rps"], p99_ms=res["p99_ms"], watch_s=res.get("watch_s", math.nan),
                  requests=res["ok"], errors=sum(res["errors"].values()) + res.get("missing", 0), cpu=cpu,
                  failed=f"{res.get('missing')} events missing" if res.get("missing") else "",
                  client_all_s=client_all)


# -- quorumkv -------------------------------------------------------------------------------------
class QkvSystem:
    name = "qkv"
    driver = ("qkvctl benchmark put/range/watch: one process driving every client (one DEALER each, one "
              "request in flight per client); watch: the watcher (Client.watch) in a process of its own")

    grpc = False

    def __init__(self, base: Path, size: int) -> None:
        from nodeproc import Cluster, NodeProcess

        if size == 1:  # `qkv`'s defaults: the metrics actor on
            self.nodes = [NodeProcess(base, "n1", metrics=True, grpc=self.grpc)]
        else:
            cluster = Cluster(base, size, metrics=True, grpc=self.grpc)
            for n in cluster.nodes:  # a user's cluster: no test-only fault hooks
                n.args = [a for a in n.args if a != "--test-fault-injection"]
            self.cluster = cluster
            self.nodes = cluster.nodes
        self.url = ""

    def start(self) -> None:
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(60)
        self.leader = self.cluster.leader(timeout=30) if len(self.nodes) > 1 else self.nodes[0]
        self.url = self.leader.client_url
        subprocess.run(self.qkvctl() + ["put", "foo", VALUE.decode()], check=True, stdout=subprocess.DEVNULL,
                       cwd=ROOT)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def qkvctl(self) -> list[str]:
        return [sys.executable, "-m", "protocol.client.cli", "--endpoints", self.url]

    def benchmark(self) -> list[str]:
        return self.qkvctl() + ["benchmark", "--report-cpu"]

    def pids(self) -> dict[str, int]:
        return {f"{n.name}/{role}": pid for n in self.nodes for role, pid in n.actor_pids().items()}

    def where(self) -> str:
        return f"{self.leader.name} (the leader) at {self.url}" if len(self.nodes) > 1 else self.url

    def command(self, kind: str, clients: int, total: int) -> list[str]:
        common = ["--clients", str(clients), "--total", str(total)]
        if kind == "put":
            return self.benchmark() + ["put", "--key-size", "8", "--val-size", "256",
                                    "--key-space-size", str(KEY_SPACE), *common]
        if kind.startswith("range"):
            return self.benchmark() + ["range", "foo", "--consistency", kind[-1], *common]
        return self.benchmark() + ["watch", "--key-size", "8", "--val-size", "256", *common]

    def measure(self, kind: str, clients: int, total: int) -> Figure:
        text, client_all, split = run_client(self.command(kind, clients, total), self.pids())
        cpu: dict[str, float] = {}
        for k, v in split.items():  # per role, summed over the nodes
            role = k.split("/", 1)[1]
            cpu[role] = cpu.get(role, 0.0) + v
        rps, p99 = requests_per_s(text)
        fig = Figure(rps=rps, p99_ms=p99, cpu=cpu, client_all_s=client_all)
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("Client CPU:"):
                cpu["benchmark client"] = float(line.split()[2])
            if line.startswith("Watch time:") and "secs" in line:
                fig.watch_s = float(line.split()[2])
            elif line.startswith("Puts:"):
                fig.requests = int(line.split()[1])
                fig.errors += int(line.split()[3])
            elif line.startswith("Events:"):
                missing = int(line.split()[3])
                fig.errors += missing
                if missing:
                    fig.failed = f"{missing} events missing"
            elif line.startswith("[") and "]" in line:  # the error distribution
                fig.errors += int(line[1:line.index("]")])
        if kind != "watch" and not math.isnan(rps):
            # the report's rate is acknowledged requests over the run's time
            fig.requests = total - fig.errors
        return fig


class QkvGrpcSystem(QkvSystem):
    """quorumkv through etcd's gRPC API, driven by etcd's load generator."""

    name = "qkv-grpc"
    driver = ("tests/bench/etcd_load.py, as etcd, against the node's --listen-grpc-urls (the grpc actor, "
              "then the node's gateway)")
    grpc = True

    def where(self) -> str:
        at = self.leader.grpc_endpoint
        return f"{self.leader.name} (the leader) at {at}" if len(self.nodes) > 1 else at

    def measure(self, kind: str, clients: int, total: int) -> Figure:
        cmd = load_command(self.leader.grpc_endpoint, "quorumkv-grpc", kind, clients, total)
        text, client_all, split = run_client(cmd, self.pids())
        cpu: dict[str, float] = {}
        for k, v in split.items():  # per role, summed over the nodes
            role = k.split("/", 1)[1]
            cpu[role] = cpu.get(role, 0.0) + v
        return load_figure(text, client_all, cpu)


# -- the run --------------------------------------------------------------------------------------
def run_system(cls: Any, size: int, figures: dict[tuple[str, int, str], Figure]) -> None:
    base = Path(tempfile.mkdtemp(prefix=f"qkv-bench-compare-{cls.name}{size}-"))
    system = cls(base, size)
    try:
        t0 = time.monotonic()
        system.start()
        print(f"\n=== {NAMES[cls.name]}, {size} node{'s' if size > 1 else ''}: started in "
              f"{time.monotonic() - t0:.1f}s; driving {system.where()} ===", flush=True)
        for title, kind, clients, total in ROWS:
            try:
                fig = system.measure(kind, clients, total)
            except RuntimeError as exc:
                print(f"  {title}: FAILED: {exc}", flush=True)
                figures[(title, size, cls.name)] = Figure(failed=str(exc).splitlines()[0])
                continue
            figures[(title, size, cls.name)] = fig
            what = f"{fig.watch_s:.2f} s" if kind == "watch" else f"{fig.rps:,.0f}/s"
            print(f"  {title}: {what}, p99 {fig.p99_ms:.1f} ms, {fig.errors} errors; CPU s/1k requests: "
                  + cpu_text(fig) + f" (the client with its start-up: {fig.client_all_s:.2f} s in all)", flush=True)
    finally:
        system.stop()
        shutil.rmtree(base, ignore_errors=True)


def cpu_text(fig: Figure) -> str:
    if not fig.requests:
        return "-"
    per = {k: v * 1000 / fig.requests for k, v in fig.cpu.items()}
    return ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + f" = {sum(per.values()):.3f}"


def cell(fig: Figure | None, kind: str) -> str:
    if fig is None:
        return "-"
    if fig.failed and math.isnan(fig.rps):
        return "failed"
    if kind == "watch":
        s = f"{fig.watch_s:.2f} s"
    else:
        s = f"{fig.rps:,.0f}/s, p99 {fig.p99_ms:.1f} ms"
    return s + (f" ({fig.errors} errors)" if fig.errors else "")


def ratio(etcd: Figure | None, qkv: Figure | None, kind: str) -> float:
    if etcd is None or qkv is None:
        return math.nan
    if kind == "watch":
        return etcd.watch_s / qkv.watch_s if qkv.watch_s > 0 else math.nan
    return qkv.rps / etcd.rps if etcd.rps > 0 else math.nan


def report(figures: dict[tuple[str, int, str], Figure]) -> None:
    print("\nDriven by:")
    print(f"  etcd {etcd_version()}: {EtcdSystem.driver}")
    print(f"  quorumkv (`qkv` defaults: no security, the metrics actor on): {QkvSystem.driver}")
    print(f"  quorumkv gRPC (the same node with --listen-grpc-urls): {QkvGrpcSystem.driver}")
    print("  All through the leader's client URL on a cluster; 8-byte keys, 256-byte values, key space "
          f"{KEY_SPACE:,}; each system fresh on empty data dirs.")
    qkvs = [q for q in QKV_SYSTEMS if q in SYSTEMS]
    head = "| run |"
    rule = "|---|"
    for size in SIZES:
        n = f"{size} node{'s' if size > 1 else ''}"
        head += f" etcd {n} |" + "".join(f" {NAMES[q]} {n} | ratio |" for q in qkvs)
        rule += "---|" + "---|---|" * len(qkvs)
    print("\n" + head + "\n" + rule)
    for title, kind, _, _ in ROWS:
        row = f"| {title} |"
        for size in SIZES:
            e = figures.get((title, size, "etcd"))
            row += f" {cell(e, kind)} |"
            for q in qkvs:
                f = figures.get((title, size, q))
                r = ratio(e, f, kind)
                row += f" {cell(f, kind)} | {'-' if math.isnan(r) else f'{r:.2f}x'} |"
        print(row)
    print("\nratio: quorumkv/etcd requests/s; watch: etcd's seconds / quorumkv's (> 1: quorumkv is faster).")
    for q in qkvs:
        print(f"\np99 no worse than etcd's ({NAMES[q]} p99 <= etcd p99):")
        for title, kind, _, _ in ROWS:
            parts = []
            for size in SIZES:
                e, f = figures.get((title, size, "etcd")), figures.get((title, size, q))
                if e is None or f is None or math.isnan(e.p99_ms) or math.isnan(f.p99_ms):
                    parts.append(f"{size} node(s): -")
                    continue
                verdict = "yes" if f.p99_ms <= e.p99_ms else "NO"
                parts.append(f"{size} node(s): {verdict} ({f.p99_ms:.1f} vs {e.p99_ms:.1f} ms)")
            print(f"  {title}: " + "; ".join(parts) + (" (the puts' p99)" if kind == "watch" else ""))
    print("\nCPU seconds per 1,000 requests, by process (watch: per 1,000 puts; quorumkv: each actor role "
          "summed over the nodes, `grpc` the gRPC gateway; the load generator and the benchmark client: their "
          "CPU while the requests ran, start-up excluded, the watcher included):")
    for size in SIZES:
        for title, _, _, _ in ROWS:
            for sysname in SYSTEMS:
                fig = figures.get((title, size, sysname))
                if fig is not None and fig.requests:
                    print(f"  [{size} node{'s' if size > 1 else ''}] {title:<32} {NAMES[sysname]:<13} "
                          f"{cpu_text(fig)}")


def etcd_version() -> str:
    try:
        out = subprocess.run([os.environ.get("ETCD_BIN", "/usr/bin/etcd"), "--version"], capture_output=True,
                             text=True, timeout=10).stdout
        return out.split()[2] if out.startswith("etcd Version:") else "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    global SYSTEMS, SIZES, ROWS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", help=f"comma-separated, of {', '.join(NAMES)} (BENCH_SYSTEMS)")
    ap.add_argument("--sizes", help="comma-separated cluster sizes (BENCH_SIZES)")
    ap.add_argument("--rows", help=f"comma-separated, of {', '.join(ALL_ROWS)} (BENCH_ROWS)")
    ap.add_argument("--grpc-only", action="store_true", help="--systems etcd,qkv-grpc")
    a = ap.parse_args(argv)
    if a.grpc_only:
        a.systems = a.systems or "etcd,qkv-grpc"
    if a.systems:
        SYSTEMS = [x.strip() for x in a.systems.split(",") if x.strip()]
    if a.sizes:
        SIZES = [int(x) for x in a.sizes.split(",") if x.strip()]
    if a.rows:
        unknown = [r for r in a.rows.split(",") if r.strip() and r.strip() not in ALL_ROWS]
        if unknown:
            ap.error(f"unknown rows {unknown}: {', '.join(ALL_ROWS)}")
        ROWS = [ALL_ROWS[r.strip()] for r in a.rows.split(",") if r.strip()]
    # every child (nodes, qkvctl, the etcd load generator) runs this checkout's code
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # a SIGTERM ends the run through the finally blocks, which stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import etcd_driver

    systems = []
    for name in SYSTEMS:
        if name == "etcd":
            if not etcd_driver.available():
                print(f"etcd skipped: {etcd_driver.ETCD} is not installed (apt-get install etcd-server), "
                      "so only quorumkv's figures are printed")
                continue
            systems.append(EtcdSystem)
        elif name == "qkv":
            systems.append(QkvSystem)
        elif name == "qkv-grpc":
            systems.append(QkvGrpcSystem)
        else:
            raise SystemExit(f"unknown BENCH_SYSTEMS entry {name!r}: {', '.join(NAMES)}")
    print(f"bench-compare: {', '.join(NAMES[s.name] for s in systems)}; sizes {SIZES}; rows "
          f"{[r[0] for r in ROWS]}; {TOTAL} requests per {CLIENTS}-client row, {TOTAL_1} puts with 1 client, "
          f"{WATCH_EVENTS} watch events", flush=True)
    figures: dict[tuple[str, int, str], Figure] = {}
    t0 = time.monotonic()
    for size in SIZES:
        for cls in systems:
            try:
                run_system(cls, size, figures)
            except (RuntimeError, AssertionError) as exc:
                print(f"  {NAMES[cls.name]} {size} node(s) FAILED: {exc}", flush=True)
    report(figures)
    import floors

    print("\nFloors under one client's write on this machine (tests/bench/floors.py; quorumkv's put crosses 5 "
          "one-way hops on one node, 7 on a cluster, each a Python process woken by ZeroMQ):")
    print(floors.report(), flush=True)
    print(f"\n(whole run {time.monotonic() - t0:.0f}s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
