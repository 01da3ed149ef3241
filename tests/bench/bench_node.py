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


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-"))
    node = NodeProcess(tmp, "bench")
    try:
        node.start()
        subprocess.run(qkvctl() + ["--endpoints", node.client_url, "put", "foo", "x" * 256],
                       check=True, stdout=subprocess.DEVNULL)
        for title, args in RUNS:
            print(f"\n=== {title}: {CLIENTS} clients, {TOTAL} requests ===", flush=True)
            subprocess.run(qkvctl() + ["--endpoints", node.client_url, "benchmark", *args,
                                       "--clients", CLIENTS, "--total", str(TOTAL)], check=True)
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
