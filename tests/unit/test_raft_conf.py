"""Membership changes in the Raft core: learners, single-step conf changes applied on
apply (etcd ApplyConfChange), one at a time, removing the leader, conf state in snapshots."""

from __future__ import annotations

import random

import pytest

from actors.consensus.raft import (Config, ConfChange, ConfChangeRefused, ConfChangeType, EntryType,
                                   MemoryStorage, Message, MessageType, RawNode, SnapshotMeta, StateType)
from raftnet import Network

CC = ConfChangeType


class ConfNetwork(Network):
    """The test network, with a shell that applies committed conf changes (as the actor does)
    and members that can be added at runtime (messages to members not started yet are lost)."""

    def __init__(self, ids: list[int], seed: int = 0, **kw) -> None:
        super().__init__(ids, seed=seed, strict=False, **kw)

    def on_committed(self, i: int, entry) -> None:
        if entry.type == EntryType.CONF_CHANGE:
            self.nodes[i].apply_conf_change(ConfChange.from_bytes(entry.data))

    def add_node(self, i: int, voters: list[int], learners: list[int]) -> None:
        self.ids.append(i)
        self.applied[i] = []
        self.read_states[i] = []
        self.storages[i] = MemoryStorage()
        self.nodes[i] = RawNode(Config(id=i, voters=voters, learners=learners,
                                       rng=random.Random(i)), self.storages[i])


def leader_of(net: Network) -> int:
    leads = [i for i in net.ids if i not in net.down and net.nodes[i].raft.state == StateType.LEADER]
    assert len(leads) == 1, leads
    return leads[0]


def elect(net: Network, i: int = 1) -> None:
    net.nodes[i].campaign()
    net.deliver()
    assert net.nodes[i].raft.state == StateType.LEADER


def change(net: Network, lead: int, t: ConfChangeType, node: int) -> None:
    net.nodes[lead].propose_conf_change(ConfChange(t, node, b"ctx"))
    net.deliver()


def heartbeats(net: Network, lead: int, n: int = 3) -> None:
    """A few heartbeat rounds: probes paused by a lost message resume, commit spreads."""
    for _ in range(n):
        net.nodes[lead].tick()
        net.deliver()


def put(net: Network, lead: int, data: bytes) -> None:
    net.nodes[lead].propose(data)
    net.deliver()


def data_of(net: Network, i: int) -> list[bytes]:
    return [e.data for e in net.applied[i] if e.type == EntryType.NORMAL and e.data]


def test_conf_change_and_snapshot_meta_wire_round_trip():
    cc = ConfChange(CC.ADD_LEARNER_NODE, 7, b"meta")
    assert ConfChange.from_bytes(cc.to_bytes()) == cc
    for bad in (b"", b"\x93\x09\x07\xc4\x00", b"\x93\x00\x00\xc4\x00", b"\xc1"):
        with pytest.raises(ValueError):
            ConfChange.from_bytes(bad)
    meta = SnapshotMeta(5, 2, [1, 2], [3], b"members")
    assert SnapshotMeta.from_wire(meta.to_wire()) == meta
    assert SnapshotMeta.from_wire([5, 2, [1]]) == SnapshotMeta(5, 2, [1])  # older peers
    with pytest.raises(ValueError):
        SnapshotMeta.from_wire([5, 2, [1], [1], b""])  # voter and learner at once
    # A CONF_CHANGE entry travels in APP messages.
    m = Message(MessageType.APP, 2, 1, term=1, entries=[], commit=0)
    m.entries = [type(m).from_wire([3, 2, 1, 1, 0, 0, [[1, 1, 1, cc.to_bytes()]], 0, 0, 0, b""]).entries[0]]
    assert m.entries[0].type == EntryType.CONF_CHANGE


def test_learner_replicates_but_never_votes_or_campaigns():
    net = ConfNetwork([1, 2, 3], seed=1)
    elect(net)
    change(net, 1, CC.ADD_LEARNER_NODE, 4)
    net.add_node(4, voters=[1, 2, 3], learners=[4])
    put(net, 1, b"a")
    heartbeats(net, 1)
    assert data_of(net, 4) == [b"a"]  # replicated to the learner
    assert net.nodes[1].raft.prs.learners == [4]
    # The learner's acks do not make a quorum: with two voters cut off nothing commits.
    net.isolate(2)
    net.isolate(3)
    commit = net.nodes[1].raft.log.committed
    net.nodes[1].propose(b"b")
    net.deliver()
    assert net.nodes[1].raft.log.committed == commit
    net.heal()
    net.deliver()
    # A learner never campaigns, however long it does not hear from a leader.
    net.isolate(4)
    for _ in range(100):
        net.nodes[4].tick()
        net.deliver()
    assert net.nodes[4].raft.state == StateType.FOLLOWER and net.nodes[4].raft.term == net.nodes[1].raft.term


