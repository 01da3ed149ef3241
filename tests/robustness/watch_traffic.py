"""Recording watchers: consumers of `Client.watch` that record everything they are
delivered, for the validators in watch_check.py.

Each `RecordingWatcher` watches a prefix with prev_kv and progress notifications
(bookmarks). Its record is a list of `watch_check.Session`s: one per watch it opened,
each with its start revision, every response (events or bookmark) with a monotonic
time, the client's own fail-overs (``disconnects``) and how it ended. A session ends
when the run stops, when the watch is canceled (compacted), on an error, when it stalls
(its covered revision stands still for ``stall_s``: an isolated or paused member keeps
heartbeating, so the client would not leave it on its own), or, for watchers other than
number 0, at a planned restart now and then. After a break it resumes from the last
revision it covered + 1 on the next endpoint, as a real consumer does; a planned restart
instead starts, half the time, from a random earlier revision it has seen, which
exercises resumable start revisions, compacted ones included (a compacted error is
recorded, and the watcher then resumes from the highest revision it covered + 1, or from
now when that is compacted too). Watcher 0 starts from the current revision and only
resumes. Cheap on CPU: one thread per watcher, blocking in the client's poll.

    watchers = [RecordingWatcher(i, endpoints, seed + i, stop) for i in range(3)]
    for w in watchers: w.start()
    ...; stop.set()
    for w in watchers: w.join(15)
    violations = check_watches([s for w in watchers for s in w.sessions], history)

`connect` makes the client (default: our native `Client`); the gRPC scenarios pass
grpc_traffic.GrpcWatchClient, whose watch() is a Watch stream of etcd's gRPC API.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

from watch_check import Response, Session, WEvent

from protocol.client import Client
from protocol.errors import QkvError

SEEN_SAMPLE = 1000  # revisions kept (reservoir) to restart from


def to_wevent(e: Any) -> WEvent:
    kv, p = e.kv, e.prev_kv
    return WEvent(e.type, kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version,
                  (p.value, p.create_revision, p.mod_revision, p.version) if p is not None else None)


class RecordingWatcher(threading.Thread):
    def __init__(self, no: int, endpoints: list[str], seed: int, stop: threading.Event,
                 prefix: bytes = b"key/", restart_s: tuple[float, float] = (3.0, 8.0),
                 stall_s: float = 8.0, timeout_s: float = 3.0, progress_interval_s: float = 1.0,
                 client_options: dict | None = None, connect: Callable[..., Any] = Client) -> None:
        super().__init__(daemon=True, name=f"watch-{no}")
        self.connect = connect  # (endpoints, timeout=, **client_options) -> a client
        self.client_options = dict(client_options or {})  # security: server_key, user, password
        self.no = no
        self.endpoints = list(endpoints)
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.prefix = prefix
        self.restart_s = restart_s
        self.stall_s = stall_s
        self.timeout_s = timeout_s
        self.progress_interval_s = progress_interval_s
        self.sessions: list[Session] = []
        self.counts: dict[str, Any] = {}
        self._seen: list[int] = []
        self._n_seen = 0
        self._high = 0  # the highest revision any of its sessions covered
        self._watcher: Any = None

    def join(self, timeout: float | None = None) -> None:
        """Once ``stop`` is set, also interrupt a watch blocked in the client's fail-over
        loop (every endpoint down), which only cancellation ends."""
        w = self._watcher
        if self.stop_event.is_set() and w is not None:
            w._cancel.set()  # noqa: SLF001 - the iterating thread then closes its own sockets
        super().join(timeout)

    def run(self) -> None:
        client = self.connect(self.endpoints, timeout=self.timeout_s, **self.client_options)
        idx = self.no % len(self.endpoints)
        start, resume_of = 0, None
        backoff = 0.1
        try:
            while not self.stop_event.is_set():
                client._preferred = idx  # noqa: SLF001 (test harness): the endpoint to try first
                try:
                    s, idx = self._session(client, start, resume_of)
                except QkvError as exc:  # no endpoint answered status: try again later
                    self._count("attach_failed", exc)
                    self.stop_event.wait(backoff)
                    backoff = min(1.0, backoff * 2)
                    continue
                except Exception as exc:  # a harness bug must not hide behind a thread
                    self._count("harness_error", exc)
                    self.stop_event.wait(0.5)
                    continue
                backoff = 0.1
                idx = (idx + 1) % len(self.endpoints)
                self._high = max(self._high, s.covered)
                start, resume_of = s.covered + 1, len(self.sessions) - 1
                if s.compact_revision:
                    # resume from where this consumer really is, or from now if that is gone too
                    start = 0 if s.covered >= self._high else self._high + 1
                    resume_of = None if start == 0 else resume_of
                elif s.end_reason == "restart" and self._seen and self.rng.random() < 0.5:
                    start, resume_of = self.rng.choice(self._seen), None
        finally:
            client.close()

    def _session(self, client: Any, start: int, resume_of: int | None) -> tuple[Session, int]:
        """Open one watch and record it until it ends; the session and its endpoint index."""
        w = client.watch(self.prefix, prefix=True, start_revision=start, prev_kv=True,
                         progress_notify=True, progress_interval_s=self.progress_interval_s)
        now = time.monotonic()
        s = Session(self.no, len(self.sessions), w.start_revision, self.prefix,
                    endpoint=w._endpoints[w._idx], started=now, resume_of=resume_of)  # noqa: SLF001
        self.sessions.append(s)
        self._watcher = w
        if self.stop_event.is_set():
            w._cancel.set()  # noqa: SLF001 - join() may have looked before we published w
        restart_at = now + self.rng.uniform(*self.restart_s) if self.no else float("inf")
        covered, advanced_at, resumes = s.start_revision - 1, now, 0
        try:
            while True:
                try:
                    resp = w.get(timeout=0.5)
                except StopIteration:
                    s.end_reason = s.end_reason or ("stop" if self.stop_event.is_set() else "canceled")
                    break
                now = time.monotonic()
                if w.resumes != resumes:
                    s.disconnects.extend([now] * (w.resumes - resumes))
                    resumes = w.resumes
                if resp is not None:
                    if resp.canceled:
                        s.compact_revision, s.canceled = resp.compact_revision, resp.cancel_reason
                        s.end_reason = "compacted" if resp.compact_revision else "canceled"
                        self._count(s.end_reason)
                        break
                    if resp.progress_notify:
                        s.responses.append(Response(now, progress=resp.revision))
                        top = resp.revision
                    else:
                        evs = [to_wevent(e) for e in resp.events]
                        s.responses.append(Response(now, evs))
                        top = max((e.mod_revision for e in evs), default=0)
                        if evs:
                            self._remember(top)
                    if top > covered:
                        covered, advanced_at = top, now
                if self.stop_event.is_set():
                    s.end_reason = "stop"
                    break
                if now >= restart_at:
                    s.end_reason = "restart"
                    break
                if now - advanced_at > self.stall_s:
                    s.end_reason = "stall"
                    self._count("stall")
                    break
        except Exception as exc:  # QkvError the client does not retry, or a harness bug
            s.end_reason = f"error: {exc!r}"
            self._count("error", exc)
        finally:
            idx = w._idx  # noqa: SLF001
            w.cancel()
            self._watcher = None
            s.ended = time.monotonic()
        return s, idx

    def _remember(self, revision: int) -> None:
        """Reservoir sample of delivered revisions: restart points, bounded memory."""
        self._n_seen += 1
        if len(self._seen) < SEEN_SAMPLE:
            self._seen.append(revision)
        else:
            j = self.rng.randrange(self._n_seen)
            if j < SEEN_SAMPLE:
                self._seen[j] = revision

    def _count(self, what: str, exc: BaseException | None = None) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if exc is not None:
            self.counts["last_error"] = repr(exc)
