"""Snapshots in the Raft core (etcd's design): the core only handles the metadata (the
leader's compaction point, SnapshotMeta); the shell moves the data. A follower whose
entries were compacted away gets a SNAP, restores its log to it, and catches up by log."""

import random

import msgpack
import pytest

from actors.consensus.raft import (Config, Entry, HardState, MemoryStorage, Message, MessageType,
                                   RawNode, SnapshotMeta, StateType)
from actors.consensus.raft.storage import CompactedError
from raftnet import Network
from actors.consensus.wal import WAL

MT = MessageType


def elect(net, i):
    net.campaign(i)
    assert net.leaders() == [i]
    return net.nodes[i]


def lagging_cluster(n_entries=10, compact_at=8):
    """Leader 1; node 3 was down while 1 and 2 committed and compacted their logs."""
    net = Network([1, 2, 3])
    elect(net, 1)
    net.down.add(3)
    for k in range(n_entries):
        net.propose(1, b"v%d" % k)
    for i in (1, 2):
        net.storages[i].compact(compact_at)
    net.down.discard(3)
    return net


def test_follower_behind_compaction_gets_snapshot_and_catches_up():
    net = lagging_cluster()
    snaps = []
    net.msg_filter = lambda m: snaps.append(m) or True if m.type == MT.SNAP else True
    net.tick_all(3)
    assert [(m.frm, m.to, m.snapshot.index, m.snapshot.term) for m in snaps] == [(1, 3, 8, 1)]
    st3 = net.storages[3]
    assert st3.snapshot().index == 8 and st3.first_index() == 9
    assert net.nodes[3].status().last_index == 11 and net.nodes[3].status().commit == 11
    assert net.nodes[1].status().progress[3][2] == "replicate"
    # The "state machine" moved out of band plus the log after it: nothing lost or doubled.
    assert net.data_applied(3) == [b"v%d" % k for k in range(10)]
    net.propose(1, b"after")
    assert net.data_applied(3)[-1] == b"after"
    assert net.log(3) == net.log(1)[-len(net.log(3)):]


def test_ready_carries_snapshot_before_entries_and_no_old_committed_entries():
    st = MemoryStorage(HardState(1, 0, 2), entries=[Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    n = RawNode(Config(id=2, voters=[1, 2, 3], rng=random.Random(1), applied=2), st)
    meta = SnapshotMeta(20, 3, [1, 2, 3])
    n.step(Message(MT.SNAP, 2, 1, term=4, snapshot=meta))
    assert n.has_ready()
    rd = n.ready()
    assert rd.snapshot == meta and rd.must_sync
    assert rd.hard_state == HardState(4, 0, 20)
    assert rd.entries == [] and rd.committed_entries == []
    assert [(m.type, m.to, m.index, m.reject) for m in rd.messages] == [(MT.APP_RESP, 1, 20,
                                                                         False)]
    st.apply_snapshot(rd.snapshot)
    st.set_hard_state(rd.hard_state)
    n.advance(rd)
    assert not n.has_ready()
    s = n.status()
    assert (s.commit, s.applied, s.last_index, s.lead) == (20, 20, 20, 1)
    assert st.first_index() == 21 and st.last_index() == 20 and st.snapshot() == meta
    # Replication continues from the snapshot.
    n.step(Message(MT.APP, 2, 1, term=4, index=20, log_term=3,
                   entries=[Entry(4, 21, 0, b"x")], commit=21))
    rd = n.ready()
    assert [e.index for e in rd.entries] == [21]
    assert [e.index for e in rd.committed_entries] == [21]
    st.append(rd.entries)
    n.advance(rd)
    assert n.status().applied == 21


def test_snapshot_older_than_commit_is_ignored():
    net = Network([1, 2, 3])
    elect(net, 1)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    n2 = net.nodes[2]
    before = (net.log(2), n2.status().commit)
    n2.step(Message(MT.SNAP, 2, 1, term=1, snapshot=SnapshotMeta(3, 1)))
    rd = n2.ready()
    assert rd.snapshot is None and rd.hard_state is None
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APP_RESP, 6)]
    n2.advance(rd)
    assert (net.log(2), n2.status().commit) == before


def test_snapshot_matching_our_log_fast_forwards_commit():
    st = MemoryStorage(HardState(1, 0, 1), entries=[Entry(1, i) for i in range(1, 6)])
    n = RawNode(Config(id=2, voters=[1, 2, 3], rng=random.Random(1)), st)
    n.step(Message(MT.SNAP, 2, 1, term=1, snapshot=SnapshotMeta(4, 1)))
    rd = n.ready()
    assert rd.snapshot is None and rd.hard_state.commit == 4
    assert [e.index for e in rd.committed_entries] == [1, 2, 3, 4]
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APP_RESP, 4)]
    n.advance(rd)
    assert n.status().last_index == 5  # the log is kept


