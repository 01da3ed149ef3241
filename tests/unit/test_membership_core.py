"""actors/consensus/membership.py (the pure membership core) and actors/consensus/ready.py
(the one Ready loop)."""

import pathlib
import random

import pytest

from actors.consensus.membership import (ClusterView, Member, Membership, pack_members, replay,
                                         standalone_changes, unpack_members)
from actors.consensus.raft import (Config, ConfChange, ConfChangeType, ConfState, MemoryStorage, RawNode,
                                   SnapshotMeta)
from actors.consensus.ready import Hooks, drive
from protocol import errors
from tests.unit.test_pure_imports import violations

CC = ConfChangeType
ROOT = pathlib.Path(__file__).resolve().parents[2]


def m(i):
    return Member(f"n{i}", (f"tcp://h{i}:2380",), f"key{i}")


def table(voters=(1, 2, 3), learners=()):
    return Membership.initial([(i, m(i), False) for i in voters] + [(i, m(i), True) for i in learners],
                              SnapshotMeta())


def view(active, pending=False, commit=100, match=None, removed=(), security=False):
    return ClusterView(frozenset(active), pending, commit, match or {}, frozenset(removed), security)


def minter(*ids):
    it = iter(ids)
    return lambda name, urls: next(it)


def add(name="new", urls=("tcp://new:2380",), learner=True, key=""):
    return {"op": "member_add", "name": name, "peer_urls": list(urls), "is_learner": learner, "peer_key": key}


# --- the table ---------------------------------------------------------------------------
def test_initial_static_then_snapshot_wins():
    ms = table((1, 2), (3,))
    assert (ms.voters, ms.learners) == ([1, 2], [3])
    snap = SnapshotMeta(10, 2, [1, 3], [4], pack_members({1: m(1), 4: m(4)}))
    ms = Membership.initial([(1, m(1), False), (2, m(2), False)], snap)
    assert (ms.voters, ms.learners) == ([1, 3], [4])
    assert ms.members[4] == m(4) and ms.members[3] == Member()  # unknown metadata: ids only
    assert ms.conf_at(10).voters == [1, 3]


def test_pack_roundtrip_and_damaged_context():
    members = {1: m(1), 7: Member("x", ("a", "b"), "")}
    assert unpack_members(pack_members(members)) == members
    assert unpack_members(b"\xc1garbage") == {} and unpack_members(b"") == {}


def test_apply_add_promote_update_remove():
    ms = table()
    done = ms.apply(5, ConfChange(CC.ADD_LEARNER_NODE, 9, m(9).meta()), ConfState([1, 2, 3], [9]))
    assert done.changed and ms.members[9] == m(9) and ms.is_learner(9)
    ms.apply(6, ConfChange(CC.ADD_NODE, 9, b""), ConfState([1, 2, 3, 9], []))
    assert ms.members[9] == m(9) and not ms.is_learner(9)  # promotion keeps the metadata
    done = ms.apply(7, ConfChange(CC.UPDATE_NODE, 9, Member("", ("tcp://moved:1",), "").meta()),
                    ConfState([1, 2, 3, 9], []))
    assert not done.changed and ms.members[9] == Member("n9", ("tcp://moved:1",), "key9")
    done = ms.apply(8, ConfChange(CC.REMOVE_NODE, 1, b""), ConfState([2, 3, 9], []))
    assert done.removed == m(1) and 1 not in ms.members
    # The history gives the membership at a compaction point, and forgets what is older.
    assert ms.conf_at(6).voters == [1, 2, 3, 9] and ms.conf_at(6).learners == []
    assert unpack_members(ms.conf_at(8).context).keys() == {2, 3, 9}
    assert ms.conf_at(5).voters == [2, 3, 9]  # history before 8 is gone: the oldest kept


def test_restore_from_a_leaders_snapshot():
    ms = table()
    assert not ms.restore(SnapshotMeta(5, 1))  # no membership in it: nothing changes
    assert ms.restore(SnapshotMeta(9, 2, [2, 3], [5], b""))
    assert (ms.voters, ms.learners) == ([2, 3], [5]) and ms.members[2] == m(2)


