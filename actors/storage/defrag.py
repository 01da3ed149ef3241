"""Defragmentation passes (`qkvctl defrag`, DEFRAG from the gateway): who is answered by
which pass. The storage actor polls (`poll`) and sends the answers and log lines.

Rules:
- One pass at a time, RocksDB's compact_range in a thread: it releases the GIL, so the
  actor's loop keeps applying and serving meanwhile (etcd's defrag stops the world,
  etcd #9222).
- A request while no pass runs starts one; a request while one runs is answered by the
  NEXT pass (the running one may have started before the request's writes): every such
  request shares that one next pass, started when the running one finishes.
- A pass's askers are answered when it finishes: its duration and the database size
  before and after, or the error (the data is untouched).
- Before the backend closes (snapshot install, disk reopen, shutdown): `join` waits for the
  running pass and any pass queued behind it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

A = TypeVar("A")  # an asker: what the caller needs to answer one request


@dataclass(frozen=True)
class Finished(Generic[A]):
    askers: list[A]
    took_s: float
    size_before: int
    size_after: int
    error: str | None  # "Type: message" when compact_range raised


class Defrag(Generic[A]):
    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.running: list[A] = []  # askers the running pass answers
        self.next: list[A] = []  # asked meanwhile: they get a new pass
        self._result: tuple[float, str | None] = (0.0, None)
        self._before = 0

    @property
    def active(self) -> bool:
        return self.thread is not None

    def request(self, backend: Any, asker: A) -> int | None:
        """The database size when a pass starts now (None: answered by the next pass)."""
        if self.thread is not None:
            self.next.append(asker)
            return None
        self.running.append(asker)
        return self.start(backend)

    def start(self, backend: Any) -> int:
        """Start a pass (its askers are in `running`); returns the database size."""
        before = int(backend.size_bytes())
        started = time.monotonic()

        def run() -> None:
            error = None
            try:
                backend.defragment()
            except Exception as exc:  # reported to the askers; the data is untouched
                error = f"{type(exc).__name__}: {exc}"
            self._result = (time.monotonic() - started, error)

        self._before = before
        self.thread = threading.Thread(target=run, name="defrag", daemon=True)
        self.thread.start()
        return before

    def poll(self, backend: Any) -> tuple[Finished[A] | None, int | None]:
        """(the pass that finished, or None if none did; the database size if the next
        pass started now, else None)."""
        thread = self.thread
        if thread is None or thread.is_alive():
            return None, None
        self.thread = None
        took_s, error = self._result
        done = Finished(self.running, took_s, self._before, int(backend.size_bytes()), error)
        self.running = []
        started = None
        if self.next:
            self.running, self.next = self.next, []
            started = self.start(backend)
        return done, started

    def join(self) -> None:
        """Wait for the running pass (the caller's polls then answer it and start the next)."""
        if self.thread is not None:
            self.thread.join()
