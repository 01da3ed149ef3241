"""Membership: the member table and etcd's conf-change policy, with no I/O (etcd's
server/etcdserver/api/membership plus the --strict-reconfig-check rules of etcdserver).

The consensus actor owns one `Membership` and feeds it; this module decides, the actor does
the I/O (peer links, the removal marker, replies, logs). The simulator (tests/sim/membership.py)
drives the same class the same way.

    ms = Membership.initial(static_members, snapshot)   # at start: the WAL's compaction point
    cc = ms.check(op, view, mint_id)     # on the leader: a member op -> ConfChange, or raises
    applied = ms.apply(index, cc, conf)  # a committed CONF_CHANGE, with the core's new conf
    ms.restore(snapshot)                 # a snapshot from the leader replaced the log
    meta = ms.conf_at(index)             # the membership at a compaction point
    mid = ms.promotion_candidate(view)   # --auto-promote-learners
    standalone_changes(conf, log_ccs, self_id, me)  # --force-new-cluster

Rules:
- No I/O, no clock, no randomness: time and liveness arrive in a `ClusterView` (who was
  heard from recently and is connected, the leader's progress) and new ids come from the
  caller's `mint_id`.
- The Raft core is the authority on the conf state: `apply` takes the conf the core
  computed (RawNode.apply_conf_change) and only keeps the member table beside it;
  `next_conf` (the core's rule on plain sets) replays a log without a core.
- Strict reconfiguration (etcd --strict-reconfig-check, always on): one change at a time;
  adding a voter or promoting a learner needs a quorum of the NEW voter set among the
  active voters; removing an active voter (or ourselves) needs a quorum of the remaining
  voters among the active ones (removing a member that is down is safe); the only voter
  is never removed. Only voters count in these quorums: a learner never does.
- A learner is ready (promotable) when it is active and its match index is at least
  LEARNER_READY_RATIO of the leader's commit index (etcd: 90%).
- Member metadata (name, peer URLs, peer key) rides in a conf change's context; the table
  at a compaction point is packed into the snapshot metadata's context. A damaged context
  loses names, never ids.
- Removing a member takes it out of the table when the core's voters no longer hold it;
  `Applied.removed` says so (the caller keeps its link a grace period, and a member that
  removed itself stops).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import msgpack

from actors.consensus.raft.raft import next_conf
from actors.consensus.raft.types import ConfChange, ConfChangeType, ConfState, SnapshotMeta
from protocol import errors

CC = ConfChangeType
LEARNER_READY_RATIO = 0.9  # etcd: a learner is in sync once its match >= 90% of the commit


@dataclass(frozen=True)
class Member:
    """One member's metadata (the id is the table's key)."""

    name: str = ""
    peer_urls: tuple[str, ...] = ()
    peer_key: str = ""

    def meta(self) -> bytes:
        """The conf change context that carries this metadata."""
        return bytes(msgpack.packb({"name": self.name, "peer_urls": list(self.peer_urls),
                                    "peer_key": self.peer_key}, use_bin_type=True))

    @staticmethod
    def from_meta(context: bytes) -> Member | None:
        """A conf change's context; None when absent or undecodable (best effort)."""
        if not context:
            return None
        try:
            raw = msgpack.unpackb(context, raw=False)
            return Member(str(raw.get("name") or ""), tuple(str(u) for u in raw.get("peer_urls") or []),
                          str(raw.get("peer_key") or ""))
        except Exception:  # noqa: BLE001 - metadata is best effort; the conf change is not
            return None


class ClusterView(NamedTuple):
    """What the leader knows about the cluster right now (the caller gathers it)."""

    active: frozenset[int]  # members heard from recently and connected now, the leader included
    pending_conf: bool  # a conf change is not applied yet (pending_conf_index > applied)
    commit: int = 0  # the leader's commit index
    match: Mapping[int, int] = {}  # member id -> match index (leader's progress)
    removed: frozenset[int] = frozenset()  # ids removed before: never reused
    peer_security: bool = False  # the cluster runs peer security: adds need a peer key


@dataclass(frozen=True)
class Applied:
    """What applying one conf change did."""

    index: int
    cc: ConfChange
    before: ConfState
    after: ConfState
    removed: Member | None = None  # the member that left the table (REMOVE_NODE)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def quorum(n: int) -> int:
    return n // 2 + 1


def pack_members(members: Mapping[int, Member]) -> bytes:
    return bytes(msgpack.packb([[i, m.name, list(m.peer_urls), m.peer_key] for i, m in members.items()],
                               use_bin_type=True))