def test_snapshot_with_conflicting_term_restores():
    st = MemoryStorage(HardState(1, 0, 1), entries=[Entry(1, i) for i in range(1, 6)])
    n = RawNode(Config(id=2, voters=[1, 2, 3], rng=random.Random(1)), st)
    n.step(Message(MT.SNAP, 2, 1, term=2, snapshot=SnapshotMeta(4, 2)))
    rd = n.ready()
    assert rd.snapshot == SnapshotMeta(4, 2)
    st.apply_snapshot(rd.snapshot)
    st.set_hard_state(rd.hard_state)
    n.advance(rd)
    assert n.status().last_index == 4 and st.term(4) == 2


def test_candidate_steps_down_on_snapshot():
    n = RawNode(Config(id=2, voters=[1, 2, 3], rng=random.Random(1), pre_vote=False),
                MemoryStorage())
    n.campaign()
    assert n.status().raft_state == StateType.CANDIDATE and n.status().term == 1
    n.step(Message(MT.SNAP, 2, 1, term=1, snapshot=SnapshotMeta(7, 1)))
    s = n.status()
    assert s.raft_state == StateType.FOLLOWER and s.lead == 1 and s.commit == 7


def test_failed_snapshot_transfer_is_retried():
    net = lagging_cluster()
    leader = net.nodes[1]
    lost = []

    def drop_first_snap(m):
        if m.type == MT.SNAP and not lost:
            lost.append(m)
            return False  # the Network reports the failed transfer to the sender
        return True

    net.msg_filter = drop_first_snap
    net.tick_all(1)
    assert len(lost) == 1
    assert leader.status().progress[3][2] == "probe"
    assert net.nodes[3].status().last_index == 1
    net.tick_all(3)
    assert net.storages[3].snapshot().index == 8
    assert leader.status().progress[3][2] == "replicate"
    assert net.nodes[3].status().commit == 11


def test_pending_snapshot_pauses_appends_but_not_heartbeats():
    net = lagging_cluster()
    leader = net.nodes[1]
    sent = []
    # The transfer never finishes: the shell neither delivers nor reports it.
    net.msg_filter = lambda m: sent.append(m) or m.type != MT.SNAP
    orig = leader.report_snapshot
    leader.report_snapshot = lambda to, ok: None
    net.tick_all(2)
    assert leader.status().progress[3][2] == "snapshot"
    sent.clear()
    net.propose(1, b"x")
    net.tick_all(3)
    to3 = {m.type for m in sent if m.to == 3}
    assert MT.HEARTBEAT in to3 and MT.APP not in to3 and MT.SNAP not in to3
    leader.report_snapshot = orig
    # The peer catches up some other way (here: the log again after a failure report).
    leader.report_snapshot(3, False)
    net.msg_filter = None
    net.tick_all(3)
    assert net.nodes[3].status().commit == leader.status().commit


def test_report_snapshot_ok_waits_for_the_peer():
    net = lagging_cluster()
    leader = net.nodes[1]
    net.msg_filter = lambda m: m.type != MT.SNAP
    leader_report = leader.report_snapshot
    leader.report_snapshot = lambda to, ok: None
    net.tick_all(2)
    assert leader.status().progress[3][2] == "snapshot"
    leader_report(3, True)
    # Probe from just after the snapshot; paused until the peer answers.
    match, next_, state = leader.status().progress[3]
    assert (next_, state) == (9, "probe")
    leader_report(3, True)  # not in SNAPSHOT state any more: no effect
    assert leader.status().progress[3] == (match, next_, state)


def test_restart_after_restore():
    net = lagging_cluster()
    net.tick_all(3)
    assert net.storages[3].snapshot().index == 8
    net.restart(3)
    s = net.nodes[3].status()
    assert (s.commit, s.last_index) == (11, 11)
    net.propose(1, b"after restart")
    assert net.data_applied(3)[-1] == b"after restart"
    # A node restarted from a storage that starts right at a snapshot (empty log).
    st = MemoryStorage(HardState(3, 1, 8), SnapshotMeta(8, 2, [1, 2, 3]))
    n = RawNode(Config(id=1, voters=[1], rng=random.Random(3), applied=8), st)
    assert n.status().commit == 8 and n.status().last_index == 8
    n.campaign()
    rd = n.ready()
    assert rd.entries[0].index == 9 and rd.committed_entries == []
    st.set_hard_state(rd.hard_state) if rd.hard_state else None
    st.append(rd.entries)
    n.advance(rd)
    rd = n.ready()
    assert [e.index for e in rd.committed_entries] == [9]


