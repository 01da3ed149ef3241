"""The floors under one client's write on this machine, measured in the same run as the
comparison (`make bench-compare` prints them last; or run this file alone):

- fdatasync: one small append made durable in a temporary file on the same filesystem as
  the benchmark's data dirs (a write is acknowledged only after it: every system pays it);
- one ZeroMQ hop between two Python processes: a DEALER/ROUTER round trip with a 300-byte
  msgpack payload and nothing else done, over ipc:// and tcp:// on loopback (the wall time
  of the round trip, and the CPU of both ends; half of it is one one-way hop).

A quorumkv put from one client crosses five such one-way hops on one node (client ->
gateway -> consensus -> storage -> gateway -> client) and seven on a cluster (+ the leader's
consensus -> a follower's and back), each a Python process waking on zmq_poll. Figures
only: nothing here asserts on time.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_node import cpu_seconds  # noqa: E402
from nodeproc import free_port  # noqa: E402

ROUNDS = 4000
PAYLOAD = msgpack.packb({"op": "put", "key": b"k" * 8, "value": b"v" * 256, "id": 1})


def fdatasync_ms(directory: str | None = None, rounds: int = 500) -> tuple[float, float]:
    """(median, p99) of one 300-byte append plus fdatasync, in ms."""
    fd, path = tempfile.mkstemp(prefix="qkv-floor-", dir=directory)
    try:
        times = []
        for _ in range(rounds):
            os.write(fd, b"x" * 300)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3


def _echo(url: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            break
        sock.send_multipart(frames)
    ctx.destroy(linger=0)


def round_trip_us(url: str, rounds: int = ROUNDS) -> tuple[float, float]:
    """(wall µs per round trip, CPU µs per round trip of both processes) between this
    process (DEALER) and an echoing child (ROUTER) at `url`."""
    child = subprocess.Popen([sys.executable, __file__, "--echo", url], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        assert child.stdout is not None
        if not select.select([child.stdout], [], [], 10)[0] or child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the echo process did not bind {url} within 10 s")
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(url)
        for _ in range(200):  # connected and warm
            sock.send(PAYLOAD)
            sock.recv()
        child_cpu0 = cpu_seconds(child.pid)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            sock.send(PAYLOAD)
            sock.recv()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        cpu += cpu_seconds(child.pid) - child_cpu0
        sock.send(b"stop")
        child.wait(timeout=10)
        return wall / rounds * 1e6, cpu / rounds * 1e6
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        ctx.destroy(linger=0)


def report(directory: str | None = None) -> str:
    med, p99 = fdatasync_ms(directory)
    lines = [f"  fdatasync of a 300-byte append: median {med:.3f} ms, p99 {p99:.3f} ms"]
    with tempfile.TemporaryDirectory(prefix="qkv-floor-") as d:
        for url in (f"ipc://{d}/echo.sock", f"tcp://127.0.0.1:{free_port()}"):
            wall, cpu = round_trip_us(url)
            lines.append(f"  ZeroMQ round trip between two Python processes ({url.split(':')[0]}): "
                         f"{wall:.0f} µs wall, {cpu:.0f} µs CPU of both (one one-way hop: about half)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        _echo(sys.argv[2])
    else:
        print("Floors on this machine:")
        print(report())
