"""Raft thesis 10.2.1 in the Ready loop (actors/consensus/ready.py): a leader sends its
appends (and heartbeats) before it persists them, so followers write while it does; it counts
its own copy only once persisted, so a commit always has a majority of durable copies.
Followers and candidates still persist before they answer; a held Ready (persist refused)
sends nothing twice and nothing else until it is persisted."""

import random

from actors.consensus.raft import Config, Message, MessageType, RawNode, StateType
from actors.consensus.raft.storage import MemoryStorage
from actors.consensus.ready import Hooks, drive
from raftnet import Network

MT = MessageType


class Shell:
    """One node's hooks that record the order of events: ("send", [(type, to, last entry
    index)]) for a non-empty send and ("persist", accepted); persist answers from `refuse`
    (True: the disk refuses)."""

    def __init__(self, node: RawNode, storage: MemoryStorage) -> None:
        self.node, self.storage = node, storage
        self.events: list[tuple] = []
        self.sent: list[Message] = []
        self.refuse = False
        self.held = None
        self.hooks = Hooks(self.persist, self.send, lambda rd: None)

    def persist(self, rd) -> bool:
        self.events.append(("persist", not self.refuse))
        return not self.refuse

    def send(self, msgs: list[Message]) -> None:
        if not msgs:
            return  # (the loop hands over step 3's list even when empty)
        self.sent.extend(msgs)
        self.events.append(("send", [(m.type, m.to, m.entries[-1].index if m.entries else 0) for m in msgs]))

    def drive(self) -> None:
        self.held = drive(self.node, self.storage, self.hooks, self.held)

    def take(self) -> list[Message]:
        out, self.sent = self.sent, []
        return out


def leader_of_three(**kw) -> tuple[Network, dict[int, Shell]]:
    net = Network([1, 2, 3], **kw)
    net.campaign(1)
    assert net.leaders() == [1]
    return net, {i: Shell(net.nodes[i], net.storages[i]) for i in net.ids}


def step_all(net: Network, msgs: list[Message], to: int | None = None) -> None:
    for m in msgs:
        if to is None or m.to == to:
            net.nodes[m.to].step(Message.from_wire(m.to_wire()))


def test_leader_sends_its_appends_before_persisting_them():
    net, sh = leader_of_three()
    last = net.nodes[1].raft.log.last_index()
    net.nodes[1].propose(b"x")
    sh[1].drive()
    # The appends carrying the new entry went out first; then the leader persisted.
    assert sh[1].events == [("send", [(MT.APP, 2, last + 1), (MT.APP, 3, last + 1)]), ("persist", True)]
    assert net.storages[1].last_index() == last + 1


def test_leader_heartbeats_go_before_persist_too():
    net, sh = leader_of_three()
    net.nodes[1].tick()  # heartbeat_tick=1
    sh[1].drive()
    assert sh[1].events[0] == ("send", [(MT.HEARTBEAT, 2, 0), (MT.HEARTBEAT, 3, 0)])


def test_follower_answers_only_after_persisting():
    net, sh = leader_of_three()
    net.nodes[1].propose(b"x")
    sh[1].drive()
    step_all(net, sh[1].take(), to=2)
    sh[2].drive()
    assert [e[0] for e in sh[2].events] == ["persist", "send"]
    assert sh[2].events[1][1][0][0] == MT.APP_RESP


def test_candidate_asks_for_votes_only_after_persisting_its_vote():
    net = Network([1, 2, 3], pre_vote=False)
    sh = Shell(net.nodes[1], net.storages[1])
    net.nodes[1].campaign()
    sh.drive()
    assert sh.events == [("persist", True), ("send", [(MT.VOTE, 2, 0), (MT.VOTE, 3, 0)])]


def test_ready_that_makes_a_leader_sends_its_appends_early():
    """The vote that wins arrives: the Ready that makes it leader changes no term or vote
    (both persisted when it campaigned), so its appends go first."""
    net = Network([1, 2, 3], pre_vote=False)
    sh = Shell(net.nodes[1], net.storages[1])
    net.nodes[1].campaign()
    sh.drive()
    step_all(net, sh.take(), to=2)
    voter = Shell(net.nodes[2], net.storages[2])
    voter.drive()
    assert [e[0] for e in voter.events] == ["persist", "send"]  # its vote is persisted first
    sh.events.clear()
    step_all(net, voter.take())
    assert net.nodes[1].raft.state == StateType.LEADER
    sh.drive()
    assert [e[0] for e in sh.events[:2]] == ["send", "persist"]
    assert {m.type for m in sh.sent} == {MT.APP}


def test_sole_voter_that_wins_at_once_persists_its_term_before_sending():
    """A sole voter with a learner becomes leader in the Ready that raises its term: that
    term and vote are not on disk yet, so its append to the learner waits for persist."""
    st = MemoryStorage()
    node = RawNode(Config(id=1, voters=[1], learners=[2], rng=random.Random(1)), st)
    sh = Shell(node, st)
    node.campaign()
    assert node.raft.state == StateType.LEADER
    sh.drive()
    assert sh.events[0] == ("persist", True)
    assert sh.events[1][0] == "send" and sh.events[1][1][0][:2] == (MT.APP, 2)


