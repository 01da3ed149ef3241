"""hash_kv job scheduling (actors/storage/hashjobs.py) with a fake store: round-robin
slices, the waiting line, refusal beyond it, restart on a new store."""

from actors.storage.hashjobs import Done, HashJobs
from protocol import errors


class FakeJob:
    def __init__(self, store, revision):
        self.store, self.revision, self.left, self.closed = store, revision, store.slices, False
        self.compact_revision = 1

    def step(self, _limit, stop):
        assert not self.closed and not stop()
        self.left -= 1
        self.result = (self.store.name * 1000 + self.revision, self.revision)
        return self.left <= 0

    def close(self):
        self.closed = True


class FakeStore:
    def __init__(self, name, slices=2):
        self.name, self.slices, self.jobs = name, slices, []

    def hash_kv_job(self, revision):
        if revision < 0:
            raise errors.Compacted()
        job = FakeJob(self, revision)
        self.jobs.append(job)
        return job


def never():
    return False


def test_round_robin_queue_and_refusal():
    store = FakeStore(1)
    jobs = HashJobs(jobs_max=2, queue_max=1)
    assert jobs.request(store, "a", 10) == [] and jobs.request(store, "b", 20) == []
    assert jobs.request(store, "c", 30) == []  # waits
    refused = jobs.request(store, "d", 40)
    assert [d.asker for d in refused] == ["d"] and refused[0].error["code"] == "unavailable"
    assert jobs.step(store, never) == []  # a: 1 slice left, to the back
    assert jobs.step(store, never) == []  # b
    assert jobs.step(store, never) == [Done("a", {"hash": 1010, "revision": 10, "compact_revision": 1})]
    assert [j[0] for j in jobs.jobs] == ["b", "c"]  # c started as a finished
    assert [d.asker for d in jobs.step(store, never)] == ["b"]
    assert [d.asker for d in jobs.step(store, never)] == []
    assert [d.asker for d in jobs.step(store, never)] == ["c"]
    assert not jobs.busy


def test_a_job_that_cannot_start_is_answered_with_its_error():
    jobs = HashJobs(jobs_max=2, queue_max=4)
    (done,) = jobs.request(FakeStore(1), "a", -1)
    assert done.result is None and done.error["code"] == "compacted"


def test_restart_runs_the_jobs_again_on_the_new_store_first():
    old, new = FakeStore(1), FakeStore(2, slices=1)
    jobs = HashJobs(jobs_max=1, queue_max=4)
    jobs.request(old, "a", 10)
    jobs.request(old, "b", 20)
    jobs.step(old, never)
    jobs.restart()
    assert old.jobs[0].closed and jobs.queue == [("a", 10), ("b", 20)]
    assert jobs.step(new, never) == [Done("a", {"hash": 2010, "revision": 10, "compact_revision": 1})]
    assert [d.asker for d in jobs.step(new, never)] == ["b"]
