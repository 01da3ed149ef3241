"""Raft with 3-5 voters on a hand-driven network: elections (paper 5.2), log replication
(5.3), the commit rule for previous-term entries (5.4.2, figure 8), leader completeness
(5.4.1), fast log back-off, flow control and batching, restart."""

import pytest

from actors.consensus.raft import (Entry, HardState, MemoryStorage, Message, MessageType,
                                   ProposalDropped, StateType)
from raftnet import Network

MT = MessageType
L, F = StateType.LEADER, StateType.FOLLOWER


def elect(net, i):
    net.campaign(i)
    assert net.leaders() == [i]
    return net.nodes[i]


def log_of(terms):
    return [Entry(t, i + 1, 0, b"e%d" % (i + 1)) for i, t in enumerate(terms)]


def assert_logs_match(net, ids=None):
    ids = ids or net.ids
    logs = [net.log(i) for i in ids]
    assert all(lg == logs[0] for lg in logs), logs


# --- 5.2 leader election ----------------------------------------------------------------
def test_campaign_wins_with_pre_vote_without_extra_term():
    net = Network([1, 2, 3])
    elect(net, 1)
    for i in (1, 2, 3):
        assert net.term(i) == 1
        assert net.nodes[i].status().lead == 1
    assert net.state(2) == F and net.state(3) == F
    # The new leader's empty entry is replicated and committed everywhere.
    assert all(net.nodes[i].status().commit == 1 for i in (1, 2, 3))


