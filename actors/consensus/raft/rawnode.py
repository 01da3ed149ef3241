"""RawNode: the thread-unsafe, I/O-free handle the actor shell drives (etcd rawnode.go).

The shell's loop, in this order (actors/consensus/ready.py does it):
    rd = node.ready()
    if rd.send_early: send rd.messages (a leader's: Raft thesis 10.2.1)
    if rd.snapshot: persist it (drop the whole log, record the meta);
                    storage.apply_snapshot(rd.snapshot)
    persist rd.hard_state / rd.entries (fsync if rd.must_sync); storage.append(rd.entries)
    send rd.messages (unless sent early)
    apply rd.committed_entries
    node.advance(rd)
Rules:
- Nothing here performs I/O.
- One Ready at a time: ready() must be followed by advance() before the next ready().
- step() takes messages from peers only; it raises ValueError for garbage (bad shape,
  local message types, wrong addressee), checked before the core sees the message. A
  well-shaped APP that contradicts our committed log also raises ValueError (only a
  faulty peer can send one); the message's term may have been adopted by then.
- Snapshots (etcd's design): a SNAP in rd.messages carries only metadata (the leader's
  compaction point). The sender's shell moves the state machine's data (taken at its
  applied index A >= snapshot.index) to the peer out of band and then calls
  report_snapshot(peer, ok). The receiver's shell installs the data in its state machine
  first and only then steps the SNAP; the next Ready may carry rd.snapshot.
- propose() / read_index() raise ProposalDropped when this node cannot take the request
  (not leader, no known leader, leadership transfer in progress); the shell forwards or
  retries.
- Membership: propose_conf_change() appends a CONF_CHANGE entry (ConfChangeRefused while
  another one is unapplied); when the shell applies that committed entry it calls
  apply_conf_change(), which switches the core's membership (see raft.py).
"""

from __future__ import annotations

from .raft import Raft
from .storage import MemoryStorage
from .types import (LOCAL_MESSAGE_TYPES, Config, ConfChange, ConfState, ProposalDropped, Entry, EntryType,
                    HardState, Message, MessageType, Ready, SoftState, StateType, Status, validate_message)

MT = MessageType


