"""Defragmentation passes (actors/storage/defrag.py) with a fake backend: one pass at a
time, requests during a pass share the next one, errors reach the askers."""

import threading

from actors.storage.defrag import Defrag


class FakeBackend:
    def __init__(self, fail=False):
        self.size = 100
        self.passes = 0
        self.fail = fail
        self.gate = threading.Event()

    def size_bytes(self):
        return self.size

    def defragment(self):
        self.gate.wait(10)
        self.passes += 1
        if self.fail:
            raise OSError("disk gone")
        self.size -= 40


def finish(defrag, backend):
    backend.gate.set()
    defrag.join()
    return defrag.poll(backend)


def test_requests_during_a_pass_share_the_next_pass():
    backend = FakeBackend()
    defrag = Defrag()
    assert defrag.request(backend, "a") == 100
    assert defrag.active
    assert defrag.poll(backend) == (None, None)  # still running (it waits for the gate)
    assert defrag.request(backend, "b") is None
    assert defrag.request(backend, "c") is None
    done, started = finish(defrag, backend)
    assert done.askers == ["a"] and (done.size_before, done.size_after, done.error) == (100, 60, None)
    assert started == 60 and defrag.running == ["b", "c"]
    done, started = finish(defrag, backend)
    assert done.askers == ["b", "c"] and done.size_after == 20 and started is None
    assert not defrag.active and backend.passes == 2


def test_a_failed_pass_reports_its_error():
    backend = FakeBackend(fail=True)
    defrag = Defrag()
    defrag.request(backend, "a")
    done, _ = finish(defrag, backend)
    assert done.askers == ["a"] and done.error == "OSError: disk gone"
