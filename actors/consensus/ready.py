"""The Ready loop, once: the order in which a shell does a Raft core's I/O (etcd-io/raft
doc.go "the Ready loop"). Used by the consensus actor, the Raft test network
(tests/unit/raftnet.py), the simulator and the Raft transcripts (tests/unit/raftdd.py).

    held = drive(node, storage, Hooks(persist, send, apply, advanced), held)
    handle(node, storage, hooks, rd)   # one Ready (a test harness stepping by hand)

Rules, for each Ready, in this order:
0. A leader's Ready (rd.send_early: it changes neither term nor vote; Raft thesis 10.2.1,
   etcd's `if islead { send(rd.Messages) }` before saving): `send(messages)` first, all but
   SNAP, so followers write while we do. Only then:
1. `persist(rd)`: save rd.snapshot first (the log is dropped up to it), then rd.hard_state
   and rd.entries (one batch; fsync when rd.must_sync or a snapshot). It returns False to
   stop here: nothing more of rd is sent, nothing applied or advanced, and drive returns
   rd (HELD). The caller passes it back to the next drive (a full disk: actor.py), which
   persists it again and does not send its early messages again; or it drops rd with the
   node (a simulated crash before or after persisting: tests/sim).
2. The persisted state becomes visible to the core: storage.apply_snapshot(rd.snapshot),
   set_hard_state, append(entries).
3. `send(messages)`: the rest (all of a follower's or candidate's: nothing is sent that
   depends on an unpersisted vote, term or entry; a leader's SNAPs, whose send starts a
   snapshot transfer). A leader's early APPs depend on unpersisted entries only: the core
   counts its own copy only after advance(), so a commit counts durable copies only.
4. `apply(rd)`: read states, committed entries (conf changes included), soft state.
5. node.advance(rd), then `advanced(rd)` (the shell's follow-ups: compaction, a campaign).
No I/O here: every effect is a hook's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from actors.consensus.raft.rawnode import RawNode
from actors.consensus.raft.storage import MemoryStorage
from actors.consensus.raft.types import Message, MessageType, Ready


def _nothing(rd: Ready) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """The shell's side of the loop (see the module docstring for when each runs)."""

    persist: Callable[[Ready], bool]
    send: Callable[[list[Message]], None]
    apply: Callable[[Ready], None]
    advanced: Callable[[Ready], None] = _nothing


def drive(node: RawNode, storage: MemoryStorage, hooks: Hooks, held: Ready | None = None) -> Ready | None:
    """Handle Readys until the core has none; return the Ready `persist` refused (or None).
    `held` is such a Ready from an earlier call: it is persisted first, before any new one."""
    while held is not None or node.has_ready():
        if held is not None:
            rd, again, held = held, True, None
        else:
            rd, again = node.ready(), False
        if not handle(node, storage, hooks, rd, again):
            return rd
    return None


def handle(node: RawNode, storage: MemoryStorage, hooks: Hooks, rd: Ready, held: bool = False) -> bool:
    """One Ready, steps 0-5; False when `persist` refused it (nothing after step 0 was done).
    `held`: rd was refused before, so its step 0 is done already."""
    if rd.send_early:
        late = [m for m in rd.messages if m.type == MessageType.SNAP]
        if not held and len(late) < len(rd.messages):
            hooks.send([m for m in rd.messages if m.type != MessageType.SNAP])
    else:
        late = rd.messages
    if not hooks.persist(rd):
        return False
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    if rd.entries:
        storage.append(rd.entries)
    hooks.send(late)
    hooks.apply(rd)
    node.advance(rd)
    hooks.advanced(rd)
    return True