def test_leader_that_steps_down_sends_after_persisting():
    """A leader with appends pending learns a higher term: its Ready (follower, new term)
    sends nothing before it is persisted."""
    net, sh = leader_of_three(pre_vote=False, check_quorum=False)
    net.nodes[1].propose(b"x")
    term = net.nodes[1].raft.term
    net.nodes[1].step(Message(MT.VOTE, 1, 3, term=term + 1, index=0, log_term=0))
    assert net.nodes[1].raft.state == StateType.FOLLOWER
    sh[1].drive()
    assert [e[0] for e in sh[1].events] == ["persist", "send"]


def test_commit_counts_durable_copies_only():
    """Three voters. The leader's appends are out, its own save is refused (held): one
    follower's durable copy plus the leader's unpersisted one is no majority; the second
    follower's makes one (two durable copies of three), whatever the leader's disk does."""
    net, sh = leader_of_three()
    i = net.nodes[1].raft.log.last_index() + 1
    commit0 = net.nodes[1].raft.log.committed
    net.nodes[1].propose(b"x")
    sh[1].refuse = True
    sh[1].drive()
    assert sh[1].held is not None and net.storages[1].last_index() == i - 1
    apps = sh[1].take()
    assert [(m.type, m.to) for m in apps] == [(MT.APP, 2), (MT.APP, 3)]
    for f in (2, 3):
        step_all(net, apps, to=f)
        sh[f].drive()
    step_all(net, sh[2].take())  # follower 2 has it durably
    assert net.nodes[1].raft.log.committed == commit0 < i
    step_all(net, sh[3].take())  # and follower 3: a majority of durable copies
    assert net.nodes[1].raft.log.committed == i


def test_leader_crash_before_persisting_loses_its_copy_not_a_commit():
    """The leader sends its appends and crashes before persisting them; one follower of
    three persisted the entry. Nothing counted it committed; the restarted leader has lost it
    and the entry lives on only if a later leader (here 2, with 1's vote) replicates it."""
    net, sh = leader_of_three()
    i = net.nodes[1].raft.log.last_index() + 1
    net.nodes[1].propose(b"x")
    sh[1].refuse = True  # the crash strikes before the save: drop the Ready with the node
    sh[1].drive()
    step_all(net, sh[1].take(), to=2)
    sh[2].drive()
    step_all(net, sh[2].take())  # 2's ack reaches 1 before it crashes: still no majority
    assert net.nodes[1].raft.log.committed < i
    net.down.add(3)
    net.restart(1)
    assert net.nodes[1].raft.log.last_index() == i - 1
    assert all(net.nodes[n].raft.log.committed < i for n in (1, 2))
    net.campaign(2)
    assert net.leaders() == [2]
    assert net.nodes[1].raft.log.committed >= i and net.log(1) == net.log(2)
    assert (i, net.nodes[1].raft.log.term(i)) in [(e[0], e[1]) for e in net.log(1)]


def test_held_ready_sends_its_early_messages_once_and_the_rest_after_persist():
    """A leader's Ready with appends and a SNAP, held by a full disk: the appends went out
    once, before the first refused save; the SNAP (its send starts a snapshot transfer) waits
    for the save; passing the Ready back neither re-sends nor loses anything."""
    from test_raft_snapshot import lagging_cluster

    net = lagging_cluster()
    sh = {i: Shell(net.nodes[i], net.storages[i]) for i in net.ids}
    net.nodes[1].tick()
    for _ in range(5):  # heartbeat, probe, reject: until 1 learns 3 needs a snapshot
        sh[1].drive()
        step_all(net, sh[1].take(), to=3)
        sh[3].drive()
        step_all(net, sh[3].take())
        if any(m.type == MT.SNAP for m in net.nodes[1].raft.msgs):
            break
    else:
        raise AssertionError("no SNAP")
    net.nodes[1].propose(b"x")
    sh[1].events.clear()
    sh[1].refuse = True
    sh[1].drive()
    first = sh[1].take()
    assert sorted((m.type, m.to) for m in first) == [(MT.APP, 2)]
    held = sh[1].held
    assert held is not None and any(m.type == MT.SNAP for m in held.messages)
    sh[1].drive()  # still refused: nothing sent again, nothing else sent
    assert sh[1].take() == [] and sh[1].held is held
    sh[1].refuse = False
    sh[1].drive()
    rest = sh[1].take()
    assert sh[1].held is None
    assert [(m.type, m.to) for m in rest if m.type == MT.SNAP] == [(MT.SNAP, 3)]
    assert not any(m.type == MT.APP and m.to == 2 and m.entries and m.entries[-1].index == first[0].entries[-1].index
                   for m in rest)
    assert [(e[0], e[1] if e[0] == "persist" else None) for e in sh[1].events] == [
        ("send", None), ("persist", False), ("persist", False), ("persist", True), ("send", None)]