class RawNode:
    def __init__(self, config: Config, storage: MemoryStorage):
        self.raft = Raft(config, storage)
        self.prev_soft_state: SoftState = self.raft.soft_state()
        self.prev_hard_state: HardState = storage.initial_state()
        self._pending: Ready | None = None  # handed out by ready(), awaiting advance()

    # --- inputs --------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MT.HUP, self.raft.id, self.raft.id))

    def propose(self, data: bytes) -> None:
        """Append data to the log if we are leader; else raise ProposalDropped."""
        if type(data) is not bytes:
            raise TypeError("propose: data must be bytes")
        self.raft.step(Message(MT.PROP, self.raft.id, self.raft.id,
                               entries=[Entry(0, 0, int(EntryType.NORMAL), data)]))

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose several entries at once: one APP per follower carries them all."""
        if not datas:
            return
        if any(type(d) is not bytes for d in datas):
            raise TypeError("propose_batch: data must be bytes")
        self.raft.step(Message(MT.PROP, self.raft.id, self.raft.id,
                               entries=[Entry(0, 0, int(EntryType.NORMAL), d) for d in datas]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Append a membership change if we lead; raises ProposalDropped (or its subclass
        ConfChangeRefused while an earlier change is not applied yet)."""
        if not isinstance(cc, ConfChange):
            raise TypeError("propose_conf_change: not a ConfChange")
        self.raft.step(Message(MT.PROP, self.raft.id, self.raft.id,
                               entries=[Entry(0, 0, int(EntryType.CONF_CHANGE), cc.to_bytes())]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """The shell applies a committed CONF_CHANGE entry: switch the membership."""
        return self.raft.apply_conf_change(cc)

    def report_unreachable(self, id_: int) -> None:
        """The transport failed to send to id_: stop pipelining to it and probe instead."""
        self.raft.report_unreachable(id_)

    def report_snapshot(self, id_: int, ok: bool) -> None:
        """The shell finished moving a snapshot's data to id_ (ok=True; the peer's APP_RESP
        then resumes replication) or failed (ok=False: retried after a heartbeat)."""
        self.raft.report_snapshot(id_, ok)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; a ReadState(index, ctx) follows in a Ready.

        ctx must be non-empty and unique among pending requests cluster-wide.
        Raises ProposalDropped when there is no leader to ask.
        """
        if type(ctx) is not bytes or not ctx:
            raise ValueError("read_index: ctx must be non-empty bytes")
        if self.raft.state != StateType.LEADER and self.raft.lead == 0:
            raise ProposalDropped("no leader")
        self.raft.step(Message(MT.READ_INDEX, self.raft.id, self.raft.id, context=ctx))

    def transfer_leader(self, to: int) -> None:
        self.raft.step(Message(MT.TRANSFER_LEADER, self.raft.id, to))

    def step(self, m: Message) -> None:
        """Feed a message from a peer. Raises ValueError for garbage."""
        if not isinstance(m, Message):
            raise ValueError("step: not a Message")
        validate_message(m)
        if m.type in LOCAL_MESSAGE_TYPES:
            raise ValueError("step: local message type from the network")
        if m.to != self.raft.id:
            raise ValueError(f"step: message for {m.to}, this is {self.raft.id}")
        if m.frm == self.raft.id and m.type not in (MT.TRANSFER_LEADER, MT.READ_INDEX):
            # (Forwarded TRANSFER_LEADER / READ_INDEX carry the requester as frm and may
            # come back to it after a leader change.)
            raise ValueError("step: message claims to come from this node")
        self.raft.step(m)

    # --- outputs -------------------------------------------------------------------------
    def has_ready(self) -> bool:
        r = self.raft
        if r.soft_state() != self.prev_soft_state:
            return True
        if r.hard_state() != self.prev_hard_state:
            return True
        return bool(r.log.unstable or r.msgs or r.read_states or r.log.unstable_snapshot
                    or r.log.committed > r.log.applied)

    def ready(self) -> Ready:
        assert self._pending is None, "ready() called again before advance()"
        r = self.raft
        ss = r.soft_state()
        hs = r.hard_state()
        prev = self.prev_hard_state
        entries = list(r.log.unstable)
        snap = r.log.unstable_snapshot
        rd = Ready(
            soft_state=ss if ss != self.prev_soft_state else None,
            hard_state=hs if hs != prev else None,
            entries=entries,
            committed_entries=r.log.next_committed_entries(),
            messages=r.msgs,
            read_states=r.read_states,
            must_sync=(bool(entries) or snap is not None
                       or hs.term != prev.term or hs.vote != prev.vote),
            snapshot=snap.copy() if snap is not None else None,
            # prev is what the shell persisted: the last Ready was persisted before advance().
            send_early=(ss.raft_state == StateType.LEADER and snap is None
                        and hs.term == prev.term and hs.vote == prev.vote),
        )
        r.msgs = []
        r.read_states = []
        self.prev_soft_state = ss
        self.prev_hard_state = hs
        self._pending = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell has persisted, sent and applied everything in rd."""
        assert rd is self._pending, "advance() with a Ready that was not the last one handed out"
        self._pending = None
        r = self.raft
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
        if rd.snapshot is not None or rd.entries:
            r.on_persisted(r.log.stable_last_index())

    def status(self) -> Status:
        r = self.raft
        progress = {}
        active: set[int] = set()
        if r.state == StateType.LEADER:
            progress = {i: (p.match, p.next, p.state.name.lower())
                        for i, p in r.prs.progress.items()}
            active = {i for i, p in r.prs.progress.items() if p.recent_active or i == r.id}
        return Status(id=r.id, term=r.term, vote=r.vote, lead=r.lead, raft_state=r.state,
                      commit=r.log.committed, applied=r.log.applied,
                      last_index=r.log.last_index(), progress=progress,
                      lead_transferee=r.lead_transferee, conf_state=r.conf_state(),
                      pending_conf_index=r.pending_conf_index, recent_active=active)