def test_replay_is_the_cores_rule():
    ccs = [ConfChange(CC.ADD_LEARNER_NODE, 4), ConfChange(CC.ADD_LEARNER_NODE, 1),  # no demotion
           ConfChange(CC.ADD_NODE, 4), ConfChange(CC.REMOVE_NODE, 2)]
    assert replay({1, 2}, set(), ccs) == ({1, 4}, set())
    assert replay({1}, set(), [ConfChange(CC.REMOVE_NODE, 1)]) == ({1}, set())  # never no voter


def test_force_new_cluster_leaves_only_us():
    log = [ConfChange(CC.ADD_LEARNER_NODE, 4), ConfChange(CC.REMOVE_NODE, 1)]
    assert standalone_changes(ConfState([1, 2, 3], []), log, 2, m(2)) == [
        ConfChange(CC.REMOVE_NODE, 3, b""), ConfChange(CC.REMOVE_NODE, 4, b"")]
    # A member that is not a voter (any more) adds itself back first.
    assert standalone_changes(ConfState([1, 2, 3], []), log, 1, m(1)) == [
        ConfChange(CC.ADD_NODE, 1, m(1).meta()), ConfChange(CC.REMOVE_NODE, 2, b""),
        ConfChange(CC.REMOVE_NODE, 3, b""), ConfChange(CC.REMOVE_NODE, 4, b"")]


# --- strict reconfiguration ------------------------------------------------------------
def test_one_change_at_a_time():
    with pytest.raises(errors.ConfChangeInProgress):
        table().check(add(), view({1, 2, 3}, pending=True), minter(9))


def test_add_checks():
    ms = table()
    with pytest.raises(errors.MemberExists):
        ms.check(add(urls=["tcp://h2:2380"]), view({1, 2, 3}), minter(9))
    with pytest.raises(errors.MemberExists):
        ms.check(add(name="n3"), view({1, 2, 3}), minter(9))
    with pytest.raises(errors.MemberExists):
        ms.check(add(key="key1"), view({1, 2, 3}), minter(9))
    with pytest.raises(errors.InvalidArgument):
        ms.check(add(), view({1, 2, 3}, security=True), minter(9))
    # A voter needs a quorum of the new voter set (3 of 4) active; a learner does not.
    with pytest.raises(errors.UnhealthyCluster):
        ms.check(add(learner=False), view({1, 2}), minter(9))
    assert ms.check(add(learner=False), view({1, 2, 3}), minter(9)).type == CC.ADD_NODE
    cc = ms.check(add(), view({1}, removed={8}), minter(2, 8, 9))  # ids in use or removed are skipped
    assert cc == ConfChange(CC.ADD_LEARNER_NODE, 9, Member("new", ("tcp://new:2380",), "").meta())
    with pytest.raises(StopIteration):
        ms.check(add(), view({1}, removed={9}), minter(2, 9))


def test_a_learner_never_counts_in_a_quorum():
    ms = table((1, 2, 3), (4, 5))
    with pytest.raises(errors.UnhealthyCluster):  # active: 2 voters + 2 learners, needs 3 voters
        ms.check(add(learner=False), view({1, 2, 4, 5}), minter(9))
    with pytest.raises(errors.UnhealthyCluster):  # removing 2 leaves 1 active voter of 2
        ms.check({"op": "member_remove", "member_id": 2}, view({1, 2, 4, 5}), minter())
    assert ms.active_voters(view({1, 2, 4, 5})) == {1, 2}


