"""Leadership transfer (Raft thesis 3.10; etcd TRANSFER_LEADER / TIMEOUT_NOW)."""

import pytest

from actors.consensus.raft import MessageType, ProposalDropped, StateType
from raftnet import Network

MT = MessageType
L, F = StateType.LEADER, StateType.FOLLOWER


def elect(net, i):
    net.campaign(i)
    assert net.leaders() == [i]
    return net.nodes[i]


def test_transfer_to_up_to_date_follower():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.propose(1, b"x")
    leader.transfer_leader(2)
    net.deliver()
    assert net.leaders() == [2] and net.term(2) == 2
    assert net.nodes[1].status().lead == 2 and net.nodes[3].status().lead == 2
    net.propose(2, b"y")
    assert net.data_applied(1) == [b"x", b"y"]


def test_transfer_bypasses_follower_lease_and_pre_vote():
    net = Network([1, 2, 3], pre_vote=True, check_quorum=True)
    leader = elect(net, 1)
    leader.transfer_leader(3)
    net.deliver()
    assert net.leaders() == [3]
    assert not any(m.type == MT.PRE_VOTE for m in net.delivered[-20:])


def test_transfer_to_lagging_follower_catches_it_up_first():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.down.add(3)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    net.down.discard(3)
    leader.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        leader.propose(b"during transfer")
    net.deliver()
    assert net.leaders() == [3]
    assert net.data_applied(3) == [b"v%d" % k for k in range(5)]


def test_transfer_forwarded_by_follower():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.nodes[2].transfer_leader(3)
    net.deliver()
    assert net.leaders() == [3]


def test_transfer_aborted_after_election_timeout():
    net = Network([1, 2, 3], election_tick=10)
    leader = elect(net, 1)
    net.down.add(3)
    leader.transfer_leader(3)
    net.deliver()
    assert leader.status().lead_transferee == 3
    with pytest.raises(ProposalDropped):
        leader.propose(b"x")
    net.tick_all(10)
    assert leader.status().lead_transferee == 0 and net.leaders() == [1]
    net.propose(1, b"x")
    assert net.data_applied(2) == [b"x"]


def test_transfer_to_self_or_unknown_is_noop():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    leader.transfer_leader(1)
    leader.transfer_leader(9)
    net.deliver()
    assert net.leaders() == [1] and leader.status().lead_transferee == 0
    net.propose(1, b"ok")


def test_new_transfer_replaces_pending_one():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.down.add(3)
    leader.transfer_leader(3)
    net.deliver()
    net.down.discard(3)
    leader.transfer_leader(2)
    net.deliver()
    assert net.leaders() == [2]
