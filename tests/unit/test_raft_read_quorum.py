"""Pre-vote, check-quorum (leader step-down and follower lease), ReadIndex (paper 6.4 of
the Raft thesis; etcd's readOnly queue)."""

import pytest

from actors.consensus.raft import Message, MessageType, ProposalDropped, StateType
from raftnet import Network

MT = MessageType
L, F = StateType.LEADER, StateType.FOLLOWER


def elect(net, i):
    net.campaign(i)
    assert net.leaders() == [i]
    return net.nodes[i]


# --- pre-vote ------------------------------------------------------------------------------
def test_pre_vote_partitioned_node_does_not_raise_term_or_disrupt():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.isolate(3)
    net.tick(3, 100)
    net.deliver()
    assert net.term(3) == 1  # pre-votes never reached a quorum: term unchanged
    assert net.state(3) == StateType.PRE_CANDIDATE
    net.heal()
    net.tick_all(3)
    assert net.leaders() == [1] and net.term(1) == 1
    assert net.state(3) == F and net.nodes[3].status().lead == 1


def test_without_pre_vote_partitioned_node_raises_term_and_disrupts():
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    elect(net, 1)
    net.isolate(3)
    net.tick(3, 100)
    net.deliver()
    assert net.term(3) > 1
    net.heal()
    net.tick_all(30)
    # Its next election's higher term forces the old leader to step down.
    assert net.term(1) > 1


def test_pre_vote_rejected_for_stale_log():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.isolate(3)
    net.propose(1, b"x")
    net.heal()
    net.down.add(1)
    net.nodes[3].campaign()
    net.deliver()
    assert net.state(3) == F or net.state(3) == StateType.PRE_CANDIDATE
    assert net.term(3) == 1 and net.term(2) == 1


# --- check-quorum --------------------------------------------------------------------------
def test_check_quorum_leader_steps_down_when_isolated():
    net = Network([1, 2, 3], election_tick=10)
    elect(net, 1)
    net.isolate(1)
    for _ in range(9):
        net.tick(1)
    net.deliver()
    assert net.state(1) == L
    net.tick(1, 11)
    net.deliver()
    assert net.state(1) == F and net.nodes[1].status().lead == 0
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"x")


def test_check_quorum_leader_stays_with_quorum():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.down.add(3)
    net.tick_all(50)
    assert net.leaders() == [1]


def test_follower_in_lease_ignores_higher_term_vote():
    net = Network([1, 2, 3], pre_vote=False)
    elect(net, 1)
    net.nodes[2].step(Message(MT.VOTE, 2, 3, term=5, index=9, log_term=4))
    rd_msgs = net.nodes[2].ready()
    assert rd_msgs.messages == [] and net.term(2) == 1  # ignored, term unchanged
    net.nodes[2].advance(rd_msgs)


def test_follower_out_of_lease_grants_vote():
    net = Network([1, 2, 3], pre_vote=False)
    elect(net, 1)
    net.down.add(1)
    net.tick(2, 10)  # a whole election timeout without hearing from the leader
    net.nodes[2].step(Message(MT.VOTE, 2, 3, term=5, index=9, log_term=4))
    assert net.term(2) == 5


def test_stale_leader_learns_new_term_from_app_resp():
    net = Network([1, 2, 3], check_quorum=False)
    elect(net, 1)
    net.isolate(1)
    net.nodes[2].campaign()
    net.deliver()
    net.heal()
    net.deliver()
    assert net.state(1) == L and net.term(1) == 1  # it does not know yet
    net.nodes[1].propose(b"stale")
    net.deliver()
    assert net.state(1) == F and net.term(1) == 2
    assert all(b"stale" not in net.data_applied(i) for i in net.ids)


# --- ReadIndex -----------------------------------------------------------------------------
def test_read_index_on_leader_after_heartbeat_quorum():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.propose(1, b"x")
    net.down.update({2, 3})
    leader.read_index(b"r1")
    net.deliver()
    assert net.read_states[1] == []  # no quorum ack yet
    net.down.discard(2)
    leader.read_index(b"r2")
    net.deliver()
    got = [(r.index, r.request_ctx) for r in net.read_states[1]]
    # r1's heartbeats were lost; the quorum ack for r2 confirms r1 too (queue order).
    assert got == [(2, b"r1"), (2, b"r2")]
    net.tick_all(1)  # the next heartbeat carries the last pending ctx; nothing is pending
    assert len(net.read_states[1]) == 2


def test_read_index_batch_confirmed_by_one_round():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.msg_filter = lambda m: m.type != MT.HEARTBEAT_RESP
    for k in range(5):
        leader.read_index(b"r%d" % k)
    net.deliver()
    assert net.read_states[1] == []
    net.msg_filter = None
    leader.read_index(b"last")
    net.deliver()
    ctxs = [r.request_ctx for r in net.read_states[1]]
    assert ctxs == [b"r0", b"r1", b"r2", b"r3", b"r4", b"last"]
    assert all(r.index == 1 for r in net.read_states[1])


def test_read_index_waits_for_commit_in_current_term():
    net = Network([1, 2, 3])
    net.msg_filter = lambda m: m.type != MT.APP_RESP
    net.campaign(1)
    leader = net.nodes[1]
    assert net.leaders() == [1] and leader.status().commit == 0
    leader.read_index(b"early")
    net.deliver()
    assert net.read_states[1] == []
    net.msg_filter = None
    net.tick_all(2)
    assert [(r.index, r.request_ctx) for r in net.read_states[1]] == [(1, b"early")]


def test_read_index_on_follower_forwarded_to_leader():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.propose(1, b"x")
    net.nodes[3].read_index(b"f1")
    net.nodes[3].read_index(b"f2")
    net.deliver()
    assert [(r.index, r.request_ctx) for r in net.read_states[3]] == [(2, b"f1"), (2, b"f2")]
    assert net.read_states[1] == []


def test_read_index_isolated_leader_never_confirms():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.isolate(1)
    leader.read_index(b"r")
    net.deliver()
    net.tick(1, 5)
    net.deliver()
    assert net.read_states[1] == []


def test_read_index_on_follower_without_leader_dropped():
    net = Network([1, 2, 3])
    with pytest.raises(ProposalDropped):
        net.nodes[2].read_index(b"x")


def test_read_index_single_voter_in_network():
    net = Network([1])
    leader = elect(net, 1)
    leader.read_index(b"r")
    net.deliver()
    assert [(r.index, r.request_ctx) for r in net.read_states[1]] == [(1, b"r")]
