"""Shared pieces of the hostile-load tests (issue 12): RSS of a node's actors, and an
honest client whose latency is measured while an attacker runs beside it.

Rules: memory bounds are asserted as RSS figures against a stated limit; stalls are
printed as the honest client's latency percentiles and asserted only as "no request of
the honest client failed or timed out" (tests never assert on time).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from protocol.codec import pack, unpack

MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def node_rss(node: Any) -> dict[str, float]:
    """role -> RSS in MiB of every live actor of a NodeProcess."""
    return {role: rss_mib(pid) for role, pid in node.actor_pids().items()}


class RssWatch(threading.Thread):
    """Samples the RSS of a node's actors every 50 ms; `peak` is role -> highest MiB seen."""

    def __init__(self, node: Any, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.interval = interval
        self.peak: dict[str, float] = {}
        self.pids_seen: dict[str, set[int]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for role, pid in self.node.actor_pids().items():
                self.pids_seen.setdefault(role, set()).add(pid)
                self.peak[role] = max(self.peak.get(role, 0.0), rss_mib(pid))
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(5)
        return self.peak

    def restarted(self) -> dict[str, int]:
        """role -> how many extra pids were seen (actor restarts during the watch)."""
        return {role: len(p) - 1 for role, p in self.pids_seen.items() if len(p) > 1}


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"n": len(s), "p50_ms": pick(0.50) * 1000, "p99_ms": pick(0.99) * 1000, "max_ms": s[-1] * 1000}


class Honest(threading.Thread):
    """One honest client: a put then a linearizable get of a small key, one at a time,
    on its own DEALER; records each request's latency and every failure. `phase()`
    starts a new labelled sample set so a test can compare before/during an attack."""

    def __init__(self, url: str, prefix: bytes = b"honest/", timeout: float = 10.0,
                 security: Any = None, ops: tuple[str, ...] = ("put", "range")) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.security = security
        self.ops = ops
        self.samples: dict[str, list[float]] = {"before": []}
        self.current = "before"
        self.failures: list[tuple[str, Any]] = []
        self.failures_by_phase: dict[str, list[tuple[str, Any]]] = {}
        self.acked: dict[bytes, bytes] = {}  # key -> value of every acknowledged put
        # key -> values of puts that failed without saying they did not happen (timeout,
        # unknown_outcome, no reply): any of them may be what the key holds later.
        self.maybe: dict[bytes, set[bytes]] = {}
        self._stop_event = threading.Event()
        self._seq = 0

    def phase(self, name: str) -> None:
        self.samples.setdefault(name, [])
        self.current = name

    def lost(self, stored: dict[bytes, bytes]) -> list[bytes]:
        """Keys whose stored value is neither the last acknowledged put nor a later put
        whose outcome is unknown (`stored`: key -> value as read from a member)."""
        return sorted(k for k, v in self.acked.items()
                      if stored.get(k) != v and stored.get(k) not in self.maybe.get(k, ()))

    def report(self) -> dict[str, dict[str, float]]:
        return {name: percentiles(s) for name, s in self.samples.items()}

    def stop(self) -> None:
        self._stop_event.set()
        self.join(self.timeout + 5)

    def _socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.security is not None:
            from actors.runtime import security as sec
            sec.make_curve_client(sock, *self.security.curve())
        sock.connect(self.url)
        return sock

    def _failed(self, op: str, error: Any) -> None:
        self.failures.append((op, error))
        self.failures_by_phase.setdefault(self.current, []).append((op, error))

    def run(self) -> None:
        ctx = zmq.Context()
        sock = self._socket(ctx)
        try:
            while not self._stop_event.is_set():
                for op in self.ops:
                    self._seq += 1
                    key = self.prefix + b"%08d" % (self._seq % 1000)
                    value = b"v%d" % self._seq
                    req = {"id": self._seq, "op": op, "key": key}
                    if op == "put":
                        req["value"] = value
                    t0 = time.monotonic()
                    sock.send(pack(req))
                    reply = None
                    deadline = t0 + self.timeout
                    while time.monotonic() < deadline and not self._stop_event.is_set():
                        if sock.poll(50):
                            r = unpack(sock.recv())
                            if r.get("id") == self._seq:
                                reply = r
                                break
                    if reply is None:
                        if op == "put":  # sent, unanswered: it may still be applied
                            self.maybe.setdefault(key, set()).add(value)
                        if self._stop_event.is_set():
                            return
                        self._failed(op, "no reply")
                        sock.close(0)
                        sock = self._socket(ctx)
                        continue
                    self.samples[self.current].append(time.monotonic() - t0)
                    if not reply.get("ok"):
                        self._failed(op, reply.get("error"))
                        if op == "put" and (reply.get("error") or {}).get("code") in ("timeout", "unknown_outcome"):
                            self.maybe.setdefault(key, set()).add(value)
                    elif op == "put":
                        self.acked[key] = value
        finally:
            sock.close(0)
            ctx.term()


def refusal(node: Any) -> str:
    """Start the node; it must exit non-zero by itself; its one `qkv:` line."""
    seen = len(node.log_text())
    node.start(wait=False)
    code = node.proc.wait(timeout=60)
    text = node.log_text()[seen:]
    lines = [line for line in text.splitlines() if line.startswith("qkv: ")]
    assert code == 78 and len(lines) == 1, f"exit {code}; log:\n{text[-3000:]}"
    assert "actor_spawned" not in text, "an actor ran on the refused data dir"
    return lines[0]


def ballast(mnt: Path, room_mib: int = 6) -> Path:
    """Fill the filesystem of `mnt` but `room_mib`."""
    path = mnt / "ballast"
    st = os.statvfs(mnt)
    size = st.f_bavail * st.f_frsize - room_mib * 1024 * 1024
    with open(path, "wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(b"\0" * (1024 * 1024))
    return path