def test_remove_checks():
    ms = table()
    with pytest.raises(errors.MemberNotFound):
        ms.check({"op": "member_remove", "member_id": 7}, view({1, 2, 3}), minter())
    with pytest.raises(errors.UnhealthyCluster):
        table((1,)).check({"op": "member_remove", "member_id": 1}, view({1}), minter())
    # Removing the leader (active) or another active voter needs the rest to be a quorum.
    with pytest.raises(errors.UnhealthyCluster):
        ms.check({"op": "member_remove", "member_id": 1}, view({1, 2}), minter())
    assert ms.check({"op": "member_remove", "member_id": 1}, view({1, 2, 3}), minter()) == \
        ConfChange(CC.REMOVE_NODE, 1, b"")
    # A member that is down is not part of the active quorum: removing it is safe.
    assert ms.check({"op": "member_remove", "member_id": 3}, view({1, 2}), minter()).node_id == 3
    assert table((1, 2), (3,)).check({"op": "member_remove", "member_id": 3}, view({1}), minter()).node_id == 3


def test_update_checks():
    ms = table()
    with pytest.raises(errors.MemberExists):
        ms.check({"op": "member_update", "member_id": 1, "peer_urls": ["tcp://h2:2380"]}, view({1}), minter())
    cc = ms.check({"op": "member_update", "member_id": 1, "peer_urls": ["tcp://x:1"]}, view({1}), minter())
    assert cc.type == CC.UPDATE_NODE and Member.from_meta(cc.context) == Member("n1", ("tcp://x:1",), "key1")


def test_promote_and_learner_readiness():
    ms = table((1, 2, 3), (4,))
    op = {"op": "member_promote", "member_id": 4}
    with pytest.raises(errors.MemberNotLearner):
        ms.check({"op": "member_promote", "member_id": 2}, view({1, 2, 3, 4}), minter())
    with pytest.raises(errors.LearnerNotReady):  # behind: 89 < 90% of 100
        ms.check(op, view({1, 2, 3, 4}, match={4: 89}), minter())
    with pytest.raises(errors.LearnerNotReady):  # caught up but not heard from
        ms.check(op, view({1, 2, 3}, match={4: 100}), minter())
    with pytest.raises(errors.UnhealthyCluster):  # 4 voters after: 3 must be active, 4 counts
        ms.check(op, view({1, 4}, match={4: 95}), minter())
    assert ms.check(op, view({1, 2, 4}, match={4: 90}), minter()) == ConfChange(CC.ADD_NODE, 4, b"")


def test_auto_promotion_policy():
    ms = table((1, 2, 3), (4, 5))
    assert ms.promotion_candidate(view({1, 2, 3, 4, 5}, match={4: 10, 5: 99})) == 5
    assert ms.promotion_candidate(view({1, 2, 3, 4, 5}, pending=True, match={5: 99})) is None
    assert ms.promotion_candidate(view({1, 2, 3, 4}, match={4: 10, 5: 99})) is None


# --- purity and mypy-free checks -------------------------------------------------------------
@pytest.mark.parametrize("path", ["actors/consensus/membership.py", "actors/consensus/ready.py"])
def test_pure(path):
    assert violations(ROOT / path) == []


# --- the Ready loop -------------------------------------------------------------------------
def _node():
    storage = MemoryStorage()
    return RawNode(Config(id=1, voters=[1], rng=random.Random(1)), storage), storage


def test_ready_loop_order_and_hold():
    node, storage = _node()
    node.campaign()
    calls = []
    ok = [False]

    def persist(rd):
        calls.append(("persist", len(rd.entries)))
        return ok[0]

    hooks = Hooks(persist, lambda msgs: calls.append(("send", len(msgs))),
                  lambda rd: calls.append(("apply", len(rd.committed_entries))),
                  lambda rd: calls.append(("advanced", storage.last_index())))
    held = drive(node, storage, hooks)
    assert held is not None and calls == [("persist", 1)]  # refused: nothing sent or applied
    assert storage.initial_state().term == 0  # nor made visible to the core
    node.propose(b"x")  # the core goes on; the held Ready is saved first
    ok[0] = True
    calls.clear()
    assert drive(node, storage, hooks, held) is None
    assert calls[:2] == [("persist", 1), ("send", 0)] and calls[3] == ("advanced", 1)  # the held one first
    assert storage.initial_state().term == 1 and storage.last_index() == 2
    assert [c[0] for c in calls] == ["persist", "send", "apply", "advanced"] * (len(calls) // 4)
