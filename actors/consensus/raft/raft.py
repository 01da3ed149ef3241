"""The Raft protocol as a pure, deterministic state machine (after etcd-io/raft raft.go).

Rules:
- No I/O, no clock, no global randomness: time is `tick()`, randomness is `config.rng`.
- Outputs accumulate in `msgs` and `read_states`; RawNode hands them out in a Ready.
  Every message produced here may depend on state (term, vote, entries) that is persisted
  by the shell before the message is sent (persist -> send), except a leader's: when its
  Ready changes neither term nor vote (Ready.send_early), the shell sends first (Raft thesis
  10.2.1; its APPs carry entries not on its disk yet, which the next rule makes safe).
- The leader counts its own log as replicated only up to what it has persisted: its own
  `match` is advanced by RawNode.advance(), never when appending. So a commit counts only
  durable copies, wherever the leader's fsync is.
- Commit only entries of the current term by counting replicas (paper 5.4.2).
- A broken invariant is an `assert`; a caller's misuse raises; a peer's garbage never
  reaches here in a shape the code does not expect (see types.validate_message), and
  impossible values that do (acks beyond our log) are ignored.

Membership changes (etcd's single-step ConfChange, learners included):
- A CONF_CHANGE entry takes effect when the shell APPLIES it (RawNode.apply_conf_change,
  as etcd's ApplyConfChange), not when it is appended: every member switches at the
  same log position, and a restarted member replays them from its log (or takes the
  membership from a snapshot's metadata, which carries the conf state at its index).
- One change at a time: the leader refuses a conf change while an earlier one is not
  yet applied (pending_conf_index > applied; a new leader counts its whole log as
  possibly pending). Changes are idempotent (add an existing voter: no-op), so a replay
  over a newer membership converges to the same one.
- Quorums (commit, votes, read-index acks, check-quorum) count voters only; learners get
  appends and heartbeats but are never asked for votes and never campaign.
- A leader that applies its own removal sends its commit index to everyone, asks the
  most up-to-date remaining voter to campaign at once (TIMEOUT_NOW), and steps down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .log import RaftLog
from .progress import ProgressState, ProgressTracker, VoteResult
from .storage import MemoryStorage
from .types import (CAMPAIGN_TRANSFER, Config, ConfChange, ConfChangeRefused, ConfChangeType,
                    ConfState, Entry, EntryType, HardState, Message, MessageType, ProposalDropped,
                    ReadState, SoftState, StateType, vote_resp_type)

MT = MessageType


class CampaignType(Enum):
    PRE_ELECTION = "pre_election"
    ELECTION = "election"
    TRANSFER = "transfer"


@dataclass
class ReadIndexStatus:
    req: Message
    index: int  # the leader's commit index when the request arrived
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """Pending ReadIndex requests, in arrival order (etcd readOnly, safe mode).

    A quorum of heartbeat acks for a request's ctx confirms it and every earlier one.
    Contexts must be unique among pending requests (the shell makes them so).
    """

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        if m.context in self.pending:
            return
        self.pending[m.context] = ReadIndexStatus(m, index)
        self.queue.append(m.context)

    def recv_ack(self, id_: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(id_)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        if ctx not in self.pending:
            return []
        i = self.queue.index(ctx)
        done = [self.pending.pop(c) for c in self.queue[:i + 1]]
        del self.queue[:i + 1]
        return done

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""


class Raft:
    def __init__(self, config: Config, storage: MemoryStorage):
        config.validate()
        self.id = config.id
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.pre_vote = config.pre_vote
        self.check_quorum = config.check_quorum
        self.max_size_per_msg = config.max_size_per_msg
        self.log = RaftLog(storage, config.applied)
        self.prs = ProgressTracker(config.voters, config.max_inflight_msgs, config.learners,
                                   config.max_inflight_bytes)
        # Index of the last conf change appended; a new one waits until it is applied.
        self.pending_conf_index = 0

        self.term = 0
        self.vote = 0  # voted for in `term`; 0 = nobody
        self.lead = 0  # known leader of `term`; 0 = none
        self.state = StateType.FOLLOWER
        self.lead_transferee = 0  # leader only: transfer target, 0 = none
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []  # until a commit in our term
        self.election_elapsed = 0  # ticks since last reset; leader: since last check-quorum
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout  # in [et, 2*et)

        hs = storage.initial_state()
        if hs != HardState():
            self.load_state(hs)
        self.become_follower(self.term, 0)

    # --- state ---------------------------------------------------------------------------
    def load_state(self, hs: HardState) -> None:
        assert hs.commit <= self.log.last_index(), f"hard state commit beyond the log: {hs}"
        self.log.commit_to(hs.commit)
        self.term = hs.term
        self.vote = hs.vote

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def promotable(self) -> bool:
        """Only voters campaign (learners and removed members never do)."""
        return self.id in self.prs.voters

    def conf_state(self) -> ConfState:
        return ConfState(list(self.prs.voters), list(self.prs.learners))

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = (
            self.election_timeout + self.rng.randrange(self.election_timeout))

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.prs.reset_votes()
        self.prs.reset_progress(0, self.log.last_index() + 1)
        if self.id in self.prs.progress:
            # Only what we have persisted counts as replicated on ourselves.
            self.prs.progress[self.id].match = self.log.stable_last_index()
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    def become_follower(self, term: int, lead: int) -> None:
        self.reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_candidate(self) -> None:
        assert self.state != StateType.LEADER, "invalid transition leader -> candidate"
        self.reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def become_pre_candidate(self) -> None:
        assert self.state != StateType.LEADER, "invalid transition leader -> pre-candidate"
        # Pre-vote changes neither term nor vote.
        self.prs.reset_votes()
        self.lead = 0
        self.state = StateType.PRE_CANDIDATE

    def become_leader(self) -> None:
        assert self.state != StateType.FOLLOWER, "invalid transition follower -> leader"
        self.reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        me = self.prs.progress[self.id]
        me.become_replicate()
        me.match = self.log.stable_last_index()
        me.next = self.log.last_index() + 1
        me.recent_active = True
        # Anything in our log may be an unapplied conf change: wait for it (etcd).
        self.pending_conf_index = self.log.last_index()
        # An empty entry of our term: lets us commit (and learn the commit index) soon.
        self.append_entry([Entry(0, 0, int(EntryType.NORMAL), b"")])

    # --- outputs -------------------------------------------------------------------------
    def send(self, m: Message) -> None:
        if m.frm == 0:
            m.frm = self.id
        if m.type in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            assert m.term != 0, f"term must be set for {m.type.name}"
        else:
            assert m.term == 0, f"term must not be set for {m.type.name}"
            if m.type not in (MT.PROP, MT.READ_INDEX):
                m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        ents = self.log.entries(pr.next, self.max_size_per_msg)
        if prev_term is None or ents is None:
            # The entries are compacted away: the peer needs a snapshot.
            return self.send_snapshot(to)
        if not ents and not send_if_empty:
            return False
        self.send(Message(MT.APP, to, self.id, index=prev_index, log_term=prev_term,
                          entries=ents, commit=self.log.committed))
        pr.sent_entries(len(ents), ents[-1].index if ents else 0, sum(e.size() for e in ents))
        return True

    def send_snapshot(self, to: int) -> bool:
        """Send SNAP with our compaction point; the shell moves the data (etcd sendSnapshot)."""
        pr = self.prs.progress[to]
        if not pr.recent_active:
            return False  # do not start a costly transfer to a peer we have not heard from
        meta = self.log.snapshot()
        assert meta.index > 0, "entries compacted but no snapshot"
        self.send(Message(MT.SNAP, to, self.id, snapshot=meta))
        pr.become_snapshot(meta.index)  # paused until it acks or the shell reports
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # A follower may not have all committed entries yet: never tell it more.
        commit = min(self.prs.progress[to].match, self.log.committed)
        self.send(Message(MT.HEARTBEAT, to, self.id, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        for to in self.prs.ids():
            if to != self.id:
                self.send_append(to)

    def bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_request_ctx()
        for to in self.prs.ids():
            if to != self.id:
                self.send_heartbeat(to, ctx)

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(MT.TIMEOUT_NOW, to, self.id))

    # --- log -----------------------------------------------------------------------------
    def append_entry(self, es: list[Entry]) -> None:
        li = self.log.last_index()
        for i, e in enumerate(es):
            e.term = self.term
            e.index = li + 1 + i
        self.log.append(es)
        # No self-ack here: our own match advances when the entries are persisted.

    def maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.prs.committed(), self.term)

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def on_persisted(self, index: int) -> None:
        """Entries up to index are stable on our disk (called from RawNode.advance)."""
        if self.state != StateType.LEADER:
            return
        me = self.prs.progress[self.id]
        if me.maybe_update(index):
            self.after_match_advanced()

    def after_match_advanced(self) -> None:
        if self.maybe_commit():
            self.release_pending_read_index_messages()
            self.bcast_append()

    def release_pending_read_index_messages(self) -> None:
        if not self.committed_entry_in_current_term():
            return
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self.send_read_index_response(m)

    # --- time ----------------------------------------------------------------------------
    def tick(self) -> None:
        if self.state == StateType.LEADER:
            self.tick_heartbeat()
        else:
            self.tick_election()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MT.HUP, self.id, self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.do_check_quorum()
            if self.state == StateType.LEADER and self.lead_transferee:
                self.abort_leader_transfer()  # it did not finish within an election timeout
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, self.id, self.id))

    def do_check_quorum(self) -> None:
        if not self.prs.quorum_active(self.id):
            self.become_follower(self.term, 0)
            return
        for id_, pr in self.prs.progress.items():
            if id_ != self.id:
                pr.recent_active = False

    # --- elections -----------------------------------------------------------------------
    def hup(self, t: CampaignType) -> None:
        if self.state == StateType.LEADER or not self.promotable():
            return
        self.campaign(t)

    def campaign(self, t: CampaignType) -> None:
        if t == CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1  # the term we would campaign in; ours does not change
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        if self.poll(self.id, vote_resp_type(vote_msg), True) == VoteResult.WON:
            # Single voter: won at once.
            if t == CampaignType.PRE_ELECTION:
                self.campaign(CampaignType.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if t == CampaignType.TRANSFER else b""
        for to in self.prs.voters:
            if to != self.id:
                self.send(Message(vote_msg, to, self.id, term=term, index=self.log.last_index(),
                                  log_term=self.log.last_term(), context=ctx))

    def poll(self, id_: int, t: MessageType, granted: bool) -> VoteResult:
        self.prs.record_vote(id_, granted)
        return self.prs.tally_votes()[2]

    # --- step ----------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        """Process one message; raises ProposalDropped for a proposal that cannot be taken."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.check_quorum and self.lead != 0
                            and self.election_elapsed < self.election_timeout)
                if not force and in_lease:
                    # We heard from a leader within the minimum election timeout: ignore
                    # (without raising our term), so a partitioned node cannot disrupt.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change our term in response to a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # the term in a granted pre-vote is the future term we asked for
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, 0)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. back from a partition) learns our term and steps down.
                self.send(Message(MT.APP_RESP, m.frm, self.id))
            elif m.type == MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, m.frm, self.id, term=self.term, reject=True))
            return

        if m.type == MT.HUP:
            if self.pre_vote:
                self.hup(CampaignType.PRE_ELECTION)
            else:
                self.hup(CampaignType.ELECTION)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            can_vote = (self.vote == m.frm
                        or (self.vote == 0 and self.lead == 0)
                        or (m.type == MT.PRE_VOTE and m.term > self.term))
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self.send(Message(vote_resp_type(m.type), m.frm, self.id, term=m.term))
                if m.type == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(vote_resp_type(m.type), m.frm, self.id, term=self.term,
                                  reject=True))
        elif self.state == StateType.LEADER:
            self.step_leader(m)
        elif self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
            self.step_candidate(m)
        else:
            self.step_follower(m)

    def step_leader(self, m: Message) -> None:
        if m.type == MT.BEAT:
            self.bcast_heartbeat()
            return
        if m.type == MT.PROP:
            assert m.entries, "empty proposal"
            if self.id not in self.prs.voters:
                raise ProposalDropped("not a voter")
            if self.lead_transferee:
                raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
            conf_at = [i for i, e in enumerate(m.entries) if e.type == EntryType.CONF_CHANGE]
            if conf_at:
                if len(conf_at) > 1:
                    raise ConfChangeRefused("one membership change at a time")
                if self.pending_conf_index > self.log.applied:
                    raise ConfChangeRefused(
                        "a membership change is still in progress (not yet applied); retry later")
                self.pending_conf_index = self.log.last_index() + 1 + conf_at[0]
            self.append_entry(m.entries)
            self.bcast_append()
            return
        if m.type == MT.READ_INDEX:
            if not self.committed_entry_in_current_term():
                # Our commit index may be stale until we commit an entry of our term.
                self.pending_read_index_messages.append(m)
                return
            self.send_read_index_response(m)
            return
        if m.type == MT.TRANSFER_LEADER:
            self.handle_transfer_leader(m)
            return

        pr = self.prs.progress.get(m.frm)
        if pr is None or m.frm == self.id:
            return
        if m.type == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                next_probe_idx = m.reject_hint
                if m.log_term > 0:
                    next_probe_idx, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, next_probe_idx):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self.send_append(m.frm)
                return
            if m.index > self.log.last_index():
                return  # acknowledges entries we never had: garbage, ignore
            old_paused = pr.is_paused()
            if not (pr.maybe_update(m.index)
                    or (pr.match == m.index and pr.state == ProgressState.PROBE)):
                return
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT:
                if pr.match >= pr.pending_snapshot or pr.match + 1 >= self.log.first_index():
                    # It has the snapshot (or caught up otherwise): back to the log.
                    pr.become_probe()
                    pr.become_replicate()
            else:
                pr.inflights.free_le(m.index)
            if self.maybe_commit():
                self.release_pending_read_index_messages()
                self.bcast_append()
            elif old_paused:
                self.send_append(m.frm)
            # Pipeline: keep sending while the window allows.
            while self.maybe_send_append(m.frm, False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self.send_timeout_now(m.frm)
        elif m.type == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                # Acks may have been lost: open the window by one so replication resumes
                # (a gap makes the follower reject, and we fall back to probing).
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self.send_append(m.frm)
            if not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None or not self.prs.acks_reach_quorum(acks):
                return
            for rs in self.read_only.advance(m.context):
                self.respond_to_read_index_req(rs.req, rs.index)

    def send_read_index_response(self, m: Message) -> None:
        if self.prs.is_singleton():
            self.respond_to_read_index_req(m, self.log.committed)
            return
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self.bcast_heartbeat(m.context)

    def respond_to_read_index_req(self, req: Message, read_index: int) -> None:
        if req.frm == 0 or req.frm == self.id:
            self.read_states.append(ReadState(read_index, req.context))
        else:
            self.send(Message(MT.READ_INDEX_RESP, req.frm, self.id, index=read_index,
                              context=req.context))

    def handle_transfer_leader(self, m: Message) -> None:
        transferee = m.frm
        if transferee not in self.prs.voters:
            return  # learners and strangers cannot lead
        if self.lead_transferee:
            if self.lead_transferee == transferee:
                return  # already in progress
            self.abort_leader_transfer()
        if transferee == self.id:
            return
        self.lead_transferee = transferee
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        if self.prs.progress[transferee].match == self.log.last_index():
            self.send_timeout_now(transferee)
        else:
            self.send_append(transferee)

    def report_unreachable(self, id_: int) -> None:
        pr = self.prs.progress.get(id_)
        if self.state == StateType.LEADER and pr is not None and id_ != self.id:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()

    def report_snapshot(self, id_: int, ok: bool) -> None:
        """The shell finished sending a snapshot to id_ (ok) or gave up (etcd MsgSnapStatus)."""
        pr = self.prs.progress.get(id_)
        if self.state != StateType.LEADER or pr is None or id_ == self.id:
            return
        if pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0  # probe from match: the log or another snapshot
        pr.become_probe()
        # Wait for the peer's APP_RESP (ok) or a heartbeat round (failure) before the next
        # APP, so a failing transfer is retried at most once per heartbeat.
        pr.probe_sent = True

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = 0

    def step_candidate(self, m: Message) -> None:
        my_vote_resp = (MT.PRE_VOTE_RESP if self.state == StateType.PRE_CANDIDATE
                        else MT.VOTE_RESP)
        if m.type == MT.PROP:
            raise ProposalDropped("no leader")
        if m.type == MT.APP:
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif m.type == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif m.type == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif m.type == my_vote_resp:
            res = self.poll(m.frm, m.type, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                self.become_follower(self.term, 0)
        # TIMEOUT_NOW, TRANSFER_LEADER and the rest are ignored while campaigning.

    def step_follower(self, m: Message) -> None:
        if m.type == MT.PROP:
            raise ProposalDropped("not leader" if self.lead else "no leader")
        if m.type == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif m.type == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif m.type == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif m.type == MT.TRANSFER_LEADER:
            if self.lead == 0:
                return
            self.send(Message(MT.TRANSFER_LEADER, self.lead, m.frm))
        elif m.type == MT.TIMEOUT_NOW:
            # Transfers skip pre-vote: we know the leader wants us to take over.
            self.hup(CampaignType.TRANSFER)
        elif m.type == MT.READ_INDEX:
            if self.lead == 0:
                return  # RawNode.read_index raises ProposalDropped before we get here
            self.send(Message(MT.READ_INDEX, self.lead, m.frm, context=m.context))
        elif m.type == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def handle_append_entries(self, m: Message) -> None:
        if m.index < self.log.committed:
            self.send(Message(MT.APP_RESP, m.frm, self.id, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(Message(MT.APP_RESP, m.frm, self.id, index=last_new))
            return
        # Fast back-off: tell the leader the largest index whose term is <= m.log_term.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self.send(Message(MT.APP_RESP, m.frm, self.id, index=m.index, reject=True,
                          reject_hint=hint_index, log_term=hint_term))

    def handle_heartbeat(self, m: Message) -> None:
        if m.commit <= self.log.last_index():
            self.log.commit_to(m.commit)
        self.send(Message(MT.HEARTBEAT_RESP, m.frm, self.id, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        """SNAP from the leader; the shell has installed the data (at an applied index >=
        the snapshot's) in the state machine before stepping it (etcd handleSnapshot)."""
        snap = m.snapshot
        assert snap is not None
        if snap.index <= self.log.committed:
            pass  # old news: we have it all already
        elif self.log.match_term(snap.index, snap.term):
            # Our log has the snapshot's last entry: it is committed, keep the log.
            self.log.commit_to(snap.index)
        else:
            self.log.restore(snap)
            if snap.voters:
                # The membership as of the snapshot (etcd restore: the conf state).
                self.prs.set_conf(snap.voters, snap.learners, self.log.last_index() + 1)
            self.send(Message(MT.APP_RESP, m.frm, self.id, index=self.log.last_index()))
            return
        self.send(Message(MT.APP_RESP, m.frm, self.id, index=self.log.committed))

    # --- membership ----------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change (the shell calls this when it applies the entry);
        returns the new membership. Changes that make no sense (remove the last voter,
        demote a voter) leave the membership as it is."""
        voters, learners = next_conf(set(self.prs.voters), set(self.prs.learners), cc)
        if not voters:
            return self.conf_state()
        if voters != set(self.prs.voters) or learners != set(self.prs.learners):
            self.switch_to_config(sorted(voters), sorted(learners))
        return self.conf_state()

    def switch_to_config(self, voters: list[int], learners: list[int]) -> None:
        """etcd switchToConfig: progress follows the membership; a leader that is no longer
        a voter hands over and steps down; otherwise it commits what the new quorum allows
        and probes new members at once."""
        self.prs.set_conf(voters, learners, max(self.log.last_index(), 1))
        if self.lead_transferee and self.lead_transferee not in self.prs.voters:
            self.abort_leader_transfer()
        if self.state != StateType.LEADER:
            if not self.promotable() and self.state in (StateType.CANDIDATE,
                                                        StateType.PRE_CANDIDATE):
                self.become_follower(self.term, 0)
            return
        if self.id not in self.prs.voters:
            self.step_down_removed()
            return
        if self.maybe_commit():
            self.release_pending_read_index_messages()
            self.bcast_append()
        else:
            for to in self.prs.ids():
                if to != self.id:
                    self.maybe_send_append(to, False)

    def step_down_removed(self) -> None:
        """We lead but are no longer a voter: tell everyone the commit index, ask the most
        up-to-date voter to take over now (no election timeout), and follow."""
        candidates = [(pr.match, id_) for id_, pr in self.prs.progress.items()
                      if id_ in self.prs.voters and id_ != self.id]
        for to in self.prs.ids():
            if to != self.id:
                self.send_heartbeat(to, b"")
        if candidates:
            _, target = max(candidates)
            self.send_timeout_now(target)
        self.become_follower(self.term, 0)


def next_conf(voters: set[int], learners: set[int], cc: ConfChange) -> tuple[set[int], set[int]]:
    """The single-step conf-change rule on plain sets (new sets; the inputs are not changed).
    The core applies it (Raft.apply_conf_change) and the shell replays a log with it.

    Rules: ADD_NODE makes a voter (promoting a learner); ADD_LEARNER_NODE adds a learner
    unless it is a voter already (no demotion); REMOVE_NODE drops the member; UPDATE_NODE
    changes nothing. A result with no voter means "refused": callers keep the old sets."""
    voters, learners = set(voters), set(learners)
    nid = cc.node_id
    if cc.type == ConfChangeType.ADD_NODE:
        learners.discard(nid)
        voters.add(nid)
    elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
        if nid not in voters:
            learners.add(nid)
    elif cc.type == ConfChangeType.REMOVE_NODE:
        voters.discard(nid)
        learners.discard(nid)
    return voters, learners