@pytest.mark.parametrize("pre_vote", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_ticks_elect_exactly_one_leader(seed, pre_vote):
    net = Network([1, 2, 3, 4, 5], seed=seed, pre_vote=pre_vote)
    for _ in range(100):
        net.tick_all()
        if net.leaders():
            break
    assert len(net.leaders()) == 1
    lead = net.leaders()[0]
    net.tick_all(5)
    assert net.leaders() == [lead]
    assert all(net.nodes[i].status().lead == lead for i in net.ids)


def test_candidate_loses_without_quorum_and_retries():
    net = Network([1, 2, 3], pre_vote=False)
    net.isolate(1)
    net.campaign(1)
    assert net.state(1) == StateType.CANDIDATE and net.term(1) == 1
    net.tick(1, 40)
    net.deliver()
    assert net.state(1) == StateType.CANDIDATE and net.term(1) >= 2


def test_one_vote_per_term():
    net = Network([1, 2, 3], pre_vote=False)
    net.nodes[2].step(Message(MT.VOTE, 2, 1, term=1, index=0, log_term=0))
    net.nodes[2].step(Message(MT.VOTE, 2, 3, term=1, index=0, log_term=0))
    rd = net.nodes[2].ready()
    resp = {m.to: m.reject for m in rd.messages}
    assert resp == {1: False, 3: True}
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync


def test_split_vote_resolved_by_randomised_timeouts():
    net = Network([1, 2, 3, 4], seed=3)
    for _ in range(200):
        net.tick_all()
        if net.leaders():
            break
    assert len(net.leaders()) == 1


# --- 5.3 log replication ----------------------------------------------------------------
def test_replication_and_commit():
    net = Network([1, 2, 3])
    elect(net, 1)
    for k in range(10):
        net.propose(1, b"v%d" % k)
    for i in (1, 2, 3):
        assert net.data_applied(i) == [b"v%d" % k for k in range(10)]
        assert net.nodes[i].status().commit == 11
    assert_logs_match(net)


def test_commit_with_one_follower_down():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.down.add(3)
    net.propose(1, b"x")
    assert net.data_applied(1) == [b"x"] and net.data_applied(2) == [b"x"]
    net.down.discard(3)
    net.tick_all(3)  # heartbeats reveal the lag; the leader catches 3 up
    assert net.data_applied(3) == [b"x"]
    assert_logs_match(net)


def test_no_commit_without_quorum():
    net = Network([1, 2, 3])
    elect(net, 1)
    net.down.update({2, 3})
    net.propose(1, b"x")
    assert net.nodes[1].status().commit == 1
    assert net.data_applied(1) == []


def test_propose_on_follower_and_candidate_dropped():
    net = Network([1, 2, 3])
    elect(net, 1)
    with pytest.raises(ProposalDropped):
        net.nodes[2].propose(b"x")
    net.isolate(3)
    net.tick(3, 40)
    net.deliver()
    assert net.state(3) == StateType.PRE_CANDIDATE
    with pytest.raises(ProposalDropped):
        net.nodes[3].propose(b"x")


def test_leader_counts_own_log_only_when_persisted():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    leader.propose(b"x")
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    # Deliver the APPs and the followers' acks before the leader has advanced.
    net.storages[1].append(rd.entries)
    for m in rd.messages:
        net.nodes[m.to].step(Message.from_wire(m.to_wire()))
    for f in (2, 3):
        frd = net.nodes[f].ready()
        net.storages[f].append(frd.entries)
        for m in frd.messages:
            leader.step(m)
        net.nodes[f].advance(frd)
    assert leader.status().commit == 2  # two followers persisted: a quorum
    leader.advance(rd)
    net.deliver()
    assert net.data_applied(1) == [b"x"]


# --- 5.4.2 committing entries from previous terms (figure 8) ----------------------------
def test_leader_commits_previous_term_entries_only_with_current_term_entry():
    storages = {
        1: MemoryStorage(HardState(2, 0, 0), entries=log_of([1, 2])),
        2: MemoryStorage(HardState(2, 0, 0), entries=log_of([1])),
        3: MemoryStorage(HardState(2, 0, 0), entries=log_of([1])),
    }
    net = Network([1, 2, 3], storages=storages, max_size_per_msg=1)  # one entry per APP
    # Nothing reaches 3; follower 2 gets the first probe and then only old-term entries.
    probes = []

    def only_old_entries_to_2(m):
        if m.type != MT.APP:
            return True
        if m.to != 2:
            return False
        probes.append(m)
        return len(probes) == 1 or all(e.term < 3 for e in m.entries)

    net.msg_filter = only_old_entries_to_2
    net.campaign(1)
    leader = net.nodes[1]
    assert net.leaders() == [1] and net.term(1) == 3
    assert leader.status().last_index == 3
    # Follower 2 holds the term-2 entry at index 2: a quorum has it, but it is not of the
    # current term, so it must not be committed by counting replicas.
    assert net.log(2)[-1][:2] == (2, 2)
    assert leader.status().progress[2][0] == 2
    assert leader.status().commit == 0
    net.msg_filter = None
    net.tick_all(2)
    assert leader.status().commit == 3  # entries 1-2 committed indirectly with entry 3
    assert_logs_match(net)


def test_figure8_old_term_entry_on_majority_not_committed_until_current_term_entry():
    """Figure 8, with different term numbers: S1 replicates x (index 2, old term) to S2
    only and crashes; S5 wins the next term with an entry at index 2 it never sends; S1
    returns, wins a later term, and puts x on a majority. x must not be committed by
    counting until an entry of S1's current term is on a majority too."""
    net = Network([1, 2, 3, 4, 5], pre_vote=False, check_quorum=False, max_size_per_msg=1)
    elect(net, 1)  # term 1
    for i in (3, 4, 5):
        net.cut(1, i)
    net.propose(1, b"x")
    assert net.log(1)[1] == (2, 1, b"x") and net.nodes[1].status().commit == 1
    net.down.add(1)
    net.heal()
    net.cut(5, 2)
    net.msg_filter = lambda m: m.type != MT.APP  # S5 crashes before replicating
    net.campaign(5)
    assert net.state(5) == L and net.term(5) == 2 and net.log(5)[1][:2] == (2, 2)
    net.down.add(5)
    net.down.discard(1)
    net.restart(1)  # S1 crashed while leader of term 1
    net.heal()
    net.msg_filter = None
    net.campaign(1)  # term 2: S3 and S4 already voted for S5
    assert net.state(1) != L
    # S1 wins term 3; term-3 entries are held back, x reaches S3 and S4.
    # (An APP the receiver must reject anyway - it lacks the previous index - may pass.)
    net.msg_filter = lambda m: not (m.type == MT.APP and any(e.term == 3 for e in m.entries)
                                    and net.nodes[m.to].status().last_index >= m.index)
    net.campaign(1)
    assert net.state(1) == L and net.term(1) == 3
    holders = [i for i in (1, 2, 3, 4) if (2, 1, b"x") in net.log(i)]
    assert len(holders) >= 3  # a majority of 5
    assert net.nodes[1].status().commit == 1  # not committed by counting (5.4.2)
    net.msg_filter = None
    net.tick_all(2)
    assert net.nodes[1].status().commit == 3
    assert_logs_match(net, [1, 2, 3, 4])


# --- 5.4.1 election restriction / leader completeness -----------------------------------
def test_stale_candidate_cannot_win_and_leader_has_committed_entries():
    net = Network([1, 2, 3], pre_vote=False)
    elect(net, 1)
    net.isolate(3)
    net.propose(1, b"committed")
    assert net.data_applied(2) == [b"committed"]
    net.down.add(1)
    net.heal()
    net.nodes[3].campaign()
    net.deliver()
    assert net.state(3) != L  # 2 refused: its log is more up-to-date
    for _ in range(100):
        net.tick_all()
        if net.leaders():
            break
    assert net.leaders() == [2]
    assert any(e[2] == b"committed" for e in net.log(2))
    net.tick_all(2)
    assert net.data_applied(3) == [b"committed"]


# --- fast log back-off on divergence -----------------------------------------------------
def test_divergent_follower_backs_off_fast_and_converges():
    # Figure 7: leader log vs follower (f) with a long uncommitted tail of older terms.
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    follower_terms = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    storages = {
        1: MemoryStorage(HardState(6, 0, 3), entries=log_of(leader_terms)),
        2: MemoryStorage(HardState(6, 0, 3), entries=log_of(leader_terms)),
        3: MemoryStorage(HardState(3, 0, 3), entries=log_of(follower_terms)),
    }
    net = Network([1, 2, 3], storages=storages)
    net.down.add(3)
    elect(net, 1)
    net.down.discard(3)
    net.delivered.clear()
    net.tick_all(2)
    rejects = [m for m in net.delivered if m.type == MT.APP_RESP and m.reject]
    assert 1 <= len(rejects) <= 2, rejects
    assert_logs_match(net)
    assert net.nodes[3].status().commit == 11


def test_follower_with_short_log_backs_off_to_its_end():
    storages = {i: MemoryStorage(HardState(1, 0, 0), entries=log_of([1] * 50)) for i in (1, 2)}
    net = Network([1, 2, 3], storages=storages)
    net.down.add(3)
    elect(net, 1)
    net.down.discard(3)
    net.delivered.clear()
    net.tick_all(2)
    rejects = [m for m in net.delivered if m.type == MT.APP_RESP and m.reject]
    assert len(rejects) == 1 and rejects[0].reject_hint == 0
    assert_logs_match(net)


# --- flow control and batching -----------------------------------------------------------
def test_batching_respects_max_size_per_msg():
    net = Network([1, 2, 3], max_size_per_msg=100)
    elect(net, 1)
    net.down.add(3)
    for k in range(20):
        net.nodes[1].propose(b"x" * 30)
    net.deliver()
    net.down.discard(3)
    net.delivered.clear()
    net.tick_all(2)
    apps = [m for m in net.delivered if m.type == MT.APP and m.to == 3 and m.entries]
    assert all(sum(len(e.data) + 16 for e in m.entries) <= 100 or len(m.entries) == 1
               for m in apps)
    assert max(len(m.entries) for m in apps) >= 2
    assert_logs_match(net)


def test_inflight_limit_pauses_replication():
    net = Network([1, 2, 3], max_inflight_msgs=3)
    elect(net, 1)
    net.propose(1, b"warm")  # followers in REPLICATE state now
    leader = net.nodes[1]
    net.msg_filter = lambda m: not (m.type == MT.APP_RESP and m.frm == 2)  # 2's acks lost
    for k in range(10):
        leader.propose(b"p%d" % k)
        net.deliver()
    apps_to_2 = [m for m in net.delivered if m.type == MT.APP and m.to == 2 and m.entries
                 and m.entries[0].data.startswith(b"p")]
    assert len(apps_to_2) == 3  # the window is full: no more APPs until acks come back
    net.msg_filter = None
    net.tick_all(3)
    assert_logs_match(net)
    assert net.data_applied(2)[-1] == b"p9"


# --- restart ---------------------------------------------------------------------------
def test_restart_follower_and_leader_from_storage():
    net = Network([1, 2, 3])
    elect(net, 1)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    net.restart(2)
    assert net.nodes[2].status().term == 1 and net.nodes[2].status().commit == 6
    net.restart(1)
    assert net.state(1) == F
    for _ in range(100):
        net.tick_all()
        if net.leaders():
            break
    lead = net.leaders()[0]
    net.propose(lead, b"after")
    assert_logs_match(net)
    assert net.data_applied(3)[-1] == b"after"


def test_propose_batch_sends_one_app_per_follower():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.delivered.clear()
    leader.propose_batch([b"a", b"b", b"c"])
    net.deliver()
    apps = [m for m in net.delivered if m.type == MT.APP and m.entries]
    assert len(apps) == 2 and all(len(m.entries) == 3 for m in apps)
    assert net.data_applied(3) == [b"a", b"b", b"c"]
    with pytest.raises(ProposalDropped):
        net.nodes[2].propose_batch([b"x"])


def test_report_unreachable_falls_back_to_probe():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.propose(1, b"x")
    assert leader.status().progress[2][2] == "replicate"
    net.msg_filter = lambda m: m.to != 2  # messages to 2 lost
    leader.propose(b"lost")
    net.deliver()
    leader.report_unreachable(2)
    assert leader.status().progress[2][2] == "probe"
    net.msg_filter = None
    net.tick_all(2)
    assert net.data_applied(2) == [b"x", b"lost"]


def test_follower_behind_compaction_catches_up_by_snapshot():
    net = Network([1, 2, 3])
    leader = elect(net, 1)
    net.down.add(3)
    for k in range(10):
        net.propose(1, b"v%d" % k)
    for i in (1, 2):
        net.storages[i].compact(8)
    net.down.discard(3)
    net.tick_all(3)
    assert leader.status().progress[3][2] == "replicate"  # snapshot sent, then back to the log
    assert net.nodes[3].status().last_index >= 8
    net.propose(1, b"still works")
    assert net.data_applied(2)[-1] == b"still works"
    assert net.data_applied(3)[-1] == b"still works"
