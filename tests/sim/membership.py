"""The simulator with membership changes: add a learner, promote it (by hand or by the
--auto-promote-learners policy), remove a member (the leader too), while the base Sim
crashes nodes and partitions the network (tests/sim/sim.py).

Each node's shell keeps an actors/consensus/membership.Membership and drives it the way
the consensus actor does:
- at boot, the core's conf comes from `Membership.initial(static, disk snapshot)` (the
  table the node was born with, unless its WAL's compaction point carries one) and the log
  replays every conf change after it (applied starts at the snapshot, as in the actor);
- a committed CONF_CHANGE entry goes to `node.apply_conf_change` and then `ms.apply`; a
  snapshot from the leader to `ms.restore`; a compaction records `ms.conf_at(index)`;
- member ops go to the leader, which checks them with `ms.check` (strict reconfiguration)
  against a ClusterView: members it heard from within an election timeout over a link
  that is not cut; auto-promotion asks `ms.promotion_candidate`.
A new member's node starts when the first node applies its ADD_LEARNER_NODE, with that
node's member table (the real one gets it by PEER_JOIN) and an empty disk. A removed member
(its REMOVE_NODE applied anywhere) keeps running for a grace period (a removed leader hands
over), then stops for good: its links are cut and it never restarts.

Not simulated: removing a voter from a cluster of two voters. The survivor can lose the
commit index of the removal in a power loss (commit-only hard states are not fsynced; the
actor replays the log from its compaction point) and then waits for the vote of a member
that stopped for good; the first seed found it (etcd has the same two-member caveat).
`two_voter_removals=True` lets the sim do it (tests/sim/test_sim_membership.py pins seed 0).

Checkers (tests/sim/checkers.py MembershipChecker): a leader counts exactly the voters of
the committed log as of its applied index (a removed member or a learner never counts in a
quorum), a majority of those voters holds every commit; the base checkers (one leader per
term, log matching, ...) run throughout.
"""

from __future__ import annotations

from actors.consensus.membership import ClusterView, Member, Membership
from actors.consensus.raft import ConfChange, ConfChangeType, Entry, ProposalDropped, Ready, SnapshotMeta, StateType
from protocol import errors

from .checkers import MembershipChecker
from .sim import Checkpoint, MVCCStore, Sim, SimNode, copy_backend, replay_command

CC = ConfChangeType
GRACE_STEPS = 20  # a removed member runs this long (the actor: 2 election timeouts)
ACTIVE_STEPS = 10  # "heard from within an election timeout"
MAX_MEMBERS = 7


def member(i: int) -> Member:
    return Member(f"n{i}", (f"sim://{i}",), "")


