"""`make bench`: the standard benchmark set against a fresh local node.

Starts one node on free ports in a temporary data dir, runs `qkvctl benchmark` for
puts, serializable gets, linearizable gets and txn-puts with 64 clients, 8-byte keys
and 256-byte values, prints each summary, and stops the node. Figures only: nothing
here asserts on time.
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

from nodeproc import NodeProcess  # noqa: E402

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


def run_measured(cmd: list[str], pids: dict[str, int]) -> dict[str, float]:
    """Run a benchmark command; CPU seconds each of `pids` spent meanwhile, plus the
    benchmark client's own (sampled while it runs: it is gone when it ends)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    bench = subprocess.Popen(cmd)
    client_cpu = 0.0
    while bench.poll() is None:
        client_cpu = max(client_cpu, cpu_seconds(bench.pid))
        time.sleep(0.2)
    if bench.returncode != 0:
        raise SystemExit(f"benchmark failed with {bench.returncode}")
    split = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
    split["benchmark client"] = client_cpu
    return split


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-"))
    node = NodeProcess(tmp, "bench")
    try:
        node.start()
        subprocess.run(qkvctl() + ["--endpoints", node.client_url, "put", "foo", "x" * 256],
                       check=True, stdout=subprocess.DEVNULL)
        for title, args in RUNS:
            print(f"\n=== {title}: {CLIENTS} clients, {TOTAL} requests ===", flush=True)
            split = run_measured(qkvctl() + ["--endpoints", node.client_url, "benchmark", *args,
                                             "--clients", CLIENTS, "--total", str(TOTAL)], node.actor_pids())
            print("  CPU seconds by process: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
