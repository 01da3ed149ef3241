"""`make bench`: the standard benchmark set against a fresh local node, with security
off and on, side by side.

For each mode (BENCH_MODES, default "plain,curve,auth") it starts one node on free
ports in a temporary data dir, runs `qkvctl benchmark` for puts, serializable gets,
linearizable gets and txn-puts with 64 clients, 8-byte keys and 256-byte values, prints
each summary, and stops the node; then one table of requests/s and p99 per row and mode:
- plain: no security (ZMTP NULL), as before;
- curve: CURVE on the client port (--client-key-file; peer security too, though one
  node has no peers), no auth;
- auth: CURVE plus auth enabled, the benchmark authenticated as a user with readwrite on
  every key (not root), so every request's permission check is paid.
Figures only: nothing here asserts on time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nodeproc import NodeProcess, Security  # noqa: E402

TOTAL = int(os.environ.get("BENCH_TOTAL", "50000"))
CLIENTS = os.environ.get("BENCH_CLIENTS", "64")

RUNS = [
    ("put", ["put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
    ("range serializable", ["range", "foo", "--consistency", "s"]),
    ("range linearizable", ["range", "foo", "--consistency", "l"]),
    ("txn-put", ["txn-put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
]


def qkvctl() -> list[str]:
    exe = Path(sys.executable).with_name("qkvctl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "protocol.client.cli"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd: list[str], pids: dict[str, int]) -> tuple[dict[str, float], str]:
    """Run a benchmark command; CPU seconds each of `pids` spent meanwhile, plus the
    benchmark client's own (sampled while it runs: it is gone when it ends)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    with tempfile.TemporaryFile("w+") as out:
        bench = subprocess.Popen(cmd, stdout=out)
        client_cpu = 0.0
        while bench.poll() is None:
            client_cpu = max(client_cpu, cpu_seconds(bench.pid))
            time.sleep(0.2)
        out.seek(0)
        report = out.read()
    if bench.returncode != 0:
        raise SystemExit(f"benchmark failed with {bench.returncode}:\n{report}")
    split = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
    split["benchmark client"] = client_cpu
    return split, report


MODES = [m.strip() for m in os.environ.get("BENCH_MODES", "plain,curve,auth").split(",") if m.strip()]
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"


def start_node(tmp: Path, mode: str) -> tuple[NodeProcess, list[str]]:
    """A fresh node for `mode`; the qkvctl global flags that reach it."""
    if mode == "plain":
        node = NodeProcess(tmp, "bench")
        node.start()
        return node, ["--endpoints", node.client_url]
    sec = Security(tmp / "keys", ["bench"])
    node = NodeProcess(tmp, "bench", sec.node_args("bench", ["bench"]), security=sec)
    node.start()
    flags = ["--endpoints", node.client_url, "--server-key", sec.server_public.decode()]
    if mode == "auth":
        def ctl(*args: str, user: str = "root:root-password") -> None:
            subprocess.run(qkvctl() + flags + ["--user", user, *args] if user else qkvctl() + flags + list(args),
                           check=True, stdout=subprocess.DEVNULL)

        ctl("user", "add", "root", "--new-user-password", "root-password", "--interactive=false", user="")
        ctl("user", "add", BENCH_USER, "--new-user-password", BENCH_PASSWORD, "--interactive=false", user="")
        ctl("role", "add", "rw", user="")
        ctl("role", "grant-permission", "rw", "readwrite", "", "--from-key", user="")  # every key
        ctl("user", "grant-role", BENCH_USER, "rw", user="")
        ctl("auth", "enable", user="")
        flags += ["--user", f"{BENCH_USER}:{BENCH_PASSWORD}"]
    elif mode != "curve":
        raise SystemExit(f"unknown BENCH_MODES entry {mode!r}: plain, curve or auth")
    return node, flags


def requests_per_s(report: str) -> tuple[float, float]:
    """Requests/sec and the 99th percentile (ms) from a benchmark report."""
    rps = p99 = float("nan")
    for line in report.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[-1])
        elif line.startswith("99% in"):
            p99 = float(line.split()[2]) * 1000
    return rps, p99


def main() -> int:
    figures: dict[tuple[str, str], tuple[float, float]] = {}
    for mode in MODES:
        tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-"))
        node = None
        try:
            node, flags = start_node(tmp, mode)
            subprocess.run(qkvctl() + flags + ["put", "foo", "x" * 256], check=True, stdout=subprocess.DEVNULL)
            for title, args in RUNS:
                print(f"\n=== [{mode}] {title}: {CLIENTS} clients, {TOTAL} requests ===", flush=True)
                split, report = run_measured(qkvctl() + flags + ["benchmark", *args, "--clients", CLIENTS,
                                                                 "--total", str(TOTAL)], node.actor_pids())
                print(report, end="")
                print("  CPU seconds by process: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
                figures[(title, mode)] = requests_per_s(report)
        finally:
            if node is not None:
                node.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n=== requests/s (p99 ms), one node, security off and on ===")
    print(f"{'run':<22}" + "".join(f"{m:>22}" for m in MODES) + "".join(
        f"{'cost of ' + m:>16}" for m in MODES[1:]))
    for title, _ in RUNS:
        row = f"{title:<22}"
        for m in MODES:
            rps, p99 = figures.get((title, m), (float("nan"), float("nan")))
            row += f"{rps:>13,.0f} ({p99:5.1f})"
        base = figures.get((title, MODES[0]), (float("nan"),))[0]
        for m in MODES[1:]:
            rps = figures.get((title, m), (float("nan"),))[0]
            row += f"{(1 - rps / base) * 100:>15.1f}%"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
