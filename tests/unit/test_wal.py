"""The consensus WAL: round trips, suffix replacement, compaction, reopen, atomic batches."""

import msgpack
import pytest

from actors.consensus.raft import Entry, HardState, SnapshotMeta
from actors.consensus.wal import WAL, index_key


def ents(lo, hi, term=1, prefix=b"d"):
    return [Entry(term, i, 0, prefix + str(i).encode()) for i in range(lo, hi + 1)]


@pytest.fixture
def wal(tmp_path):
    w = WAL(str(tmp_path / "wal"))
    yield w
    w.close()


def test_empty_load(wal):
    assert wal.load() == (HardState(), SnapshotMeta(), [])


def test_save_load_round_trip(wal):
    wal.save(HardState(2, 1, 3), ents(1, 5), sync=True)
    hs, snap, es = wal.load()
    assert hs == HardState(2, 1, 3) and snap == SnapshotMeta()
    assert es == ents(1, 5)
    wal.save(HardState(2, 1, 5), [], sync=False)  # hard state only
    assert wal.load()[0] == HardState(2, 1, 5)
    wal.save(None, ents(6, 7), sync=False)  # entries only
    hs, _, es = wal.load()
    assert hs == HardState(2, 1, 5) and [e.index for e in es] == list(range(1, 8))


def test_suffix_replacement(wal):
    wal.save(HardState(1, 1, 0), ents(1, 10), sync=True)
    wal.save(HardState(2, 2, 0), ents(4, 5, term=2, prefix=b"n"), sync=True)
    _, _, es = wal.load()
    assert es == ents(1, 3) + ents(4, 5, term=2, prefix=b"n")
    assert wal.last_index() == 5


def test_gap_is_a_bug(wal):
    wal.save(None, ents(1, 3), sync=False)
    with pytest.raises(AssertionError):
        wal.save(None, ents(5, 6), sync=False)


def test_compaction(wal):
    wal.save(HardState(3, 1, 8), ents(1, 10, term=3), sync=True)
    wal.compact(6, 3)
    hs, snap, es = wal.load()
    assert snap == SnapshotMeta(6, 3)
    assert [e.index for e in es] == [7, 8, 9, 10]
    # Rewriting below the compaction point is ignored; the rest is applied.
    wal.save(None, ents(5, 11, term=3), sync=False)
    assert [e.index for e in wal.load()[2]] == [7, 8, 9, 10, 11]
    wal.compact(11, 3)
    _, snap, es = wal.load()
    assert snap == SnapshotMeta(11, 3) and es == []
    wal.save(None, ents(12, 12, term=4), sync=False)
    assert [e.index for e in wal.load()[2]] == [12]


def test_reopen_after_close(tmp_path):
    path = str(tmp_path / "w")
    w = WAL(path)
    w.save(HardState(5, 2, 4), ents(1, 6, term=5), sync=True)
    w.compact(2, 5)
    w.close()
    w.close()  # idempotent
    w2 = WAL(path)  # the lock was released
    try:
        hs, snap, es = w2.load()
        assert hs == HardState(5, 2, 4) and snap == SnapshotMeta(2, 5)
        assert [e.index for e in es] == [3, 4, 5, 6] and w2.last_index() == 6
        w2.save(None, ents(7, 7, term=5), sync=True)
    finally:
        w2.close()


def test_crash_between_writes_leaves_no_torn_state(tmp_path, monkeypatch):
    """A save is one WriteBatch: if the write fails nothing of it is visible."""
    path = str(tmp_path / "w")
    w = WAL(path)
    w.save(HardState(1, 1, 2), ents(1, 5), sync=True)
    calls = []
    real_write = type(w._db).write

    class Boom(Exception):
        pass

    class FakeDb:
        def __init__(self, db):
            self._db = db

        def write(self, wb, wo=None):
            calls.append(wb.len())
            raise Boom()  # "crash" before the batch reaches RocksDB

        def __getattr__(self, name):
            return getattr(self._db, name)

    real = w._db
    w._db = FakeDb(real)
    with pytest.raises(Boom):
        w.save(HardState(2, 2, 3), ents(3, 8, term=2, prefix=b"x"), sync=True)
    w._db = real
    # The batch held the range delete, the puts and the hard state together.
    assert calls == [1 + 6 + 1]
    w.close()
    w2 = WAL(path)
    try:
        hs, _, es = w2.load()
        assert hs == HardState(1, 1, 2) and es == ents(1, 5)
    finally:
        w2.close()
    assert real_write is not None


def test_layout(wal):
    wal.save(HardState(1, 1, 1), [Entry(1, 1, 0, b"abc")], sync=False)
    assert index_key(1) == b"\x00" * 7 + b"\x01"
    assert msgpack.unpackb(wal._log.get(index_key(1))) == [1, 0, b"abc"]


def test_shell_loop_with_wal_survives_restart(tmp_path):
    """The documented shell loop over a real WAL; restart rebuilds the node from disk."""
    import random

    from actors.consensus.raft import Config, MemoryStorage, RawNode, StateType

    path = str(tmp_path / "node")

    def boot():
        w = WAL(path)
        hs, snap, es = w.load()
        st = MemoryStorage(hs, snap, es)
        node = RawNode(Config(id=1, voters=[1], rng=random.Random(0)), st)
        return w, st, node

    def loop(w, st, node, applied):
        while node.has_ready():
            rd = node.ready()
            w.save(rd.hard_state, rd.entries, sync=rd.must_sync)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            st.append(rd.entries)
            applied.extend(e.data for e in rd.committed_entries if e.data)
            node.advance(rd)

    w, st, node = boot()
    applied = []
    node.campaign()
    loop(w, st, node, applied)
    for k in range(20):
        node.propose(b"v%d" % k)
    loop(w, st, node, applied)
    assert applied == [b"v%d" % k for k in range(20)]
    w.compact(10, st.term(10))
    st.compact(10)
    w.close()

    w, st, node = boot()
    try:
        assert node.status().raft_state == StateType.FOLLOWER
        assert (node.status().term, node.status().commit, node.status().last_index) == (1, 21, 21)
        replayed = []
        loop(w, st, node, replayed)
        assert replayed == [b"v%d" % k for k in range(9, 20)]  # entries after the compaction
        node.campaign()
        node.propose(b"after")
        loop(w, st, node, replayed)
        assert replayed[-1] == b"after" and node.status().term == 2
    finally:
        w.close()
