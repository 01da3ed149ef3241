"""The ordered Backend contract, on MemoryBackend and RocksBackend alike."""
from __future__ import annotations

import ast
import pathlib

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MemoryBackend

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "rocks"])
def backend(request, tmp_path):
    be = MemoryBackend() if request.param == "memory" else RocksBackend(tmp_path / "db")
    yield be
    be.close()


def _fill(be):
    be.write([("a", bytes([i]), b"v%d" % i) for i in (5, 1, 3, 0, 9, 7)])
    be.write([("b", b"x", b"other-cf")])


def test_get_put_delete(backend):
    assert backend.get("a", b"k") is None
    backend.write([("a", b"k", b"1"), ("a", b"k", b"2"), ("b", b"k", b"3")])
    assert backend.get("a", b"k") == b"2"
    assert backend.get("b", b"k") == b"3"
    backend.write([("a", b"k", None)], sync=True)
    assert backend.get("a", b"k") is None
    backend.write([("a", b"missing", None)])
    backend.write([])


def test_iterate_bounds_and_order(backend):
    _fill(backend)
    keys = lambda **kw: [k[0] for k, _ in backend.iterate("a", **kw)]  # noqa: E731
    assert keys(start=b"") == [0, 1, 3, 5, 7, 9]
    assert keys(start=b"\x01", end=b"\x07") == [1, 3, 5]
    assert keys(start=b"\x02", end=b"\x07", reverse=True) == [5, 3]
    assert keys(start=b"\x01", end=b"\x07", reverse=True) == [5, 3, 1]
    assert keys(start=b"\x00", reverse=True) == [9, 7, 5, 3, 1, 0]
    assert keys(start=b"\x06", end=b"\x06") == []
    assert keys(start=b"\x08", end=b"\x02") == []
    assert keys(start=b"\x0a") == []
    assert list(backend.iterate("empty", b"")) == []
    assert list(backend.iterate("b", b"")) == [(b"x", b"other-cf")]


def test_size_bytes(backend):
    _fill(backend)
    assert backend.size_bytes() >= 0


def test_rocks_reopen_keeps_data_and_releases_lock(tmp_path):
    be = RocksBackend(tmp_path / "db")
    be.write([("key", b"a", b"1"), ("custom", b"b", b"2")], sync=True)
    be.flush_wal(sync=True)
    be.sync()
    it = be.iterate("key", b"")
    next(it)
    be.close()
    be2 = RocksBackend(tmp_path / "db")  # would fail if the lock were still held
    assert be2.get("key", b"a") == b"1"
    assert be2.get("custom", b"b") == b"2"
    be2.close()


def test_memory_backend_write_is_atomic_on_failure():
    be = MemoryBackend()
    be.fail_next_write = True
    with pytest.raises(IOError):
        be.write([("a", b"k", b"v")])
    assert be.get("a", b"k") is None


def test_pure_modules_import_no_io():
    forbidden = {"rocksdict", "zmq", "time", "os", "socket"}
    paths = list((ROOT / "actors/storage/mvcc").glob("*.py")) + [ROOT / "protocol/requests.py"]
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
