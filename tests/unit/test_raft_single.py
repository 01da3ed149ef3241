"""Raft core with a single voter: election, proposals, commit on persist, restart."""

import random

import pytest

from actors.consensus.raft import (Config, Entry, HardState, MemoryStorage, ProposalDropped,
                                   RawNode, StateType)


def new_node(storage=None, **kw):
    cfg = Config(id=1, voters=[1], rng=random.Random(1), **kw)
    return RawNode(cfg, storage or MemoryStorage())


def drive(node, storage, applied=None, reads=None):
    """One shell loop iteration, in the documented order; returns the Ready."""
    rd = node.ready()
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    storage.append(rd.entries)
    if applied is not None:
        applied.extend(rd.committed_entries)
    if reads is not None:
        reads.extend(rd.read_states)
    node.advance(rd)
    return rd


def drain(node, storage, applied=None, reads=None):
    rds = []
    while node.has_ready():
        rds.append(drive(node, storage, applied, reads))
    return rds


def test_campaign_makes_single_voter_leader_at_once():
    st = MemoryStorage()
    n = new_node(st)
    n.campaign()
    s = n.status()
    assert s.raft_state == StateType.LEADER and s.term == 1 and s.lead == 1 and s.vote == 1
    rd = drive(n, st)
    assert [(e.term, e.index, e.data) for e in rd.entries] == [(1, 1, b"")]
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.must_sync
    assert rd.soft_state.raft_state == StateType.LEADER and rd.soft_state.lead == 1
    assert rd.committed_entries == []  # not persisted yet when the Ready was built
    assert rd.messages == []
    # After advance the empty entry is persisted, hence committed.
    assert n.has_ready()
    rd = drive(n, st)
    assert rd.hard_state == HardState(1, 1, 1)
    assert not rd.must_sync  # commit-only change
    assert [e.index for e in rd.committed_entries] == [1]
    assert not n.has_ready()
    assert n.status().applied == 1


def test_propose_commits_after_advance_not_before():
    st = MemoryStorage()
    n = new_node(st)
    n.campaign()
    drain(n, st)
    n.propose(b"a")
    n.propose(b"b")
    rd = n.ready()
    assert [e.data for e in rd.entries] == [b"a", b"b"]
    assert rd.committed_entries == []
    st.append(rd.entries)
    assert n.status().commit == 1  # persisted but not yet advanced: not counted
    n.advance(rd)
    assert n.status().commit == 3
    rd = drive(n, st)
    assert [e.data for e in rd.committed_entries] == [b"a", b"b"]
    assert rd.hard_state.commit == 3 and not rd.must_sync
    assert not n.has_ready()


def test_ticks_elect_single_voter_within_randomised_timeout():
    st = MemoryStorage()
    n = new_node(st, election_tick=10)
    for _ in range(9):
        n.tick()
    assert n.status().raft_state == StateType.FOLLOWER
    for _ in range(11):
        n.tick()
    assert n.status().raft_state == StateType.LEADER


def test_randomised_election_timeout_range():
    n = new_node(election_tick=10)
    seen = set()
    for _ in range(200):
        n.raft.reset_randomized_election_timeout()
        seen.add(n.raft.randomized_election_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_propose_on_follower_is_dropped():
    n = new_node()
    with pytest.raises(ProposalDropped):
        n.propose(b"x")


def test_read_index_single_voter_waits_for_current_term_commit():
    st = MemoryStorage()
    n = new_node(st)
    reads = []
    n.campaign()
    n.read_index(b"r1")  # nothing committed in term 1 yet: queued
    rd = drive(n, st, reads=reads)
    assert rd.read_states == []
    drain(n, st, reads=reads)
    assert [(r.index, r.request_ctx) for r in reads] == [(1, b"r1")]
    n.read_index(b"r2")
    drain(n, st, reads=reads)
    assert [(r.index, r.request_ctx) for r in reads][1] == (1, b"r2")


def test_read_index_without_leader_is_dropped():
    n = new_node()
    with pytest.raises(ProposalDropped):
        n.read_index(b"x")
    with pytest.raises(ValueError):
        n.read_index(b"")


def test_restart_from_storage():
    st = MemoryStorage()
    n = new_node(st)
    n.campaign()
    drain(n, st)
    for i in range(5):
        n.propose(b"v%d" % i)
    drain(n, st)
    hs = st.initial_state()
    assert hs == HardState(1, 1, 6)
    # Restart: a new RawNode over a storage rebuilt from what was persisted.
    st2 = MemoryStorage(hs, entries=st.entries(1, st.last_index() + 1))
    applied = []
    n2 = new_node(st2)
    s = n2.status()
    assert (s.term, s.vote, s.commit, s.applied, s.last_index) == (1, 1, 6, 0, 6)
    assert s.raft_state == StateType.FOLLOWER
    drain(n2, st2, applied)
    assert [e.data for e in applied] == [b"", b"v0", b"v1", b"v2", b"v3", b"v4"]
    n2.campaign()
    drain(n2, st2)
    assert n2.status().term == 2 and n2.status().commit == 7


def test_restart_with_applied_skips_applied_entries():
    ents = [Entry(1, i, 0, b"x%d" % i) for i in range(1, 5)]
    st = MemoryStorage(HardState(1, 1, 4), entries=ents)
    applied = []
    n = new_node(st, applied=3)
    drain(n, st, applied)
    assert [e.index for e in applied] == [4]


def test_restart_after_compaction():
    ents = [Entry(1, i, 0, b"x%d" % i) for i in range(1, 11)]
    st = MemoryStorage(HardState(1, 1, 10), entries=ents)
    st.compact(6)
    assert st.first_index() == 7 and st.snapshot().index == 6
    applied = []
    n = new_node(st)
    drain(n, st, applied)
    assert [e.index for e in applied] == [7, 8, 9, 10]
    n.campaign()
    drain(n, st)
    assert n.status().commit == 11


def test_ready_twice_without_advance_is_a_bug():
    st = MemoryStorage()
    n = new_node(st)
    n.campaign()
    n.ready()
    with pytest.raises(AssertionError):
        n.ready()


def test_memory_storage_append_overwrites_conflicting_suffix():
    st = MemoryStorage(entries=[Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    st.append([Entry(2, 2), Entry(2, 3), Entry(2, 4)])
    assert [(e.index, e.term) for e in st.entries(1, 5)] == [(1, 1), (2, 2), (3, 2), (4, 2)]
    assert st.term(4) == 2 and st.last_index() == 4
    assert len(st.entries(1, 5, max_size=1)) == 1
    st.compact(2)
    assert st.first_index() == 3 and st.term(2) == 2
