"""A write load for crash tests: unique keys, many requests in flight, every
acknowledgement recorded with the revision it created."""
from __future__ import annotations

import threading
import time

import zmq

from protocol.codec import pack, unpack


class Writer(threading.Thread):
    def __init__(self, url: str, prefix: str = "load/", window: int = 16) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.prefix = prefix
        self.window = window
        self.acked: dict[bytes, int] = {}  # key -> revision of its acknowledged put
        self.failed: dict[str, int] = {}
        self.max_revision = 0
        self._stop_event = threading.Event()
        self._seq = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.url)
        in_flight: dict[int, tuple[bytes, float]] = {}
        try:
            while not self._stop_event.is_set():
                while len(in_flight) < self.window:
                    self._seq += 1
                    key = f"{self.prefix}{self._seq:08d}".encode()
                    sock.send(pack({"id": self._seq, "op": "put", "key": key, "value": key}))
                    in_flight[self._seq] = (key, time.monotonic())
                if sock.poll(50):
                    while True:
                        try:
                            reply = unpack(sock.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        entry = in_flight.pop(reply.get("id"), None)
                        if entry is None:
                            continue
                        if reply["ok"]:
                            rev = reply["header"]["revision"]
                            self.acked[entry[0]] = rev
                            self.max_revision = max(self.max_revision, rev)
                        else:
                            code = reply["error"]["code"]
                            self.failed[code] = self.failed.get(code, 0) + 1
                # Requests lost with a dead gateway never get a reply: forget them after
                # a while (their outcome is unknown) and keep the window open.
                now = time.monotonic()
                for rid in [r for r, (_, t) in in_flight.items() if now - t > 8]:
                    del in_flight[rid]
                    self.failed["no_reply"] = self.failed.get("no_reply", 0) + 1
        finally:
            sock.close()


def all_kvs(request, prefix: bytes = b"") -> list[dict]:
    """Every key (under prefix) with a linearizable range."""
    end = b"\x00" if not prefix else prefix[:-1] + bytes([prefix[-1] + 1])
    reply = request({"op": "range", "key": prefix or b"\x00", "range_end": end}, timeout=10)
    assert reply and reply["ok"], reply
    return reply["kvs"]
