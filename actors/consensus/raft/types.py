"""Value types of the Raft core: entries, hard/soft state, messages, Ready, Config.

Rules:
- Nothing here performs I/O; the types are plain data.
- `Message.from_wire` is the single gate for bytes that came from a peer: it checks every
  field's type and range and the message's internal consistency, and raises `ValueError`
  on anything else. The core may then trust the shape of a message (not its truth).
- Local message types (HUP, BEAT, PROP) never travel on the wire.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

# Upper bound for any integer on the wire (terms, indexes, ids): keeps arithmetic sane.
WIRE_INT_MAX = (1 << 63) - 1
# Context of a VOTE that follows a leadership transfer: bypasses the follower lease.
CAMPAIGN_TRANSFER = b"CampaignTransfer"
# Bytes charged per entry on top of its data when sizing messages.
ENTRY_OVERHEAD_BYTES = 16


class ProposalDropped(Exception):
    """The node cannot take the request now (not leader, no leader, transferring)."""


class ConfChangeRefused(ProposalDropped):
    """A conf change cannot be proposed now: one is still pending (committed entries
    up to it not yet applied), or it makes no sense for the current membership."""


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data = ConfChange.to_bytes(); see RawNode.apply_conf_change


class ConfChangeType(IntEnum):
    """Single-step membership changes (etcd raftpb.ConfChangeType). Promoting a learner is
    ADD_NODE of an existing learner, as in etcd."""

    ADD_NODE = 0
    REMOVE_NODE = 1
    UPDATE_NODE = 2  # no change to the Raft configuration; the shell's metadata changes
    ADD_LEARNER_NODE = 3


@dataclass
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""  # opaque to the core: the shell's member metadata

    def to_bytes(self) -> bytes:
        packed: bytes = msgpack.packb([int(self.type), self.node_id, self.context], use_bin_type=True)
        return packed

    @staticmethod
    def from_bytes(data: bytes) -> ConfChange:
        """Decode a CONF_CHANGE entry's data; raise ValueError unless it is well formed."""
        try:
            obj = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise ValueError(f"conf change: undecodable ({type(exc).__name__})") from None
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise ValueError("conf change: expected an array of 3 fields")
        t, node_id, ctx = obj
        _check_int("conf_change.type", t)
        _check_int("conf_change.node_id", node_id)
        if t not in _VALID_CONF_CHANGE_TYPES or node_id == 0 or type(ctx) is not bytes:
            raise ValueError("conf change: bad type, node id or context")
        return ConfChange(ConfChangeType(t), node_id, ctx)


_VALID_CONF_CHANGE_TYPES = frozenset(int(t) for t in ConfChangeType)


@dataclass
class ConfState:
    """The membership: voters decide (quorums, elections), learners only replicate.
    Invariant: voters and learners are disjoint."""

    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)

    def copy(self) -> ConfState:
        return ConfState(sorted(self.voters), sorted(self.learners))


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: int = 0
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD_BYTES


@dataclass
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = 0  # 0 = voted for nobody in `term`
    commit: int = 0  # commit <= last index of the log


@dataclass
class SnapshotMeta:
    """The log compaction point: entries <= index are gone; (index, term) is remembered.

    Also what a SNAP message carries: the snapshot DATA (the state machine) travels out of
    band, moved by the shell; the core only ever sees this metadata.
    """

    index: int = 0
    term: int = 0
    voters: list[int] = field(default_factory=list)  # membership at index ([] = unknown)
    learners: list[int] = field(default_factory=list)
    context: bytes = b""  # opaque to the core: the shell's member metadata at index

    def copy(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, list(self.voters), list(self.learners),
                            self.context)

    def conf_state(self) -> ConfState:
        return ConfState(list(self.voters), list(self.learners))

    # Wire layout: [index, term, [voter, ...], [learner, ...], context] (older peers and
    # files: the first three only).
    def to_wire(self) -> list[Any]:
        return [self.index, self.term, list(self.voters), list(self.learners), self.context]

    @staticmethod
    def from_wire(obj: object) -> SnapshotMeta:
        """Decode snapshot metadata; raise ValueError unless it is well formed."""
        if not isinstance(obj, (list, tuple)) or len(obj) not in (3, 5):
            raise ValueError("snapshot: expected an array of 3 or 5 fields")
        index, term, voters = obj[:3]
        learners, context = (obj[3], obj[4]) if len(obj) == 5 else ([], b"")
        _check_int("snapshot.index", index)
        _check_int("snapshot.term", term)
        if type(context) is not bytes:
            raise ValueError("snapshot: context must be bytes")
        for name, ids in (("voter", voters), ("learner", learners)):
            if not isinstance(ids, (list, tuple)):
                raise ValueError(f"snapshot: {name}s must be an array")
            for v in ids:
                _check_int(f"snapshot.{name}", v)
                if v == 0:
                    raise ValueError(f"snapshot: {name} ids must be non-zero")
        if len(set(voters) | set(learners)) != len(voters) + len(learners):
            raise ValueError("snapshot: duplicate voters or learners")
        return SnapshotMeta(index, term, list(voters), list(learners), context)


