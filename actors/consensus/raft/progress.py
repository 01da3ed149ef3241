"""Leader-side view of each peer's log (etcd tracker/progress.go), votes and quorums.

Rules:
- Invariant: match < next; match is the highest index known replicated on the peer
  (for the leader itself: known persisted).
- PROBE: one APP in flight at a time, until the peer answers. REPLICATE: pipelined APPs,
  at most max_inflight of them unacknowledged (flow control). SNAPSHOT: the entries the
  peer needs are compacted away; a SNAP was sent and no APP goes until the peer acks an
  index >= pending_snapshot or the shell reports the transfer (RawNode.report_snapshot).
- Nothing here performs I/O.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2  # a snapshot is being sent to the peer; paused


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class Inflights:
    """Last indexes of APPs sent but not yet acknowledged, oldest first, with their entry
    bytes. Full at `capacity` messages or, when `max_bytes` > 0, at `max_bytes` bytes
    (etcd raft's MaxInflightMsgs and MaxInflightBytes: one slow follower costs the leader
    at most that much in flight)."""

    def __init__(self, capacity: int, max_bytes: int = 0):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._q: deque[tuple[int, int]] = deque()

    def add(self, index: int, size: int = 0) -> None:
        assert not self.full(), "inflights overflow"
        self._q.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        while self._q and self._q[0][0] <= index:
            self.bytes -= self._q.popleft()[1]

    def free_first_one(self) -> None:
        if self._q:
            self.bytes -= self._q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.capacity or (self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._q)


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflights", "recent_active",
                 "pending_snapshot")

    def __init__(self, match: int, next_: int, max_inflight: int, max_inflight_bytes: int = 0):
        self.match = match  # match < next
        self.next = next_
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an APP is outstanding, wait for an answer
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        self.recent_active = False  # heard from the peer since the last check-quorum
        self.pending_snapshot = 0  # SNAPSHOT: index of the snapshot being sent

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            # The snapshot (if it was installed) covers up to pending_snapshot.
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """The entries the peer needs are compacted away: a SNAP at snapshot_index is sent."""
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.pending_snapshot = snapshot_index
        self.inflights.reset()

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged entries up to n; False if that is stale news."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an APP at index `rejected`; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, n_entries: int, last_index: int, size: int = 0) -> None:
        if self.state == ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


class ProgressTracker:
    """Progress of every member (voters and learners); quorums count voters only."""

    def __init__(self, voters: list[int], max_inflight: int, learners: list[int] | None = None,
                 max_inflight_bytes: int = 0):
        self.voters = sorted(voters)
        self.learners = sorted(learners or [])
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.reset_progress(0, 1)

    def ids(self) -> list[int]:
        """Every member that gets appends: voters then learners."""
        return self.voters + self.learners

    def reset_progress(self, match: int, next_: int) -> None:
        self.progress = {v: Progress(match, next_, self.max_inflight, self.max_inflight_bytes) for v in self.ids()}

    def set_conf(self, voters: list[int], learners: list[int], next_: int) -> None:
        """Switch to a new membership: new members start probing at next_, members that
        stay keep their progress, removed ones are forgotten."""
        assert not set(voters) & set(learners), "voters and learners overlap"
        self.voters = sorted(voters)
        self.learners = sorted(learners)
        old = self.progress
        self.progress = {}
        for id_ in self.ids():
            pr = old.get(id_)
            if pr is None:
                pr = Progress(0, next_, self.max_inflight, self.max_inflight_bytes)
                pr.recent_active = True  # not counted as dead before it had a chance
            self.progress[id_] = pr
        self.votes = {k: v for k, v in self.votes.items() if k in self.progress}

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1 if self.voters else 1

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        """Highest index replicated on a quorum of voters."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[self.quorum() - 1]

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, id_: int, granted: bool) -> None:
        if id_ in self.voters and id_ not in self.votes:
            self.votes[id_] = granted

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        return granted, rejected, self.vote_result(granted, rejected)

    def vote_result(self, granted: int, rejected: int) -> VoteResult:
        q = self.quorum()
        if granted >= q:
            return VoteResult.WON
        if len(self.voters) - rejected < q:
            return VoteResult.LOST
        return VoteResult.PENDING

    def acks_reach_quorum(self, acks: set[int]) -> bool:
        return sum(1 for v in self.voters if v in acks) >= self.quorum()

    def quorum_active(self, self_id: int) -> bool:
        active = sum(1 for v in self.voters if v == self_id or self.progress[v].recent_active)
        return active >= self.quorum()
