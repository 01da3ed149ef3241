"""`make bench-cluster`: the standard benchmark set against a fresh local 3-node cluster.

Puts go to the leader, gets to every member in turn (64 clients, 8-byte keys, 256-byte
values). Prints etcd-style summaries and the CPU seconds each process spent, which is
where the next speed-up will come from. Figures only: nothing here asserts on time.
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
sys.path.insert(0, str(HERE))

from bench_node import qkvctl, run_measured  # noqa: E402
from nodeproc import Cluster  # noqa: E402

TOTAL = int(os.environ.get("BENCH_TOTAL", "30000"))
CLIENTS = os.environ.get("BENCH_CLIENTS", "64")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qkv-bench-cluster-"))
    cluster = Cluster(tmp, 3)
    try:
        cluster.start()
        leader = cluster.leader()
        all_eps = ",".join(n.client_url for n in cluster.nodes)
        subprocess.run(qkvctl() + ["--endpoints", leader.client_url, "put", "foo", "x" * 256],
                       check=True, stdout=subprocess.DEVNULL)
        runs = [
            ("put (to the leader)", leader.client_url,
             ["put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
            ("put (to a follower)", next(n for n in cluster.nodes if n is not leader).client_url,
             ["put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
            ("range linearizable (all members)", all_eps, ["range", "foo", "--consistency", "l"]),
            ("range serializable (all members)", all_eps, ["range", "foo", "--consistency", "s"]),
        ]
        for title, eps, args in runs:
            print(f"\n=== {title}: {CLIENTS} clients, {TOTAL} requests ===", flush=True)
            pids = {f"{n.name}/{role}": pid for n in cluster.nodes for role, pid in n.actor_pids().items()}
            split, report = run_measured(qkvctl() + ["--endpoints", eps, "benchmark", *args,
                                                     "--clients", CLIENTS, "--total", str(TOTAL)], pids)
            print(report, end="")
            client_cpu = split.pop("benchmark client")
            by_role: dict[str, float] = {}
            for k, v in split.items():
                role = k.split("/")[1]
                by_role[role] = by_role.get(role, 0.0) + v
            print("  CPU seconds by actor (3 nodes summed): "
                  + ", ".join(f"{r} {v:.2f}" for r, v in sorted(by_role.items()))
                  + f", benchmark client {client_cpu:.2f}")
            lead_split = {k.split('/')[1]: v for k, v in split.items() if k.startswith(leader.name + "/")}
            print("  of which the leader: " + ", ".join(f"{r} {v:.2f}" for r, v in sorted(lead_split.items())))
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
