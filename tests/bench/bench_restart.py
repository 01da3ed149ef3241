"""`make bench-restart`: a node holding 1,000,000 keys restarts and serves in how long?

Loads KEYS keys (default 1,000,000) through the API with txns of 128 puts, stops the
node cleanly, starts it again and times how long until it answers a linearizable get
of a random loaded key. Then the same after `kill -9` of the whole node.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nodeproc import NodeProcess  # noqa: E402
from protocol.codec import pack, unpack  # noqa: E402

KEYS = int(os.environ.get("KEYS", "1000000"))
PER_TXN = 128


def load(url: str, keys: int) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    value = b"v" * 64
    txns = (keys + PER_TXN - 1) // PER_TXN
    sent = done = 0
    started = time.monotonic()
    while done < txns:
        while sent < txns and sent - done < 32:
            lo = sent * PER_TXN
            ops = [{"put": {"key": b"key/%08d" % i, "value": value}} for i in range(lo, min(lo + PER_TXN, keys))]
            sock.send(pack({"id": sent, "op": "txn", "compare": [], "success": ops, "failure": []}))
            sent += 1
        if not sock.poll(30_000):
            raise SystemExit("load: no reply for 30 s")
        reply = unpack(sock.recv())
        if not reply["ok"]:
            raise SystemExit(f"load failed: {reply}")
        done += 1
        if done % 500 == 0:
            rate = done * PER_TXN / (time.monotonic() - started)
            print(f"\rloaded {done * PER_TXN:,} keys ({rate:,.0f} keys/s)", end="", file=sys.stderr, flush=True)
    sock.close()
    print(f"\nloaded {keys:,} keys in {time.monotonic() - started:.1f}s", flush=True)


def time_to_serve(node: NodeProcess) -> float:
    key = b"key/%08d" % random.randrange(KEYS)
    started = time.monotonic()
    node.start(wait=False)
    while True:
        reply = node.request({"op": "range", "key": key}, timeout=0.5)
        if reply and reply.get("ok") and reply["kvs"]:
            return time.monotonic() - started
        if time.monotonic() - started > 120:
            raise SystemExit(f"the node did not serve within 120 s; log:\n{node.log_text()[-2000:]}")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qkv-restart-"))
    node = NodeProcess(tmp, "restart")
    try:
        node.start()
        load(node.client_url, KEYS)
        st = node.request({"op": "status"})
        print(f"db_size {st['db_size'] / 2**20:.0f} MiB, revision {st['header']['revision']}")
        node.stop()
        print(f"clean stop -> restart -> linearizable get served in {time_to_serve(node):.2f}s")
        node.kill()
        print(f"kill -9 -> restart -> linearizable get served in {time_to_serve(node):.2f}s")
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
