"""A hand-driven in-memory network of RawNodes for the Raft unit tests (test machinery: it
lives here, not in the product's raft package).

Rules: nothing here performs I/O; each node runs the one Ready loop
(actors/consensus/ready.py); every message crosses `to_wire`/`from_wire` so the codec
is exercised; delivery order is FIFO and deterministic; `cut`/`isolate` drop messages.
Snapshots are moved like a shell would: delivering a SNAP first copies the sender's applied
entries (its "state machine") to the receiver, then steps it and reports success to the
sender; a SNAP that is lost is reported as a failed transfer. `applied` skips entries at or
below what a node already has (the state machine applies idempotently by index).
"""

from __future__ import annotations

import random
from typing import Any

from actors.consensus.ready import Hooks, drive

from actors.consensus.raft.rawnode import RawNode
from actors.consensus.raft.storage import MemoryStorage
from actors.consensus.raft.types import Config, Entry, Message, MessageType, ReadState, Ready, StateType


class Network:
    def __init__(self, ids: list[int], seed: int = 0,
                 storages: dict[int, MemoryStorage] | None = None, strict: bool = True,
                 **config_kwargs: Any) -> None:
        self.ids = list(ids)
        self.seed = seed
        self.config_kwargs = config_kwargs
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in ids}
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in ids}
        self.queue: list[Message] = []
        self.dropped: set[tuple[int, int]] = set()  # (frm, to) links that lose messages
        self.down: set[int] = set()  # nodes that neither tick nor receive
        self.msg_filter = None  # callable(Message) -> bool; False drops the message
        self.delivered: list[Message] = []  # every message delivered, in order
        # strict: a ValueError from step() fails the test; else the message is recorded here
        self.strict = strict
        self.rejected: list[tuple[Message, ValueError]] = []
        for i in ids:
            self.storages[i] = (storages or {}).get(i) or MemoryStorage()
            self.nodes[i] = self._new_node(i)

    def _new_node(self, i: int) -> RawNode:
        cfg = Config(id=i, voters=self.ids, rng=random.Random(self.seed * 1000 + i),
                     **self.config_kwargs)
        return RawNode(cfg, self.storages[i])

    # --- faults --------------------------------------------------------------------------
    def cut(self, a: int, b: int) -> None:
        self.dropped.update({(a, b), (b, a)})

    def isolate(self, i: int) -> None:
        for j in self.ids:
            if j != i:
                self.cut(i, j)

    def heal(self) -> None:
        self.dropped.clear()

    def restart(self, i: int) -> None:
        """Crash and restart node i from its storage (everything it persisted)."""
        applied = self.nodes[i].raft.log.applied
        kw = dict(self.config_kwargs, applied=applied)
        cfg = Config(id=i, voters=self.ids, rng=random.Random(self.seed * 1000 + i + 7), **kw)
        self.nodes[i] = RawNode(cfg, self.storages[i])

    # --- driving -------------------------------------------------------------------------
    def process(self, i: int) -> None:
        """The shell's Ready loop (actors/consensus/ready.py), all in memory."""
        applied = self.applied[i]

        def apply(rd: Ready) -> None:
            for e in rd.committed_entries:
                if not applied or e.index > applied[-1].index:
                    applied.append(e)
                self.on_committed(i, e)
            self.read_states[i].extend(rd.read_states)

        drive(self.nodes[i], self.storages[i], Hooks(lambda rd: True, self.queue.extend, apply))

    def on_committed(self, i: int, entry: Entry) -> None:
        """A shell's apply step, for subclasses (conf changes); nothing by default."""

    def process_all(self) -> None:
        for i in self.ids:
            if i not in self.down:
                self.process(i)

    def deliver(self, max_rounds: int = 10_000) -> int:
        """Process and deliver until quiet; return the number of messages delivered."""
        n = 0
        for _ in range(max_rounds):
            self.process_all()
            if not self.queue:
                return n
            msgs, self.queue = self.queue, []
            for m in msgs:
                lost = ((m.frm, m.to) in self.dropped or m.to in self.down or m.frm in self.down
                        or (self.msg_filter is not None and not self.msg_filter(m)))
                if lost or (m.to not in self.nodes and not self.strict):
                    if m.type == MessageType.SNAP and m.frm not in self.down:
                        self.nodes[m.frm].report_snapshot(m.to, False)
                    continue
                self.delivered.append(m)
                if m.type == MessageType.SNAP:
                    # The shell moves the data first (the sender's state machine as of now),
                    # unless the receiver already has newer data.
                    src, dst = self.applied[m.frm], self.applied[m.to]
                    if src and (not dst or src[-1].index > dst[-1].index):
                        self.applied[m.to] = list(src)
                try:
                    self.nodes[m.to].step(Message.from_wire(m.to_wire()))
                except ValueError as e:
                    if self.strict:
                        raise
                    self.rejected.append((m, e))
                if m.type == MessageType.SNAP:
                    self.nodes[m.frm].report_snapshot(m.to, True)
                n += 1
        raise AssertionError("network did not quiesce")

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()

    def tick_all(self, n: int = 1, deliver: bool = True) -> None:
        for _ in range(n):
            for i in self.ids:
                if i not in self.down:
                    self.nodes[i].tick()
            if deliver:
                self.deliver()

    def campaign(self, i: int) -> None:
        self.nodes[i].campaign()
        self.deliver()

    def propose(self, i: int, data: bytes) -> None:
        self.nodes[i].propose(data)
        self.deliver()

    # --- observing -----------------------------------------------------------------------
    def leaders(self) -> list[int]:
        return [i for i in self.ids
                if i not in self.down and self.nodes[i].raft.state == StateType.LEADER]

    def state(self, i: int) -> StateType:
        return self.nodes[i].raft.state

    def term(self, i: int) -> int:
        return self.nodes[i].raft.term

    def log(self, i: int) -> list[tuple[int, int, bytes]]:
        return [(e.index, e.term, e.data) for e in self.nodes[i].raft.log.all_entries()]

    def data_applied(self, i: int) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.data]
