"""hash_kv jobs in slices (the corruption check's, `endpoint hashkv`): which job runs, which
waits, which is refused. The storage actor does the I/O (replies) and gives each loop turn
a slice of time; the hashing itself is MVCCStore.hash_kv_job's, over a pinned snapshot.

Rules:
- At most `jobs_max` jobs run at once, round-robin: each `step` gives the first one slice
  (until `stop()` says so) and it goes to the back of the line unless done.
- At most `queue_max` more wait, in arrival order, started as running ones finish; beyond
  that a request is refused at once (`unavailable`).
- A job whose store is replaced (snapshot install, disk reopen: `restart` before the old
  handle closes) starts again on the new store, ahead of the waiting ones.
- A job that cannot start (a compacted or future revision) is answered with its error.
- No clock, no sockets: the caller passes the store and the stop condition.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from actors.runtime.messages import HashKvResult
from protocol import errors

A = TypeVar("A")  # an asker: what the caller needs to answer one request


@dataclass(frozen=True)
class Done(Generic[A]):
    """A request's answer: `result` ({hash, revision, compact_revision}) or `error` (wire)."""
    asker: A
    result: HashKvResult | None = None
    error: Any = None


class HashJobs(Generic[A]):
    def __init__(self, jobs_max: int, queue_max: int) -> None:
        self.jobs_max = jobs_max
        self.queue_max = queue_max
        self.jobs: list[tuple[A, Any, int]] = []  # (asker, job, revision asked), running
        self.queue: list[tuple[A, int]] = []

    @property
    def busy(self) -> bool:
        return bool(self.jobs or self.queue)

    def request(self, store: Any, asker: A, revision: int) -> list[Done[A]]:
        if len(self.jobs) < self.jobs_max:
            return self._start(store, asker, revision)
        if len(self.queue) < self.queue_max:
            self.queue.append((asker, revision))
            return []
        err = errors.Unavailable(f"too many hash_kv requests in progress on this member ({self.jobs_max} "
                                 f"running, {self.queue_max} waiting); try again later")
        return [Done(asker, error=err.to_wire())]

    def _start(self, store: Any, asker: A, revision: int) -> list[Done[A]]:
        try:
            job = store.hash_kv_job(revision)
        except errors.QkvError as err:
            return [Done(asker, error=err.to_wire())]
        self.jobs.append((asker, job, revision))
        return []

    def _pump(self, store: Any) -> list[Done[A]]:
        done: list[Done[A]] = []
        while self.queue and len(self.jobs) < self.jobs_max:
            done += self._start(store, *self.queue.pop(0))
        return done

    def step(self, store: Any, stop: Callable[[], bool]) -> list[Done[A]]:
        """Start waiting jobs there is room for, then one slice of the first running job."""
        done = self._pump(store)
        if not self.jobs:
            return done
        asker, job, revision = self.jobs.pop(0)
        if not job.step(1 << 62, stop=stop):
            self.jobs.append((asker, job, revision))
            return done
        digest, rev = job.result
        done.append(Done(asker, {"hash": digest, "revision": rev, "compact_revision": job.compact_revision}))
        return done + self._pump(store)

    def restart(self) -> None:
        """Before the store's handle closes: running jobs wait at the head of the queue."""
        jobs, self.jobs = self.jobs, []
        for _asker, job, _revision in jobs:
            job.close()
        self.queue[:0] = [(asker, revision) for asker, _job, revision in jobs]

    def close(self) -> None:
        for _asker, job, _revision in self.jobs:
            job.close()