def test_promote_learner_then_it_counts_in_quorum():
    net = ConfNetwork([1], seed=2)
    elect(net)
    change(net, 1, CC.ADD_LEARNER_NODE, 2)
    net.add_node(2, voters=[1], learners=[2])
    put(net, 1, b"x")
    heartbeats(net, 1)
    change(net, 1, CC.ADD_NODE, 2)
    heartbeats(net, 1)
    assert net.nodes[1].raft.prs.voters == [1, 2] and net.nodes[2].raft.prs.voters == [1, 2]
    assert net.nodes[2].raft.promotable()
    # Quorum is now 2 of 2: with 2 cut off, nothing commits.
    net.isolate(2)
    commit = net.nodes[1].raft.log.committed
    net.nodes[1].propose(b"y")
    net.deliver()
    assert net.nodes[1].raft.log.committed == commit


def test_one_conf_change_at_a_time():
    net = ConfNetwork([1, 2, 3], seed=3)
    elect(net)
    net.nodes[1].propose_conf_change(ConfChange(CC.ADD_LEARNER_NODE, 4, b""))
    with pytest.raises(ConfChangeRefused):
        net.nodes[1].propose_conf_change(ConfChange(CC.ADD_LEARNER_NODE, 5, b""))
    net.deliver()  # committed and applied: the next one may go
    net.nodes[1].propose_conf_change(ConfChange(CC.REMOVE_NODE, 4, b""))
    net.deliver()
    assert net.nodes[1].raft.prs.learners == []


def test_new_leader_waits_for_conf_changes_in_its_log():
    net = ConfNetwork([1, 2, 3], seed=4, pre_vote=False, check_quorum=False)
    elect(net)
    net.cut(1, 3)
    net.nodes[1].propose_conf_change(ConfChange(CC.ADD_LEARNER_NODE, 4, b""))
    net.process(1)
    net.queue.clear()  # the entry stays only in node 1's log
    net.heal()
    net.isolate(1)
    elect(net, 2)
    st = net.nodes[2].status()
    assert st.pending_conf_index == st.last_index - 1  # everything before its empty entry
    net.deliver()
    net.nodes[2].propose_conf_change(ConfChange(CC.ADD_LEARNER_NODE, 5, b""))  # applied by now


def test_remove_follower_shrinks_quorum():
    net = ConfNetwork([1, 2, 3], seed=5)
    elect(net)
    change(net, 1, CC.REMOVE_NODE, 3)
    assert net.nodes[1].raft.prs.voters == [1, 2] and 3 not in net.nodes[1].raft.prs.progress
    net.down.add(3)
    put(net, 1, b"z")
    assert data_of(net, 2)[-1] == b"z"
    # Removing a member that is not there, or the last voter, changes nothing.
    assert net.nodes[1].apply_conf_change(ConfChange(CC.REMOVE_NODE, 9)).voters == [1, 2]


def test_removed_leader_hands_over_at_once_and_steps_down():
    net = ConfNetwork([1, 2, 3], seed=6)
    elect(net)
    put(net, 1, b"before")
    change(net, 1, CC.REMOVE_NODE, 1)
    assert net.nodes[1].raft.state == StateType.FOLLOWER
    assert not net.nodes[1].raft.promotable()
    new = leader_of(net)  # elected through TIMEOUT_NOW, no election timeout needed
    assert new in (2, 3)
    assert all(net.nodes[i].raft.prs.voters == [2, 3] for i in (2, 3))
    net.down.add(1)
    put(net, new, b"after")
    assert data_of(net, 2)[-1] == data_of(net, 3)[-1] == b"after"
    # The removed member never campaigns again.
    net.down.discard(1)
    for _ in range(50):
        net.nodes[1].tick()
    assert net.nodes[1].raft.state == StateType.FOLLOWER


def test_snapshot_carries_the_membership():
    net = ConfNetwork([1, 2], seed=7)
    elect(net)
    change(net, 1, CC.ADD_LEARNER_NODE, 3)
    for i in range(5):
        put(net, 1, b"%d" % i)
    applied = net.nodes[1].raft.log.applied
    conf = SnapshotMeta(0, 0, [1, 2], [3], b"members")
    for i in (1, 2):
        net.storages[i].compact(applied, conf)
    assert net.storages[1].snapshot().learners == [3]
    # A learner that starts knowing nothing gets the snapshot, and the membership with it.
    net.add_node(3, voters=[1, 2], learners=[3])
    net.nodes[3].raft.prs.set_conf([9], [], 1)  # a wrong idea of the membership
    for _ in range(3):
        net.nodes[1].tick()
        net.deliver()
    assert net.storages[3].snapshot().index == applied
    assert net.nodes[3].raft.prs.voters == [1, 2] and net.nodes[3].raft.prs.learners == [3]
    assert net.storages[3].snapshot().context == b"members"
