"""Fixtures shared by the unit tests: the fake gateway and a client on it, and the
MVCC store's two backends."""
from __future__ import annotations

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MemoryBackend


@pytest.fixture
def srv():
    """The in-process fake gateway (tests/fakeserver.py)."""
    from fakeserver import FakeServer

    with FakeServer() as s:
        yield s


@pytest.fixture
def client(srv, make_client):
    """A client on the fake gateway, of each kind in turn (tests/conftest.py ``client_kind``:
    the threaded Client, then the AsyncClient through tests/aioclient.py)."""
    return make_client([srv.endpoint], timeout=3.0)


@pytest.fixture(params=["memory", "rocks"])
def kv_backend(request, tmp_path):
    """make(previous backend or None) -> a backend; "rocks" reopens the same files."""
    opened = []

    def make(prev):
        if request.param == "memory":
            return prev if prev is not None else MemoryBackend()
        if prev is not None:
            prev.close()
        be = RocksBackend(tmp_path / "db")
        opened.append(be)
        return be

    yield make
    for be in opened:
        be.close()