class MembershipSim(Sim):
    def __init__(self, seed: int, nodes: int | None = None, steps: int | None = None,
                 verbose: bool = False, two_voter_removals: bool = False, **kw) -> None:
        self.two_voter_removals = two_voter_removals  # see the module docstring
        self.statics: dict[int, list[tuple[int, Member, bool]]] = {}
        self.mchecker: MembershipChecker | None = None
        super().__init__(seed, nodes=nodes, steps=steps, verbose=verbose, **kw)
        rng = self.rng
        self.mchecker = MembershipChecker(self.ids, {i: (member(i).name, member(i).peer_urls) for i in self.ids})
        self.p_member = rng.choice([0.02, 0.05, 0.1])
        self.auto_promote = rng.random() < 0.5
        self.next_id = max(self.ids) + 1
        self.removed_at: dict[int, int] = {}  # member id -> step its removal was first applied
        self.born: list[tuple[int, SimNode]] = []  # (new id, the node whose table it starts with)
        self.table_checked: dict[int, tuple[int, int]] = {}  # leader -> (term, applied) checked
        for k in ("member_ops", "member_refused", "conf_changes", "learners_added", "promotions",
                  "removals", "leader_removals", "updates", "stopped"):
            self.stats[k] = 0
        self.trace(f"membership: p_member={self.p_member}, auto_promote={self.auto_promote}")

    # --- the shell's membership -----------------------------------------------------------
    def boot_conf(self, sn: SimNode) -> tuple[list[int], list[int], int]:
        static = self.statics.setdefault(sn.id, [(i, member(i), False) for i in self.ids])
        sn.ms = Membership.initial(static, sn.disk.snap)
        conf = sn.ms.raft_conf()
        return conf.voters, conf.learners, 0  # the log replays from its compaction point

    def restored(self, sn: SimNode, snap: SnapshotMeta) -> None:
        sn.ms.restore(snap)

    def conf_change(self, sn: SimNode, e: Entry) -> None:
        cc = ConfChange.from_bytes(e.data)
        done = sn.ms.apply(e.index, cc, sn.node.apply_conf_change(cc))
        self.stats["conf_changes"] += 1
        assert self.mchecker is not None  # (set once the base Sim has drawn the cluster)
        self.mchecker.conf_change_applied(sn.id, e.index, int(cc.type), cc.node_id, cc.context)
        mid = cc.node_id
        if cc.type in (CC.ADD_LEARNER_NODE, CC.ADD_NODE) and mid not in self.nodes \
                and all(b != mid for b, _ in self.born) and mid not in self.removed_at:
            self.born.append((mid, sn))
        if cc.type == CC.REMOVE_NODE and mid not in self.removed_at and mid not in done.after.voters \
                and mid not in done.after.learners:
            self.removed_at[mid] = self.now
            self.trace(f"member {mid} removed (applied at {e.index} on node {sn.id})")

    def advanced(self, sn: SimNode, rd: Ready) -> None:
        super().advanced(sn, rd)
        if sn.up and sn.ms.conf.voters == [sn.id] and sn.node.raft.state != StateType.LEADER:
            sn.node.campaign()  # the only voter left (the actor's campaign-if-alone)

    def conf_at(self, sn: SimNode, index: int) -> SnapshotMeta | None:
        return sn.ms.conf_at(index)

    def observe(self, sn: SimNode) -> None:
        super().observe(sn)
        r = sn.node.raft
        if r.state != StateType.LEADER or self.mchecker is None:
            return
        applied = r.log.applied
        self.mchecker.leader_counts(r.term, sn.id, applied, r.prs.voters)
        if self.table_checked.get(sn.id) != (r.term, applied):
            self.table_checked[sn.id] = (r.term, applied)
            self.mchecker.leader_table(r.term, sn.id, applied,
                                       {i: (m.name, m.peer_urls) for i, m in sn.ms.members.items()})

    def check_commit_quorum(self, sn: SimNode) -> None:
        """The voters are the committed log's as of the leader's applied index."""
        r = sn.node.raft
        if self.mchecker is None:
            return
        commit = r.log.committed
        seen = self.mchecker.checked_commit.setdefault((r.term, sn.id), commit)  # inherited: not its quorum
        if commit <= seen:
            return
        self.mchecker.leader_committed(r.term, sn.id, r.log.applied, commit, self.holders(r.log.term(commit), commit))

    # --- new and removed members --------------------------------------------------------
    def start_born(self) -> None:
        for mid, src in self.born:
            sn = SimNode(mid)
            sn.sm = MVCCStore(sn.backend)
            sn.checkpoint = Checkpoint(copy_backend(sn.backend), 0, sn.sm.current_revision)
            self.statics[mid] = [(i, m, src.ms.is_learner(i)) for i, m in src.ms.members.items()]
            self.nodes[mid] = sn
            self.ids.append(mid)
            self._boot(sn)
            self.trace(f"node {mid} started as a new member (table of node {src.id}: "
                       f"voters {src.ms.voters}, learners {src.ms.learners})")
        self.born = []

    def stop_removed(self) -> None:
        for mid, at in self.removed_at.items():
            sn = self.nodes.get(mid)
            if sn is None or sn.removed or self.now < at + GRACE_STEPS:
                continue
            sn.removed = True
            if sn.up:
                sn.up = False
                sn.incarnation += 1
                sn.node = None
            self.ids.remove(mid)
            self.stats["stopped"] += 1
            self.trace(f"node {mid} stopped for good (removed)")

    # --- member ops, on the leader ----------------------------------------------------------
    def view(self, lead: SimNode) -> ClusterView:
        st = lead.node.status()
        active = {lead.id}
        for sn in self.up_nodes():
            if sn.id != lead.id and (lead.id, sn.id) not in self.faults.blocked \
                    and self.now - lead.heard.get(sn.id, -10**9) <= ACTIVE_STEPS:
                active.add(sn.id)
        return ClusterView(frozenset(active), st.pending_conf_index > st.applied, st.commit,
                           {i: p[0] for i, p in st.progress.items()}, frozenset(self.removed_at))

    def mint(self, name: str, urls: list[str]) -> int:
        self.next_id += 1
        return self.next_id - 1

    def member_op(self, lead: SimNode, op: dict) -> bool:
        self.stats["member_ops"] += 1
        try:
            cc = lead.ms.check(op, self.view(lead), self.mint)
            lead.node.propose_conf_change(cc)
        except (errors.QkvError, ProposalDropped) as exc:
            self.stats["member_refused"] += 1
            self.trace(f"leader {lead.id}: {op} refused: {type(exc).__name__}")
            return False
        self.trace(f"leader {lead.id}: proposed {cc.type.name} {cc.node_id} ({op['op']})")
        return True

    def membership_events(self) -> None:
        rng = self.rng
        lead = self.leader()
        if lead is None:
            return
        ms = lead.ms
        if self.auto_promote and ms.learners and rng.random() < 0.2:
            mid = ms.promotion_candidate(self.view(lead))
            if mid is not None and self.member_op(lead, {"op": "member_promote", "member_id": mid}):
                self.stats["promotions"] += 1
        if rng.random() >= self.p_member:
            return
        kind = rng.choice(["add", "add", "promote", "remove", "remove", "update"])
        if kind == "add" and len(ms.members) < MAX_MEMBERS:
            k = self.next_id
            if self.member_op(lead, {"op": "member_add", "name": f"m{k}", "peer_urls": [f"sim://m{k}"],
                                     "is_learner": True}):
                self.stats["learners_added"] += 1
        elif kind == "promote" and ms.learners:
            if self.member_op(lead, {"op": "member_promote", "member_id": rng.choice(ms.learners)}):
                self.stats["promotions"] += 1
        elif kind == "update":
            target = rng.choice(sorted(ms.members))
            if self.member_op(lead, {"op": "member_update", "member_id": target,
                                     "peer_urls": [f"sim://{target}-{self.now}"]}):
                self.stats["updates"] += 1
        elif kind == "remove":
            target = lead.id if rng.random() < 0.4 else rng.choice(sorted(ms.members))
            if len(ms.voters) == 2 and target in ms.voters and not self.two_voter_removals:
                # Not from two voters to one: the survivor may restart with a commit index
                # below the removal (a commit-only hard state is not fsynced) and then need
                # the vote of a member that has stopped for good (etcd's two-member caveat;
                # the sim found it: see the module docstring).
                return
            if self.member_op(lead, {"op": "member_remove", "member_id": target}):
                self.stats["removals"] += 1
                self.stats["leader_removals"] += target == lead.id

    # --- steps ----------------------------------------------------------------------------
    def clients(self) -> None:
        super().clients()
        if self.safety:
            self.membership_events()

    def step(self, safety: bool = True) -> None:
        self.start_born()
        self.stop_removed()
        super().step(safety)

    def replay_command(self) -> str:
        extra = " --two-voter-removals" if self.two_voter_removals else ""
        return replay_command(self.seed, self.n) + " --membership" + extra
