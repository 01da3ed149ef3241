"""What a careless or hostile client does to a node (issue 12), as small functions the
hostile tests and the all-in-one scenario share. Each returns what the caller must close
(sockets) or what it got back; none waits on a bare sleep."""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from typing import Any

import zmq

from actors.runtime import rocks_log
from protocol.codec import pack, unpack
from protocol.client.watch import watch_topic

MiB = 1024 * 1024


def request(url: str, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """One request on a fresh DEALER; the reply, or None on timeout."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sock.send(pack(dict(req, id=1)))
        if not sock.poll(int(timeout * 1000)):
            return None
        return unpack(sock.recv())
    finally:
        sock.close(0)


def put_many(url: str, prefix: bytes, count: int, value: bytes = b"v", per_txn: int = 128,
             allow: tuple[str, ...] = ()) -> None:
    """`count` keys prefix + %08d, written in txns of `per_txn` puts; stops at the first
    error whose code is in `allow`, fails on any other."""
    for start in range(0, count, per_txn):
        ops = [{"put": {"key": prefix + b"%08d" % i, "value": value}}
               for i in range(start, min(count, start + per_txn))]
        reply = request(url, {"op": "txn", "compare": [], "success": ops, "failure": []})
        if reply and not reply.get("ok") and reply["error"]["code"] in allow:
            return
        assert reply and reply.get("ok"), reply


def stalled_dealer(url: str, ctx: zmq.Context | None = None) -> zmq.Socket:
    """A DEALER that takes (almost) nothing off the wire: its receive queue holds one
    message and its kernel receive buffer is tiny, so the node's sends back up."""
    sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(url)
    return sock


def slow_reader(url: str, key: bytes, count: int = 300) -> zmq.Socket:
    """A DEALER that sends `count` reads of `key` and never reads a reply. Close it with
    `close(0)` to end the attack."""
    sock = stalled_dealer(url)
    for i in range(count):
        sock.send(pack({"id": i + 1, "op": "range", "key": key, "serializable": True}))
    return sock


def stalled_subscriber(watch_url: str, key: bytes, range_end: bytes = b"") -> zmq.Socket:
    """A SUB on a channel that never reads."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(watch_url)
    sock.subscribe(watch_topic(key, range_end))
    return sock


def many_subscriptions(watch_url: str, count: int, per_connection: int = 1000) -> list[zmq.Socket]:
    """`count` distinct single-key channels over ceil(count / per_connection) SUBs."""
    ctx = zmq.Context.instance()
    socks = []
    for start in range(0, count, per_connection):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # a SUB's own queue drops subscriptions past it
        sock.connect(watch_url)
        for i in range(start, min(count, start + per_connection)):
            sock.subscribe(watch_topic(b"idle/%08d" % i))
        socks.append(sock)
    return socks


def raw_subscribe_is_closed(url: str, topic: bytes) -> bool:
    """Send one subscribe message by hand (ZMTP 3.0, NULL, as an XSUB: libzmq's own XSUB
    and SUB keep a trie of what they send and crash on topics of 256 KiB or more); True
    when the node closes the connection."""
    host, port = url[len("tcp://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
        ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 4) + b"XSUB"
        s.sendall(b"\x04" + bytes((len(ready),)) + ready)
        body = b"\x01" + topic
        s.sendall(b"\x02" + struct.pack(">Q", len(body)) + body)
        while s.recv(65536):  # the node's greeting and READY, then the end
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


def range_compare_txn(prefix: bytes, end: bytes | None = None, compares: int = 128) -> dict[str, Any]:
    """The issue's 7.7 KB txn: `compares` compares, each over the range [prefix, end)
    (end: the prefix's end)."""
    if end is None:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
    cmp = {"target": "VERSION", "result": "GREATER", "key": prefix, "range_end": end, "version": 0}
    return {"op": "txn", "compare": [cmp] * compares, "success": [], "failure": []}


def nested_tree(levels: int = 7) -> dict[str, Any]:
    """The issue's big nested txn (~700 KiB): a binary tree of 2^levels - 1 txns, each
    with 64 range deletes, 62 puts and (above the last level) two nested txns."""
    count = [0]

    def node(level: int) -> dict[str, Any]:
        n = count[0]
        count[0] += 1
        ops: list[dict[str, Any]] = [
            {"delete_range": {"key": b"d%03d/%02d" % (n, i), "range_end": b"d%03d/%02dz" % (n, i)}}
            for i in range(64)]
        ops += [{"put": {"key": b"p%03d/%02d" % (n, i), "value": b"v" * 8}} for i in range(62)]
        if level + 1 < levels:
            ops += [{"txn": node(level + 1)}, {"txn": node(level + 1)}]
        return {"compare": [], "success": ops, "failure": []}

    return {"op": "txn", **node(0)}


def timed(url: str, req: dict[str, Any], timeout: float = 60.0) -> tuple[dict[str, Any] | None, float]:
    t0 = time.monotonic()
    reply = request(url, req, timeout)
    return reply, time.monotonic() - t0


def wal_file(node: Any) -> str:
    files = [f for f in rocks_log.log_files(os.path.join(node.data_dir, "consensus")) if os.path.getsize(f) > 0]
    assert files, "no write-ahead file with records"
    return files[-1]


def damage_random_tail(path: str) -> str:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(max(0, size - 512))
        f.write(random.Random(12).randbytes(min(512, size)))
    return "512 random bytes over the tail"