class StateType(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass
class SoftState:
    """Volatile state worth telling the shell about; never persisted."""

    lead: int  # 0 = no known leader
    raft_state: StateType


@dataclass
class ReadState:
    """A linearizable read may be served once `applied >= index`."""

    index: int
    request_ctx: bytes


class MessageType(IntEnum):
    HUP = 0  # local: start an election
    BEAT = 1  # local: leader sends heartbeats
    PROP = 2  # local: propose entries
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    HEARTBEAT = 9
    HEARTBEAT_RESP = 10
    READ_INDEX = 11
    READ_INDEX_RESP = 12
    TIMEOUT_NOW = 13
    TRANSFER_LEADER = 14
    SNAP = 15  # leader -> follower: install the snapshot `Message.snapshot` (data out of band)


LOCAL_MESSAGE_TYPES = frozenset({MessageType.HUP, MessageType.BEAT, MessageType.PROP})
_VALID_MESSAGE_TYPES = frozenset(int(t) for t in MessageType)
_VALID_ENTRY_TYPES = frozenset(int(t) for t in EntryType)


def vote_resp_type(t: MessageType) -> MessageType:
    if t == MessageType.VOTE:
        return MessageType.VOTE_RESP
    assert t == MessageType.PRE_VOTE, t
    return MessageType.PRE_VOTE_RESP


@dataclass
class Message:
    type: MessageType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None  # SNAP only (and always there)

    # Wire layout (a msgpack array, positions fixed):
    # [type, to, frm, term, log_term, index, [[term, index, type, data], ...], commit,
    #  reject (0/1), reject_hint, context]  + [snapshot] as a 12th field on SNAP only
    #  (snapshot = [index, term, [voters]], see SnapshotMeta.to_wire).
    def to_wire(self) -> list[Any]:
        wire: list[Any] = [
            int(self.type),
            self.to,
            self.frm,
            self.term,
            self.log_term,
            self.index,
            [[e.term, e.index, int(e.type), e.data] for e in self.entries],
            self.commit,
            1 if self.reject else 0,
            self.reject_hint,
            self.context,
        ]
        if self.snapshot is not None:
            wire.append(self.snapshot.to_wire())
        return wire

    @staticmethod
    def from_wire(obj: object) -> Message:
        """Decode a peer's message; raise ValueError unless it is well formed."""
        if not isinstance(obj, (list, tuple)) or len(obj) not in (11, 12):
            raise ValueError("message: expected an array of 11 (or 12) fields")
        t, to, frm, term, log_term, index, raw_entries, commit, reject, hint, ctx = obj[:11]
        snapshot = SnapshotMeta.from_wire(obj[11]) if len(obj) == 12 else None
        for name, v in (("type", t), ("to", to), ("frm", frm), ("term", term),
                        ("log_term", log_term), ("index", index), ("commit", commit),
                        ("reject_hint", hint)):
            _check_int(name, v)
        if t not in _VALID_MESSAGE_TYPES:
            raise ValueError(f"message: unknown type {t}")
        if not (type(reject) is bool or (type(reject) is int and reject in (0, 1))):
            raise ValueError("message: reject must be 0 or 1")
        if type(ctx) is not bytes:
            raise ValueError("message: context must be bytes")
        if not isinstance(raw_entries, (list, tuple)):
            raise ValueError("message: entries must be an array")
        entries = []
        for re_ in raw_entries:
            if not isinstance(re_, (list, tuple)) or len(re_) != 4:
                raise ValueError("entry: expected an array of 4 fields")
            et, ei, ety, ed = re_
            _check_int("entry.term", et)
            _check_int("entry.index", ei)
            _check_int("entry.type", ety)
            if ety not in _VALID_ENTRY_TYPES:
                raise ValueError(f"entry: unknown type {ety}")
            if type(ed) is not bytes:
                raise ValueError("entry: data must be bytes")
            entries.append(Entry(et, ei, ety, ed))
        m = Message(MessageType(t), to, frm, term, log_term, index, entries, commit,
                    bool(reject), hint, ctx, snapshot)
        validate_message(m)
        return m


def _check_int(name: str, v: object) -> None:
    if type(v) is not int or v < 0 or v > WIRE_INT_MAX:
        raise ValueError(f"message: {name} must be an int in [0, 2^63)")


def validate_message(m: Message) -> None:
    """Semantic checks for a message from a peer; raise ValueError on garbage."""
    if m.type in LOCAL_MESSAGE_TYPES:
        raise ValueError(f"message: type {m.type.name} is not accepted from peers")
    if m.to == 0 or m.frm == 0:
        raise ValueError("message: to and frm must be non-zero")
    if m.type != MessageType.READ_INDEX and m.term == 0:
        raise ValueError(f"message: {m.type.name} needs a term")
    if m.entries and m.type != MessageType.APP:
        raise ValueError(f"message: {m.type.name} carries no entries")
    if m.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        if m.log_term > m.term:
            raise ValueError("message: log_term above term")
    if m.type == MessageType.APP:
        prev_term = m.log_term
        for i, e in enumerate(m.entries):
            if e.index != m.index + 1 + i:
                raise ValueError("message: entries are not consecutive after index")
            if e.term < prev_term or e.term > m.term or e.term == 0:
                raise ValueError("message: entry terms out of order")
            prev_term = e.term
        if m.index == 0 and m.log_term != 0:
            raise ValueError("message: index 0 has term 0")
    if m.type == MessageType.SNAP:
        s = m.snapshot
        if not isinstance(s, SnapshotMeta):
            raise ValueError("message: SNAP needs a snapshot")
        for name, v in (("snapshot.index", s.index), ("snapshot.term", s.term)):
            _check_int(name, v)
        if s.index == 0 or s.term == 0:
            raise ValueError("message: snapshot at index 0 or term 0")
        if s.term > m.term:
            raise ValueError("message: snapshot term above message term")
        for ids in (s.voters, s.learners):
            if not isinstance(ids, list) or any(type(v) is not int or v <= 0 for v in ids):
                raise ValueError("message: snapshot voters and learners must be positive ids")
    elif m.snapshot is not None:
        raise ValueError(f"message: {m.type.name} carries no snapshot")


@dataclass
class Ready:
    """Work for the shell, in order: persist, send, apply, then RawNode.advance(ready)
    (`send_early`: send first; actors/consensus/ready.py)."""

    soft_state: SoftState | None  # None = unchanged
    hard_state: HardState | None  # None = unchanged
    entries: list[Entry]  # persist before sending `messages`
    committed_entries: list[Entry]  # apply to the state machine
    messages: list[Message]
    read_states: list[ReadState]
    must_sync: bool  # True iff entries, a snapshot or term/vote changed
    # A snapshot the node restored from (SNAP): persist it FIRST (drop the whole log, record
    # the meta; MemoryStorage.apply_snapshot), then hard_state and entries. None normally.
    snapshot: SnapshotMeta | None = None
    # True when `messages` may be sent BEFORE this Ready is persisted (Raft thesis 10.2.1):
    # a leader's Ready that changes neither term nor vote and restores no snapshot. Its
    # messages then depend on no unpersisted term or vote, and an APP carrying entries not yet
    # on our disk is safe: the leader counts its own copy only once persisted (advance()).
    send_early: bool = False


@dataclass
class Status:
    id: int
    term: int
    vote: int
    lead: int
    raft_state: StateType
    commit: int
    applied: int
    last_index: int
    # Leader only: peer id -> (match, next, "probe"/"replicate").
    progress: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    lead_transferee: int = 0
    conf_state: ConfState = field(default_factory=ConfState)
    pending_conf_index: int = 0
    # Leader only: peers heard from within the last election timeout (check-quorum).
    recent_active: set[int] = field(default_factory=set)


@dataclass
class Config:
    id: int
    voters: list[int]
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0  # entry bytes in flight to one follower; 0 = no limit
    # Index of the last entry the state machine already applied (etcd's Config.Applied);
    # on restart committed entries up to here are not handed out again.
    applied: int = 0
    learners: list[int] = field(default_factory=list)  # replicate, never vote or campaign
    rng: random.Random = field(kw_only=True)  # seeded by the caller; the only randomness

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("config: id must be positive")
        if not self.voters or any(v <= 0 for v in self.voters):
            raise ValueError("config: voters must be positive ids")
        if len(set(self.voters)) != len(self.voters):
            raise ValueError("config: duplicate voters")
        if any(v <= 0 for v in self.learners) or len(set(self.learners)) != len(self.learners):
            raise ValueError("config: learners must be distinct positive ids")
        if set(self.voters) & set(self.learners):
            raise ValueError("config: a node cannot be both voter and learner")
        if self.heartbeat_tick <= 0:
            raise ValueError("config: heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("config: election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("config: max_inflight_msgs must be positive")
        if self.max_size_per_msg <= 0:
            raise ValueError("config: max_size_per_msg must be positive")
        if not isinstance(self.rng, random.Random):
            raise ValueError("config: rng must be a random.Random")
