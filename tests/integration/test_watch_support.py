"""Load and checkers for watch tests: a windowed writer (puts and multi-key txns), a
consumer thread that records what a watch delivers, and one validator per guarantee."""
from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from protocol.codec import pack, unpack


class Load(threading.Thread):
    """Writes ``total`` requests (0 = until stopped) with ``window`` in flight: puts of
    ``keys`` distinct keys under ``prefix``; every ``txn_every``-th request is a txn
    putting ``txn_keys`` keys at once."""

    def __init__(self, url: str, prefix: str = "w/", total: int = 0, window: int = 64,
                 keys: int = 1000, txn_every: int = 0, txn_keys: int = 4,
                 value_size: int = 16, rate: float = 0) -> None:
        super().__init__(daemon=True)
        self.url, self.prefix, self.total, self.window = url, prefix, total, window
        self.keys, self.txn_every, self.txn_keys = keys, txn_every, txn_keys
        self.value = b"v" * value_size
        self.rate = rate
        self.acked = 0
        self.failed: dict[str, int] = {}
        self.max_revision = 0
        self.commit_times: dict[int, float] = {}  # revision -> time the ack arrived
        self.record_times = False
        self._stop_event = threading.Event()
        self.sent = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def _request(self, seq: int) -> dict:
        if self.txn_every and seq % self.txn_every == 0:
            ops = [{"put": {"key": f"{self.prefix}t{seq}/{i}".encode(), "value": self.value}}
                   for i in range(self.txn_keys)]
            return {"id": seq, "op": "txn", "success": ops}
        key = f"{self.prefix}{seq % self.keys:06d}".encode()
        return {"id": seq, "op": "put", "key": key, "value": self.value}

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.url)
        in_flight: dict[int, float] = {}
        started = time.monotonic()
        try:
            while not self._stop_event.is_set():
                if self.total and self.sent >= self.total and not in_flight:
                    break
                while len(in_flight) < self.window and (not self.total or self.sent < self.total):
                    if self.rate and self.sent >= self.rate * (time.monotonic() - started):
                        break
                    self.sent += 1
                    sock.send(pack(self._request(self.sent)))
                    in_flight[self.sent] = time.monotonic()
                if sock.poll(5 if self.rate else 50):
                    while True:
                        try:
                            reply = unpack(sock.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        if in_flight.pop(reply.get("id"), None) is None:
                            continue
                        if reply["ok"]:
                            self.acked += 1
                            rev = reply["header"]["revision"]
                            self.max_revision = max(self.max_revision, rev)
                            if self.record_times:
                                self.commit_times[rev] = time.monotonic()
                        else:
                            code = reply["error"]["code"]
                            self.failed[code] = self.failed.get(code, 0) + 1
                now = time.monotonic()
                for rid in [r for r, t in in_flight.items() if now - t > 8]:
                    del in_flight[rid]
                    self.failed["no_reply"] = self.failed.get("no_reply", 0) + 1
        finally:
            sock.close()


class Consumer(threading.Thread):
    """Iterates a Watcher, recording (revision, [(type, key, mod_revision)]) per response
    and the progress notifications with how many revisions had been delivered then."""

    def __init__(self, watcher: Any, sleep_s: float = 0.0, sleep_every: int = 1) -> None:
        super().__init__(daemon=True)
        self.watcher = watcher
        self.sleep_s, self.sleep_every = sleep_s, sleep_every
        self.responses: list[tuple[int, list[tuple[str, bytes, int]]]] = []
        self.progress: list[tuple[int, int]] = []  # (progress revision, len(responses) then)
        self.arrivals: dict[int, float] = {}
        self.ended: Any = None
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            n = 0
            while not self._stop_event.is_set():
                try:
                    resp = self.watcher.get(timeout=0.1)
                except StopIteration:
                    break
                if resp is None:
                    continue
                if resp.canceled:
                    self.ended = resp
                    break
                if resp.progress_notify:
                    self.progress.append((resp.revision, len(self.responses)))
                    continue
                self.arrivals[resp.revision] = time.monotonic()
                self.responses.append((resp.revision, [(e.type, e.kv.key, e.kv.mod_revision)
                                                       for e in resp.events]))
                n += 1
                if self.sleep_s and n % self.sleep_every == 0:
                    time.sleep(self.sleep_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def last_revision(self) -> int:
        return self.responses[-1][0] if self.responses else 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self.watcher.cancel()


def truth(request, key: bytes, range_end: bytes, start: int, end: int) -> list:
    """The server's history of (start-1, end] as the Consumer records it."""
    out = []
    rev = start
    while rev <= end:
        reply = request({"op": "history", "key": key, "range_end": range_end,
                         "start_revision": rev, "end_revision": end, "limit_revisions": 10000},
                        timeout=20)
        assert reply and reply["ok"], reply
        for g in reply["revisions"]:
            out.append((g["revision"], [(e["type"], e["kv"]["key"], e["kv"]["mod_revision"])
                                        for e in g["events"]]))
        rev = reply["last_revision"] + 1
        if not reply["more"]:
            break
    return out


def wait_delivered(consumer: Consumer, revision: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while consumer.last_revision() < revision:
        if consumer.error is not None:
            raise consumer.error
        if consumer.ended is not None or not consumer.is_alive():
            raise AssertionError(f"watch ended early: {consumer.ended}")
        if time.monotonic() > deadline:
            raise AssertionError(f"delivered up to {consumer.last_revision()}, waited for {revision}")
        time.sleep(0.02)


def check_ordered(responses: list) -> None:
    revs = [r for r, _ in responses]
    assert all(a < b for a, b in zip(revs, revs[1:])), "revisions out of order"
    for rev, evs in responses:
        assert evs and all(mod == rev for _, _, mod in evs), (rev, evs)


def check_unique(responses: list) -> None:
    seen = [(rev, i, k) for rev, evs in responses for i, (_, k, _) in enumerate(evs)]
    assert len(seen) == len(set(seen))
    revs = [r for r, _ in responses]
    assert len(revs) == len(set(revs)), "a revision delivered twice"


def check_exact(responses: list, expected: list) -> None:
    """Delivered exactly the expected revisions, each with all its events."""
    got = {r: evs for r, evs in responses}
    exp = {r: evs for r, evs in expected}
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    assert not missing, f"{len(missing)} revisions missing, first {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected revisions, first {extra[:5]}"
    bad = [r for r in exp if exp[r] != got[r]]
    assert not bad, f"revisions with other events: {bad[:5]}: {exp[bad[0]]} vs {got[bad[0]]}"