def test_memory_storage_apply_snapshot():
    st = MemoryStorage(entries=[Entry(1, 1), Entry(1, 2)])
    st.apply_snapshot(SnapshotMeta(10, 3, [1, 2]))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 3)
    assert st.snapshot() == SnapshotMeta(10, 3, [1, 2])
    with pytest.raises(CompactedError):
        st.term(9)
    with pytest.raises(CompactedError):
        st.apply_snapshot(SnapshotMeta(10, 3))
    st.append([Entry(3, 11)])
    st.compact(11)
    assert st.snapshot() == SnapshotMeta(11, 3, [1, 2])  # membership is kept


# --- wire ---------------------------------------------------------------------------------
def test_snap_round_trip():
    m = Message(MT.SNAP, 3, 1, term=5, snapshot=SnapshotMeta(100, 4, [1, 2, 3]))
    wire = msgpack.unpackb(msgpack.packb(m.to_wire()))
    assert len(wire) == 12
    assert Message.from_wire(wire) == m
    # Other messages keep the 11-field layout.
    assert len(Message(MT.HEARTBEAT, 2, 1, term=1).to_wire()) == 11


SNAP_BAD = [
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b""],  # SNAP without a snapshot
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", None],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2]],  # short
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, [], 0]],  # long
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [0, 2, []]],  # index 0
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 0, []]],  # term 0
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 4, []]],  # snapshot term above message term
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [-5, 2, []]],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [1 << 64, 2, []]],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2.0, []]],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, [0]]],  # voter 0
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, [1, 1]]],  # duplicate voter
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, ["a"]]],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, "voters"]],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", b"snap"],
    [15, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", {}],
    [15, 2, 1, 0, 0, 0, [], 0, 0, 0, b"", [5, 0, []]],  # no term
    [15, 2, 1, 3, 0, 0, [[3, 1, 0, b""]], 0, 0, 0, b"", [5, 2, []]],  # entries on SNAP
    [9, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, []]],  # snapshot on HEARTBEAT
    [3, 2, 1, 3, 0, 0, [], 0, 0, 0, b"", [5, 2, []]],  # snapshot on APP
]


@pytest.mark.parametrize("obj", SNAP_BAD)
def test_snap_garbage_rejected(obj):
    with pytest.raises(ValueError):
        Message.from_wire(obj)


def test_random_snap_garbage_only_raises_value_error():
    rng = random.Random(11)
    atoms = [0, 1, 2, 3, -1, 1 << 70, b"", b"x", "s", None, True, 1.5, [], {}, [1, 2]]
    base = Message(MT.SNAP, 3, 1, term=5, snapshot=SnapshotMeta(100, 4, [1, 2, 3])).to_wire()
    for _ in range(3000):
        obj = list(base)
        obj[11] = list(obj[11])
        for _ in range(rng.randrange(1, 4)):
            if rng.random() < 0.6 and isinstance(obj[11], list) and len(obj[11]) == 3:
                i = rng.randrange(3)
                obj[11][i] = rng.choice(atoms + [[rng.choice(atoms) for _ in range(3)]])
            else:
                i = rng.randrange(len(obj))
                obj[i] = rng.choice(atoms)
        try:
            m = Message.from_wire(obj)
        except ValueError:
            continue
        # Whatever decodes must be steppable without crashing the core.
        n = RawNode(Config(id=m.to if m.to else 3, voters=[1, 2, 3], rng=random.Random(1)),
                    MemoryStorage())
        try:
            n.step(m)
        except ValueError:
            pass


def test_step_rejects_snap_without_snapshot():
    n = RawNode(Config(id=2, voters=[1, 2, 3], rng=random.Random(1)), MemoryStorage())
    with pytest.raises(ValueError):
        n.step(Message(MT.SNAP, 2, 1, term=1))
    with pytest.raises(ValueError):
        n.step(Message(MT.HEARTBEAT, 2, 1, term=1, snapshot=SnapshotMeta(3, 1)))


# --- WAL ----------------------------------------------------------------------------------
def test_wal_persists_a_restored_snapshot(tmp_path):
    w = WAL(str(tmp_path / "wal"))
    try:
        w.save(HardState(1, 1, 3), [Entry(1, i, 0, b"d") for i in range(1, 6)], sync=True)
        meta = SnapshotMeta(20, 2, [1, 2, 3])
        w.save(HardState(3, 0, 20), [Entry(3, 21, 0, b"n")], sync=True, snapshot=meta)
        assert w.last_index() == 21
        w.close()
        w = WAL(str(tmp_path / "wal"))
        hs, snap, es = w.load()
        assert hs == HardState(3, 0, 20) and snap == meta
        assert es == [Entry(3, 21, 0, b"n")]
        st = MemoryStorage(hs, snap, es)
        assert (st.first_index(), st.last_index()) == (21, 21)
        w.compact(21, 3)
        assert w.load()[1] == SnapshotMeta(21, 3, [1, 2, 3])
    finally:
        w.close()
