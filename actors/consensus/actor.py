"""The consensus actor: a thin shell that does the Raft core's I/O.

Loop (DESIGN.md section 3): take a Ready from the core -> persist hard state and entries
to the WAL (fsync when `must_sync`) -> make them visible in MemoryStorage -> send
messages -> answer read states -> serve committed entries to storage -> advance.
Many proposals that arrive together share one Ready and so one fsync (group commit).

Storage pulls committed entries (FETCH after_index -> ENTRIES); a fetch with nothing
new is held until the commit index moves. Storage reports the index it has durably
applied; the log is compacted only below it, so a restarted storage can always catch
up from the log.

Each process start picks a random `epoch`, reported in every PROPOSE_ACK and STATUS
reply, so the gateway can tell proposals the previous process accepted (outcome
unknown) from ones the current process holds.
"""
from __future__ import annotations

import os
import random
from typing import Any

import zmq

from actors.consensus.raft import Config as RaftConfig
from actors.consensus.raft import MemoryStorage, ProposalDropped, RawNode, StateType
from actors.consensus.wal import WAL
from actors.runtime import messages as M
from actors.runtime.actor import Actor
from actors.runtime.failpoints import failpoint
from protocol import errors
from protocol.codec import pack_msg, unpack_msg

FETCH_MAX_ENTRIES = 4096
FETCH_MAX_BYTES = 4 * 1024 * 1024
CATCH_UP_ENTRIES = 5000  # entries kept below storage's durable index after a compaction
STATS_INTERVAL_S = 10.0


