"""A pure, deterministic Raft core in the style of etcd-io/raft: no I/O, no clock, no global
randomness. Drive it with RawNode: tick/step/propose/read_index, then ready -> persist ->
send -> apply -> advance."""

from .rawnode import RawNode
from .storage import CompactedError, MemoryStorage, UnavailableError
from .types import (Config, ConfChange, ConfChangeRefused, ConfChangeType, ConfState, Entry,
                    EntryType, HardState, Message, MessageType, ProposalDropped, ReadState, Ready,
                    SnapshotMeta, SoftState, StateType, Status)

__all__ = [
    "CompactedError", "Config", "ConfChange", "ConfChangeRefused", "ConfChangeType", "ConfState",
    "Entry", "EntryType", "HardState", "MemoryStorage", "Message",
    "MessageType", "ProposalDropped", "RawNode", "ReadState", "Ready", "SnapshotMeta",
    "SoftState", "StateType", "Status", "UnavailableError",
]
