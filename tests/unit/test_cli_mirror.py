"""make-mirror's pieces (protocol/client/cli/mirror.py) without a cluster: the renaming
etcdctl does, the split of large revisions into txns the destination takes, and the retry
of a destination that is away (a refusal it will repeat ends the copy)."""
from __future__ import annotations

import threading

import pytest

from protocol.client.cli.mirror import MAX_OPS, Interrupted, Mirror, rename
from protocol.client.txn import Op
from protocol.errors import PermissionDenied, Unavailable


def test_rename_is_etcdctls_modify_prefix():
    assert rename(b"src/a", b"src/", b"dst/") == b"dst/a"
    assert rename(b"src/a", b"src/", b"") == b"a"          # --no-dest-prefix
    assert rename(b"a", b"", b"dst/") == b"dst/a"          # the whole keyspace into a prefix
    assert rename(b"src/src/a", b"src/", b"d/") == b"d/src/a"  # the first occurrence only


class FakeDest:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.txns: list[list[Op]] = []

    def txn(self, compare, success, failure):
        if self.failures:
            raise self.failures.pop(0)
        self.txns.append(list(success))


def mirror(dest: FakeDest, stop: threading.Event | None = None) -> tuple[Mirror, list[str]]:
    warnings: list[str] = []
    return Mirror(None, dest, b"src/", b"dst/", stop or threading.Event(), warnings.append), warnings  # type: ignore[arg-type]


def test_large_revisions_are_split():
    m, _ = mirror(FakeDest([]))
    ops = [(Op.put(f"k{i}", b"v"), 3) for i in range(MAX_OPS * 2 + 1)]
    assert [len(b) for b in m._batches(ops)] == [MAX_OPS, MAX_OPS, 1]
    big = [(Op.put(f"k{i}", b"v"), 400_000) for i in range(5)]
    assert [len(b) for b in m._batches(big)] == [2, 2, 1]  # about 1 MiB a txn


def test_a_destination_away_is_retried_until_it_answers():
    dest = FakeDest([Unavailable(), Unavailable()])
    m, warnings = mirror(dest)
    m._apply([Op.put(b"dst/a", b"1")])
    assert len(dest.txns) == 1
    assert warnings[0].startswith("destination failed (service unavailable)") and "answers again" in warnings[-1]


def test_a_refusal_it_will_repeat_ends_the_copy():
    m, _ = mirror(FakeDest([PermissionDenied()]))
    with pytest.raises(PermissionDenied):
        m._apply([Op.put(b"dst/a", b"1")])


def test_ctrl_c_while_waiting_for_the_destination():
    stop = threading.Event()
    stop.set()
    m, _ = mirror(FakeDest([Unavailable()] * 100), stop)
    with pytest.raises(Interrupted):
        m._apply([Op.put(b"dst/a", b"1")])
