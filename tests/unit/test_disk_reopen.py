"""Storage's backend and the consensus WAL on a disk that refuses a read-write open
(issue 12): they open read-only (reads go on), writes raise the disk's error, and
`reopen` gets them writable again once the disk lets it. The disk's refusal is injected
at the read-write open; tests/hostile/test_full_disk.py does it for real on a tmpfs."""
import pytest

from actors.consensus.raft.types import Entry, HardState
from actors.consensus.wal import WAL
from actors.runtime.diskfault import NO_SPACE, disk_error_kind
from actors.storage.backend import RocksBackend

ENOSPC = "IO error: No space left on device: While appending to file: 000009.sst: No space left on device"


@pytest.fixture
def disk(monkeypatch):
    """`disk["full"] = True` makes every read-write open of a backend or WAL fail as
    RocksDB does on a full disk (its recovery flush cannot write)."""
    state = {"full": False}
    for cls in (RocksBackend, WAL):
        orig = cls._open

        def fake(self, read_only, orig=orig):
            if state["full"] and not read_only:
                raise Exception(ENOSPC)
            return orig(self, read_only)

        monkeypatch.setattr(cls, "_open", fake)
    return state


def test_backend_read_only_on_a_full_disk_then_back(tmp_path, disk):
    b = RocksBackend(tmp_path / "db")
    b.write([("key", b"a", b"1"), ("meta", b"m", b"x")], sync=True)
    b.close()
    disk["full"] = True
    with pytest.raises(Exception):
        RocksBackend(tmp_path / "db")  # without the fallback the error is the caller's
    b = RocksBackend(tmp_path / "db", fallback_read_only=True)
    assert b.read_only and disk_error_kind(b.open_error) == NO_SPACE
    assert b.get("key", b"a") == b"1" and list(b.iterate("meta", b"")) == [(b"m", b"x")]
    assert b.get("no_such_family", b"a") is None and list(b.iterate("no_such_family", b"")) == []
    for attempt in (lambda: b.write([("key", b"b", b"2")]), b.sync):
        with pytest.raises(Exception) as exc:
            attempt()
        assert disk_error_kind(exc.value) == NO_SPACE
    with pytest.raises(Exception):
        b.reopen()  # still full: read-only again, still readable
    assert b.read_only and b.get("key", b"a") == b"1"
    disk["full"] = False
    b.reopen()
    assert not b.read_only and b.open_error is None
    b.write([("key", b"b", b"2")], sync=True)
    assert b.get("key", b"b") == b"2" and b.get("key", b"a") == b"1"
    b.close()


def test_wal_read_only_on_a_full_disk_then_back(tmp_path, disk):
    w = WAL(str(tmp_path / "wal"))
    w.save(HardState(1, 1, 2), [Entry(1, 1, 0, b"a"), Entry(1, 2, 0, b"b")], sync=True)
    w.close()
    disk["full"] = True
    w = WAL(str(tmp_path / "wal"))
    assert w.read_only and disk_error_kind(w.open_error) == NO_SPACE
    hs, _snap, entries = w.load()
    assert hs == HardState(1, 1, 2) and [e.data for e in entries] == [b"a", b"b"] and w.last_index() == 2
    with pytest.raises(Exception) as exc:
        w.save(HardState(1, 1, 3), [Entry(1, 3, 0, b"c")], sync=True)
    assert disk_error_kind(exc.value) == NO_SPACE
    assert w.last_index() == 2  # a refused save changes nothing
    with pytest.raises(Exception):
        w.compact(1, 1)
    disk["full"] = False
    w.reopen()
    assert not w.read_only
    w.save(HardState(1, 1, 3), [Entry(1, 3, 0, b"c")], sync=True)  # the held Ready, saved again
    w.close()
    w = WAL(str(tmp_path / "wal"))
    hs, _snap, entries = w.load()
    assert hs.commit == 3 and [e.index for e in entries] == [1, 2, 3]
    w.close()


def test_reopen_of_a_healthy_wal_keeps_everything(tmp_path):
    w = WAL(str(tmp_path / "wal"))
    w.save(HardState(2, 1, 1), [Entry(2, 1, 0, b"x")], sync=True)
    w.reopen()
    assert w.last_index() == 1 and w.load()[2][0].data == b"x"
    w.close()
    w.close()  # twice is fine