def unpack_members(data: bytes) -> dict[int, Member]:
    """A packed table; {} when empty or damaged (an old or damaged context: ids are still
    known from the conf state)."""
    if not data:
        return {}
    try:
        return {int(m[0]): Member(str(m[1]), tuple(str(u) for u in m[2]), str(m[3]) if len(m) > 3 else "")
                for m in msgpack.unpackb(data, raw=False)}
    except Exception:  # noqa: BLE001
        return {}


@dataclass
class Membership:
    """The member table beside the core's conf state, and the history of both since the
    last compaction point (for the snapshot metadata of the next one)."""

    members: dict[int, Member]
    conf: ConfState
    # (index, conf state, packed members) after each applied conf change, oldest first.
    history: list[tuple[int, ConfState, bytes]] = field(default_factory=list)

    # --- building ------------------------------------------------------------------------
    @classmethod
    def initial(cls, static: list[tuple[int, Member, bool]], snapshot: SnapshotMeta) -> Membership:
        """The membership at the WAL's compaction point: the snapshot's when it has one, else
        the static one (id, member, is_learner) this member started with. The log replays
        the rest."""
        members = {i: m for i, m, _ in static}
        conf = ConfState([i for i, _, learner in static if not learner], [i for i, _, learner in static if learner])
        ms = cls(members, conf.copy())
        ms.history = [(snapshot.index, ms.conf.copy(), ms.pack())]
        ms.restore(snapshot)
        return ms

    def restore(self, snap: SnapshotMeta) -> bool:
        """Take the membership of a snapshot's metadata (False: it carries none)."""
        if not snap.voters:
            return False
        packed = unpack_members(snap.context)
        self.members = {i: packed.get(i) or self.members.get(i) or Member()
                        for i in [*snap.voters, *snap.learners]}
        self.conf = snap.conf_state().copy()
        self.history = [(snap.index, self.conf.copy(), self.pack())]
        return True

    # --- reading -------------------------------------------------------------------------
    @property
    def voters(self) -> list[int]:
        return list(self.conf.voters)

    @property
    def learners(self) -> list[int]:
        return list(self.conf.learners)

    def raft_conf(self) -> ConfState:
        """The conf state to start the Raft core with (Config voters / learners)."""
        return self.conf.copy()

    def is_learner(self, mid: int) -> bool:
        return mid in self.conf.learners

    def pack(self) -> bytes:
        return pack_members(self.members)

    def conf_at(self, index: int) -> SnapshotMeta:
        """The membership as of log index `index` (for a compaction point); older history
        goes. Index and term are left 0 for the caller."""
        at = 0
        for k, (i, _, _) in enumerate(self.history):
            if i <= index:
                at = k
        del self.history[:at]
        _, conf, packed = self.history[0]
        return SnapshotMeta(0, 0, list(conf.voters), list(conf.learners), packed)

    # --- applying ------------------------------------------------------------------------
    def apply(self, index: int, cc: ConfChange, conf: ConfState) -> Applied:
        """A committed conf change at `index`; `conf` is the core's membership after it."""
        before = self.conf.copy()
        self.conf = conf.copy()
        mid = cc.node_id
        removed = None
        if cc.type in (CC.ADD_NODE, CC.ADD_LEARNER_NODE, CC.UPDATE_NODE):
            if mid in self.conf.voters or mid in self.conf.learners:
                old = self.members.get(mid, Member())
                new = Member.from_meta(cc.context) or Member()
                self.members[mid] = Member(new.name or old.name, new.peer_urls or old.peer_urls,
                                           new.peer_key or old.peer_key)
        elif cc.type == CC.REMOVE_NODE and mid not in self.conf.voters:
            removed = self.members.pop(mid, None)
        self.history.append((index, self.conf.copy(), self.pack()))
        return Applied(index, cc, before, self.conf.copy(), removed)

    # --- deciding (on the leader) ----------------------------------------------------------
    def active_voters(self, view: ClusterView) -> set[int]:
        return {v for v in self.conf.voters if v in view.active}

    def learner_ready(self, mid: int, view: ClusterView) -> bool:
        match = view.match.get(mid)
        return (match is not None and mid in self.conf.learners and mid in view.active
                and match >= int(LEARNER_READY_RATIO * view.commit))

    def check(self, op: Mapping[str, Any], view: ClusterView, mint_id: Callable[[str, list[str]], int]) -> ConfChange:
        """A member op (member_add / _remove / _update / _promote) as the conf change to
        propose, after etcd's checks (--strict-reconfig-check included); raises a
        protocol error otherwise. `mint_id(name, peer_urls)` gives a candidate id for an add."""
        name = op["op"]
        if view.pending_conf:
            raise errors.ConfChangeInProgress()
        voters = self.conf.voters
        active = len(self.active_voters(view))
        n = len(voters)
        if name == "member_add":
            urls = [str(u) for u in op["peer_urls"]]
            for m in self.members.values():
                if set(m.peer_urls) & set(urls):
                    raise errors.MemberExists("etcdserver: Peer URLs already exists")
                if op["name"] and m.name == op["name"]:
                    raise errors.MemberExists("etcdserver: member name already exists")
            if not op["is_learner"] and not (active == 1 and n == 1) and active < quorum(n + 1):
                raise errors.UnhealthyCluster("etcdserver: re-configuration failed due to not enough started members")
            key = str(op.get("peer_key", "") or "")
            if view.peer_security and not key:
                raise errors.InvalidArgument("etcdserver: this cluster runs peer security: member add needs the "
                                             "new member's peer_key (its public key, qkv keygen)")
            if key and any(m.peer_key == key for m in self.members.values()):
                raise errors.MemberExists("etcdserver: peer key already in use by another member")
            mid = 0
            while mid == 0 or mid in self.members or mid in view.removed:
                mid = mint_id(str(op["name"]), urls)
            meta = Member(str(op["name"]), tuple(urls), key).meta()
            return ConfChange(CC.ADD_LEARNER_NODE if op["is_learner"] else CC.ADD_NODE, mid, meta)
        mid = int(op["member_id"])
        if mid not in self.members:
            raise errors.MemberNotFound()
        if name == "member_remove":
            if mid in voters:
                if n == 1:
                    raise errors.UnhealthyCluster("etcdserver: cannot remove the only voting member")
                # A member that is down is not part of the active quorum: removing it is safe.
                # (The leader is in view.active: removing it counts like removing any active voter.)
                if mid in view.active and active - 1 < quorum(n - 1):
                    raise errors.UnhealthyCluster("etcdserver: unhealthy cluster: removing this member "
                                                  "would leave too few active members for a quorum")
            return ConfChange(CC.REMOVE_NODE, mid, b"")
        if name == "member_update":
            urls = [str(u) for u in op["peer_urls"]]
            for other, m in self.members.items():
                if other != mid and set(m.peer_urls) & set(urls):
                    raise errors.MemberExists("etcdserver: Peer URLs already exists")
            old = self.members[mid]
            return ConfChange(CC.UPDATE_NODE, mid, Member(old.name, tuple(urls), old.peer_key).meta())
        if name != "member_promote":
            raise errors.InvalidArgument(f"unknown member op {name!r}")
        if mid not in self.conf.learners:
            raise errors.MemberNotLearner()
        if not self.learner_ready(mid, view):
            raise errors.LearnerNotReady()
        if active + 1 < quorum(n + 1):
            raise errors.UnhealthyCluster("etcdserver: re-configuration failed due to not enough started members")
        return ConfChange(CC.ADD_NODE, mid, b"")

    def promotion_candidate(self, view: ClusterView) -> int | None:
        """--auto-promote-learners: the first learner that is ready, when no change is
        pending (the leader then proposes member_promote for it)."""
        if view.pending_conf:
            return None
        for mid in self.conf.learners:
            if self.learner_ready(mid, view):
                return mid
        return None


def standalone_changes(conf: ConfState, ccs: list[ConfChange], self_id: int, me: Member) -> list[ConfChange]:
    """--force-new-cluster: the conf changes that leave only `self_id` as a voter, after the
    membership `conf` (at the log's compaction point) replayed through the log's `ccs`
    (etcd: restartAsStandaloneNode)."""
    voters, learners = replay(set(conf.voters), set(conf.learners), ccs)
    changes = []
    if self_id not in voters:
        changes.append(ConfChange(CC.ADD_NODE, self_id, me.meta()))
    changes += [ConfChange(CC.REMOVE_NODE, i, b"") for i in sorted((voters | learners) - {self_id})]
    return changes


def replay(voters: set[int], learners: set[int], ccs: list[ConfChange]) -> tuple[set[int], set[int]]:
    """The membership after `ccs`, by the core's rule (a refused change keeps the sets)."""
    for cc in ccs:
        v, lrn = next_conf(voters, learners, cc)
        if v:
            voters, learners = v, lrn
    return voters, learners