class ConsensusActor(Actor):
    role = "consensus"

    def setup(self) -> None:
        cfg = self.cfg
        self.epoch = random.SystemRandom().getrandbits(62)
        self.id = cfg.member_id
        self.wal = WAL(os.path.join(os.path.abspath(cfg.data_dir), "consensus"))
        hard_state, snapshot, entries = self.wal.load()
        self.raft_storage = MemoryStorage(hard_state, snapshot, entries)
        voters = [m.id for m in cfg.members]
        self.node = RawNode(
            RaftConfig(
                id=self.id,
                voters=voters,
                election_tick=cfg.election_tick,
                heartbeat_tick=cfg.heartbeat_tick,
                rng=random.Random(random.SystemRandom().getrandbits(64)),
            ),
            self.raft_storage,
        )
        if voters == [self.id]:
            self.node.campaign()  # the only voter: no need to wait an election timeout
        self.router = self.socket(zmq.ROUTER, bind=self.endpoints.consensus, handler=self.on_message)
        self.committed = hard_state.commit
        # identity -> after_index of the fetch being held
        self.fetches: dict[bytes, int] = {}
        self.durable_applied = 0
        # read ctx -> (identity, ctx_id) of the gateway waiting for it
        self.reads: dict[bytes, tuple[bytes, int]] = {}
        self.every(cfg.heartbeat_interval / 1000.0, self.node.tick)
        # Group-commit figures, logged every STATS_INTERVAL_S when there was traffic.
        self.fsyncs = 0
        self.entries_synced = 0
        self.every(STATS_INTERVAL_S, self._log_stats)
        self.log.info("consensus_loaded", term=hard_state.term, commit=hard_state.commit,
                      first_index=self.raft_storage.first_index(), last_index=self.raft_storage.last_index())

    # --- inbound -------------------------------------------------------------------
    def on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        identity, frame = frames
        try:
            msg_type, body = unpack_msg(frame)
            handler = self._message_handlers[msg_type]
        except (errors.QkvError, KeyError):
            self.log.warning("internal_message_dropped")
            return
        handler(self, identity, body)

    def _on_propose(self, identity: bytes, body: list) -> None:
        accepted: list[int] = []
        rejected: list[list[Any]] = []
        try:
            self.node.propose_batch([data for _, data in body])
            accepted = [req_id for req_id, _ in body]
        except ProposalDropped:
            rejected = [[req_id, errors.NoLeader().to_wire()] for req_id, _ in body]
        self.send_router(self.router, identity, pack_msg(M.PROPOSE_ACK, [self.epoch, accepted, rejected]))

    def _on_read_index(self, identity: bytes, body: list) -> None:
        (ctx_id,) = body
        # Unique across the cluster: a follower forwards it to the leader.
        ctx = self.id.to_bytes(8, "big") + ctx_id.to_bytes(8, "big")
        try:
            self.node.read_index(ctx)
        except ProposalDropped:
            self.send_router(self.router, identity,
                             pack_msg(M.READ_INDEX_RESP, [ctx_id, 0, errors.NoLeader().to_wire()]))
            return
        self.reads[ctx] = (identity, ctx_id)

    def _on_fetch(self, identity: bytes, body: list) -> None:
        after, durable_applied, _max_entries = body
        self.fetches[identity] = after
        self.durable_applied = max(self.durable_applied, durable_applied)

    def _on_status(self, identity: bytes, body: list) -> None:
        (ctx_id,) = body
        st = self.node.status()
        status = {
            "epoch": self.epoch,
            "member_id": self.id,
            "term": st.term,
            "lead": st.lead,
            "state": StateType(st.raft_state).name.lower(),
            "commit": st.commit,
            "first_index": self.raft_storage.first_index(),
            "last_index": self.raft_storage.last_index(),
        }
        self.send_router(self.router, identity, pack_msg(M.STATUS_RESP, [ctx_id, status]))

    _message_handlers = {
        M.PROPOSE: _on_propose,
        M.READ_INDEX: _on_read_index,
        M.FETCH: _on_fetch,
        M.STATUS: _on_status,
    }

    # --- the Ready loop ------------------------------------------------------------
    def flush(self) -> None:
        while self.node.has_ready():
            rd = self.node.ready()
            if rd.hard_state is not None or rd.entries:
                failpoint("before_log_fsync")
                self.wal.save(rd.hard_state, rd.entries, sync=rd.must_sync)
                failpoint("after_log_fsync")
                if rd.must_sync:
                    self.fsyncs += 1
                    self.entries_synced += len(rd.entries)
            if rd.hard_state is not None:
                self.raft_storage.set_hard_state(rd.hard_state)
            if rd.entries:
                self.raft_storage.append(rd.entries)
            # rd.messages: a one-member cluster has no peers to send to.
            for rs in rd.read_states:
                waiter = self.reads.pop(rs.request_ctx, None)
                if waiter is not None:
                    identity, ctx_id = waiter
                    self.send_router(self.router, identity, pack_msg(M.READ_INDEX_RESP, [ctx_id, rs.index, None]))
            if rd.committed_entries:
                self.committed = max(self.committed, rd.committed_entries[-1].index)
            self.node.advance(rd)
        self._serve_fetches()
        self._maybe_compact()

    def _serve_fetches(self) -> None:
        if not self.fetches:
            return
        first = self.raft_storage.first_index()
        for identity, after in list(self.fetches.items()):
            if after >= self.committed:
                continue  # hold it until the commit index moves
            lo = after + 1
            if lo < first:
                self.log.error("fetch_below_log", after=after, first_index=first)
                del self.fetches[identity]
                continue
            hi = min(self.committed, lo + FETCH_MAX_ENTRIES - 1)
            entries = self.raft_storage.entries(lo, hi + 1, FETCH_MAX_BYTES)
            body = [[[e.index, e.term, e.type, e.data] for e in entries], self.committed, self.node.status().term]
            del self.fetches[identity]
            self.send_router(self.router, identity, pack_msg(M.ENTRIES, body))

    def _maybe_compact(self) -> None:
        first = self.raft_storage.first_index()
        durable = min(self.durable_applied, self.committed)
        if durable - first < self.cfg.snapshot_count + CATCH_UP_ENTRIES:
            return
        index = durable - CATCH_UP_ENTRIES
        term = self.raft_storage.term(index)
        self.wal.compact(index, term)
        self.raft_storage.compact(index)
        self.log.info("log_compacted", index=index, durable_applied=durable)

    def _log_stats(self) -> None:
        if self.fsyncs:
            self.log.info("wal_stats", fsyncs=self.fsyncs, entries=self.entries_synced,
                          entries_per_fsync=round(self.entries_synced / self.fsyncs, 1),
                          interval_s=STATS_INTERVAL_S)
        self.fsyncs = self.entries_synced = 0

    def shutdown(self) -> None:
        self.wal.close()
