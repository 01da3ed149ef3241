"""`make cluster`: a local 3-node quorumkv cluster in the foreground.

Starts three `qkv` processes on 127.0.0.1 (clients 7379/17379/27379, peers
7380/17380/27380, watch 7381/17381/27381, metrics http 7382/17382/27382, etcd's gRPC API
http 2379/12379/22379; data in
./cluster.qkv/<name>), prints each
member's endpoints, and stops all three on Ctrl-C. Node logs go to
./cluster.qkv/<name>.log. Pass `--base-dir DIR` or `--size 5` for other set-ups.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3, choices=(1, 3, 5))
    parser.add_argument("--base-dir", default="cluster.qkv")
    parser.add_argument("--token", default="qkv-local-cluster")
    parser.add_argument("extra", nargs="*", help="more qkv flags for every node (after --)")
    args = parser.parse_args(argv)

    os.makedirs(args.base_dir, exist_ok=True)
    nodes = []
    for i in range(args.size):
        name = f"n{i + 1}"
        offset = 10000 * i
        nodes.append({
            "name": name,
            "client": f"tcp://127.0.0.1:{7379 + offset}",
            "peer": f"tcp://127.0.0.1:{7380 + offset}",
            "watch": f"tcp://127.0.0.1:{7381 + offset}",
            "metrics": f"http://127.0.0.1:{7382 + offset}",
            "grpc": f"http://127.0.0.1:{2379 + offset}",
            "data": os.path.join(args.base_dir, name),
            "log": os.path.join(args.base_dir, f"{name}.log"),
        })
    initial = ",".join(f"{n['name']}={n['peer']}" for n in nodes)
    qkv = [sys.executable, "-c", "from nodes.cli import main; main()"]
    procs: list[subprocess.Popen] = []
    try:
        for n in nodes:
            log = open(n["log"], "ab")
            procs.append(subprocess.Popen(
                qkv + ["--name", n["name"], "--data-dir", n["data"], "--listen-client-urls", n["client"],
                       "--listen-peer-urls", n["peer"], "--listen-watch-urls", n["watch"],
                       "--listen-metrics-urls", n["metrics"], "--listen-grpc-urls", n["grpc"],
                       "--initial-cluster", initial, "--initial-cluster-token", args.token, *args.extra],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        print(f"{'name':<6} {'client':<24} {'peer':<24} {'watch':<24} log")
        for n in nodes:
            print(f"{n['name']:<6} {n['client']:<24} {n['peer']:<24} {n['watch']:<24} {n['log']}")
        endpoints = ",".join(n["client"] for n in nodes)
        grpc = ",".join(n["grpc"].split("://", 1)[1] for n in nodes)
        print(f"\nqkvctl --endpoints {endpoints} endpoint status -w table\n"
              f"etcdctl --endpoints {grpc} endpoint status -w table\nCtrl-C stops all {args.size}.", flush=True)
        stop = False

        def on_signal(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop:
            for n, p in zip(nodes, procs):
                if p.poll() is not None:
                    print(f"{n['name']} exited with {p.returncode}; see {n['log']}", flush=True)
                    stop = True
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
