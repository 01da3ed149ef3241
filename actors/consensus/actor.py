"""The consensus actor: a thin shell that does the Raft core's I/O.

Loop (actors/consensus/ready.py, etcd-io/raft doc.go): take a Ready from the core -> persist
snapshot metadata, hard state and entries to the WAL (fsync when `must_sync`) -> make them
visible in MemoryStorage -> send messages to peers -> answer read states, apply conf changes
-> advance; storage is served committed entries after the loop. A leader sends its appends
and heartbeats before its fsync instead (Raft thesis 10.2.1), so followers write in parallel;
it counts its own copy once saved. Proposals that arrive together share one Ready and so
one fsync (group commit).

- Storage pulls committed entries (FETCH after_index -> ENTRIES); a fetch with nothing
  new is held until the commit index moves. A sent ENTRIES re-arms the fetch after its
  last entry, up to a window of batches and bytes per FETCH (messages.py
  MAX_FETCH_AHEAD_BATCHES/_BYTES), so storage need not answer every batch; a FETCH that is
  not `resend` goes on after what was already sent, a `resend` one (storage started, or
  may have dropped some: a full disk, a gap, a long silence) from its after_index.
  Storage reports the index it has durably applied; the log is compacted only below it,
  so a restarted storage can always catch up from the log.
- A follower forwards proposals to the leader (PEER_FORWARD); results travel back
  through the storage of the node where the request arrived, never between nodes.
- Snapshots: when the core sends SNAP to a follower, this shell asks its storage for a
  checkpoint and streams it (which transfer runs and how it ends: actors/consensus/transfers.py;
  the files: actors/consensus/snapshot.py); the follower's shell has its
  storage install it and only then steps the SNAP into its core. A storage actor that
  restarts (the supervisor restarts a dead actor alone; its fetches then come from a new
  connection) took its unanswered CHECKPOINT and INSTALL requests with it: the leader's
  transfer is reported failed to the core (which sends SNAP again), the follower's install
  is failed to its leader (who sends the snapshot again); else that follower would wait
  for them for good. (A storage process that dies before any of its fetches reached us
  is not told apart from its successor: that gap stays.)
- Each process start picks a random `epoch`, reported in every PROPOSE_ACK and STATUS
  reply, so the gateway can tell proposals the previous process accepted (outcome
  unknown) from ones the current process holds. A PROPOSE names the epoch the gateway
  knows; it is answered (PROPOSE_ACK) only when some of it is rejected or that epoch is
  not ours, so a write costs the gateway no wake-up for its acceptance.
- On a clean stop the leader hands leadership to the most up-to-date follower first,
  so the cluster does not wait an election timeout.
- Membership (etcd 3.4 semantics; the policy and the member table are the pure
  actors/consensus/membership.py, this shell does its I/O): member_add / _remove / _update /
  _promote run on the leader (a follower forwards them, PEER_MEMBER) after etcd's
  --strict-reconfig-check rules, become one CONF_CHANGE entry each (the member's name and
  peer URLs ride in its context), and are answered once that entry is applied. Conf changes take effect when
  applied (raft.py); this shell then updates its member table and the peer links. The
  table and the conf state are replayed from the log on restart and travel in snapshot
  metadata (kept per compaction point), so every restart and every snapshot knows them.
  A member that applies its own removal writes `<data-dir>/removed` and exits; the
  supervisor then stops the node for good.
- `--force-new-cluster`: on start, every entry in the local log is committed and conf
  changes removing every other member are appended (etcd: restartAsStandaloneNode,
  except that uncommitted entries are kept too: nothing this member holds is lost).
- A full disk (issue 12; actors/runtime/diskfault.py): a Ready whose save the disk refuses
  is HELD: none of its messages is sent (but a leader's appends and heartbeats, sent before
  the save was tried, and not again), none of its entries is applied or served, the
  core is not advanced (the Raft rule: nothing is acknowledged or sent before it is
  persisted); its read states are answered at once (etcd does so before persisting: a read
  index does not depend on this member's log). One log line (`disk_full`, naming the log's
  directory) starts the episode; status reports `disk`. Meanwhile the core is frozen, as
  if this member were cut off: no ticks, peer Raft messages dropped (counted), no
  proposals taken into our log (`no_space`; a follower still forwards them to its leader:
  that writes nothing here, and is how the gateway's NOSPACE alarm reaches the others),
  no compaction. Linearizable reads: a sole voter answers with its commit index (it is
  its own quorum, leader or not yet: a node restarted on a full disk cannot persist the
  vote of its election); other members answer `unavailable` (serializable reads are
  served by storage). Every so often (backing off, once the filesystem shows room) the log is
  reopened read-write; then the held Ready is saved and everything goes on. A log that the
  disk does not let open read-write at start opens read-only, frozen the same way.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import random
import shutil
import time
from typing import Any, Callable

import zmq

from actors.consensus import peer_wire as W
from actors.consensus.membership import ClusterView, Member, Membership, standalone_changes
from actors.consensus.ready import Hooks, drive
from actors.consensus.raft import Config as RaftConfig
from actors.consensus.raft import (ConfChange, ConfChangeRefused, ConfChangeType, ConfState, Entry, EntryType,
                                   HardState, MemoryStorage, Message, MessageType, ProposalDropped, RawNode,
                                   SnapshotMeta, StateType)
from actors.consensus.snapshot import SnapshotReceiver, SnapshotSender
from actors.consensus.transfers import CheckpointFailed, Finished, Incoming, Orphan, Outgoing
from actors.consensus.transport import PeerTransport
from actors.consensus.wal import WAL
from actors.runtime import messages as M
from actors.runtime import metrics
from actors.runtime import wire
from actors.runtime.actor import Actor
from actors.runtime.diskfault import NO_SPACE, DiskFault, disk_error_kind, enough_room
from actors.runtime import security
from actors.runtime.failpoints import failpoint
from nodes.config import new_member_id
from protocol import VERSION, errors

FETCH_MAX_ENTRIES = 4096
FETCH_MAX_BYTES = 4 * 1024 * 1024
CATCH_UP_ENTRIES = 5000  # entries kept below storage's durable index after a compaction
# The log held in memory (MemoryStorage) is compacted also when its entries exceed this many
# bytes, keeping half of it for followers to catch up from: 10,000 entries of 1.5 MiB would
# otherwise hold 15 GiB (README "Limits").
LOG_MEMORY_BYTES = 64 * 1024 * 1024
# Entry bytes the leader has in flight to one follower (etcd raft's MaxInflightBytes): a
# slow, cut-off or dead follower's queue holds at most this much (plus one message).
INFLIGHT_BYTES = 16 * 1024 * 1024
STATS_INTERVAL_S = 10.0
HELLO_INTERVAL_S = 1.0
LEADERSHIP_INTERVAL_S = 0.25
AUTO_PROMOTE_INTERVAL_S = 0.5
REMOVED_MARKER = "removed"  # see nodes/supervisor.py
METRICS_INTERVAL_S = 1.0  # gauges (commit index) and peer byte counts are written this often
RTT_PROBE_MAX_S = 2.0  # a heartbeat without a response for this long is not timed (lost)
DISK_RETRY_TICK_S = 0.1  # how often a failed disk is looked at (DiskFault sets the backoff)
CC = ConfChangeType



WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "::")


def grpc_urls(advertised: list[str], client_urls: list[str]) -> list[str]:
    """This member's gRPC URLs as published to the others (etcd clients dial them as the
    member's clientURLs; [] when it serves no gRPC): a wildcard host (the
    --listen-grpc-urls default for --advertise-grpc-urls) becomes the host of the first
    client URL, which the other members reach, else stays (nobody can dial it)."""
    host = ""
    if client_urls:
        rest = client_urls[0].split("://", 1)[-1]
        candidate = rest.rsplit(":", 1)[0]
        if candidate not in WILDCARD_HOSTS:
            host = candidate
    out = []
    for url in advertised:
        scheme, _, rest = url.partition("://")
        h, _, port = rest.rpartition(":")
        out.append(f"{scheme}://{host}:{port}" if host and h in WILDCARD_HOSTS else url)
    return out

class ConsensusActor(Actor):
    role = "consensus"

    def setup(self) -> None:
        cfg = self.cfg
        self.epoch = random.SystemRandom().getrandbits(62)
        self.id = cfg.member_id
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.snap_dir = os.path.join(self.data_dir, "snapshots")
        shutil.rmtree(self.snap_dir, ignore_errors=True)  # transfers never survive a restart
        os.makedirs(self.snap_dir, exist_ok=True)
        self.disk = DiskFault(os.path.join(self.data_dir, "consensus"))
        self._held: Any = None  # the Ready the disk refused to save (module docstring)
        self._hooks = Hooks(self._persist, self._send, self._apply, self._advanced)
        self._wal_writable = True  # False from a refused write until a reopen works
        self.frozen_dropped = 0  # peer Raft messages dropped while frozen
        self.wal = WAL(self.disk.path)
        if self.wal.open_error is not None:  # full at start: read-only, frozen
            self._disk_error(self.wal.open_error, "open")
        hard_state, snapshot, entries = self.wal.load()
        self.ms = Membership.initial(self._static_members(), snapshot)
        if cfg.force_new_cluster:
            hard_state, entries = self._force_new_cluster(hard_state, snapshot, entries)
        self.raft_storage = MemoryStorage(hard_state, snapshot, entries)
        self.removed = False
        self.node = RawNode(
            RaftConfig(
                id=self.id,
                voters=self.ms.raft_conf().voters,
                learners=self.ms.raft_conf().learners,
                election_tick=cfg.election_tick,
                heartbeat_tick=cfg.heartbeat_tick,
                max_inflight_bytes=INFLIGHT_BYTES,
                rng=random.Random(random.SystemRandom().getrandbits(64)),
            ),
            self.raft_storage,
        )
        self._campaign_if_alone = False
        if self.conf.voters == [self.id]:
            self.node.campaign()  # the only voter: no need to wait an election timeout
        self.router = self.socket(zmq.ROUTER, bind=self.endpoints.consensus, handler=self.on_local)
        self.storage = self.socket(zmq.DEALER, connect=self.endpoints.storage, handler=self.on_storage)
        keypair = security.load_keypair(cfg.peer_key_file) if cfg.peer_security else None
        self.transport = PeerTransport(
            self, self.id, cfg.listen_peer_urls, self.endpoints.faults_file, self.on_peer, self._on_join, keypair
        )
        self.last_heard: dict[int, float] = {}  # peer id -> monotonic time of its last message
        self.member_ops: dict[int, tuple[int, Callable[[Any, Any], None]]] = {}  # index -> (term, reply)
        self.forwarded: dict[int, tuple[bytes, int, float]] = {}  # ctx -> (gateway identity, ctx_id, deadline)
        self.lingering: dict[int, tuple[str, str]] = {}  # removed member -> (peer URL, key), linked a while
        self._sync_transport()
        self.lead = 0
        self.committed = hard_state.commit
        self.fetches: dict[bytes, int] = {}  # storage identity -> the index after which the armed fetch starts
        self.fetch_sent: dict[bytes, int] = {}  # storage identity -> the last index sent it
        self.fetch_window: dict[bytes, tuple[int, int]] = {}  # -> (batches, bytes) sent since its FETCH
        self.storage_identity: bytes | None = None  # the connection our storage's fetches come from
        self.gone_storage: set[bytes] = set()  # earlier ones (a storage process that died)
        self.durable_applied = 0
        self.reads: dict[bytes, tuple[bytes, int]] = {}  # read ctx -> (gateway identity, ctx_id)
        self.gateway_identity: bytes | None = None
        self.moves: dict[int, tuple[bytes, int, float]] = {}  # ctx -> (identity, target, deadline)
        self.member_info: dict[int, dict[str, Any]] = {self.id: self._my_info()}
        self._ctx = itertools.count(1)
        self.sends = Outgoing(functools.partial(next, self._ctx), SnapshotSender)
        self.recvs = Incoming(  # snap_id and frm are ints (peer_wire): the staging dir stays in snap_dir
            functools.partial(next, self._ctx),
            lambda snap_id, frm: SnapshotReceiver(snap_id, frm, os.path.join(self.snap_dir, f"in-{frm:x}-{snap_id:d}")),
            functools.partial(failpoint, "snapshot_receive"))
        self.every(cfg.heartbeat_interval / 1000.0, self._tick)
        self.every(DISK_RETRY_TICK_S, self._disk_retry)
        self.every(HELLO_INTERVAL_S, self._hello)
        self.call_later(0.05, self._hello)
        self.every(1.0, self._check_transfers)
        if cfg.auto_promote_learners:
            self.every(AUTO_PROMOTE_INTERVAL_S, self._auto_promote)
        # Lease expiry lives in the leader's storage: tell it who leads (LEADERSHIP).
        self.leader_ready_index = 0
        self.every(LEADERSHIP_INTERVAL_S, self._send_leadership)
        # Group-commit figures, logged every STATS_INTERVAL_S when there was traffic.
        self.fsyncs = 0
        self.entries_synced = 0
        self.every(STATS_INTERVAL_S, self._log_stats)
        # Metrics (actors/runtime/metrics.py): gauges from a timer or on change; the peer
        # heartbeat -> response times (etcd_network_peer_round_trip_time_seconds) by peer.
        self._rtt_sent: dict[int, float] = {}  # peer -> when the heartbeat being timed went out
        self._rtt_children: dict[int, Any] = {}  # peer -> its labelled histogram child
        self._snap_send_started: dict[int, float] = {}  # follower -> when its snapshot transfer began
        self._snap_recv_started: dict[int, tuple[int, float]] = {}  # leader -> (snap_id, first chunk)
        metrics.has_leader.set(0)
        metrics.is_leader.set(0)
        self.every(METRICS_INTERVAL_S, self._metrics_tick)
        self._metrics_tick()
        self.log.info("consensus_loaded", term=hard_state.term, commit=hard_state.commit,
                      first_index=self.raft_storage.first_index(), last_index=self.raft_storage.last_index(),
                      voters=[f"{v:x}" for v in self.conf.voters], learners=[f"{v:x}" for v in self.conf.learners])

    @property
    def conf(self) -> ConfState:
        """The membership's conf state (the core's, mirrored by Membership.apply)."""
        return self.ms.conf

    @property
    def members(self) -> dict[int, Member]:
        return self.ms.members

    def _my_info(self) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "client_urls": list(self.cfg.advertise_client_urls),
            "watch_urls": list(self.cfg.listen_watch_urls),
            "grpc_urls": grpc_urls(self.cfg.advertise_grpc_urls, self.cfg.advertise_client_urls),
            "version": VERSION,
        }

    def _reply(self, identity: bytes, msg: M.Message) -> None:
        self.send_router(self.router, identity, wire.pack(msg))

    # --- from this node's gateway and storage ---------------------------------------
    def on_local(self, frames: list[bytes]) -> None:
        """Gateway and storage requests, decoded by runtime/wire.py; an invalid one is
        dropped and counted, and a valid one is handled whole (an exception is a bug)."""
        if not hasattr(self, "_local_dropped"):
            self._local_dropped = wire.Dropped(self.log)
        try:
            if len(frames) != 2:
                raise errors.Malformed(f"expected 2 frames, got {len(frames)}")
            identity, frame = frames
            msg = wire.decode(frame, self._local_types)
        except errors.Malformed as err:
            self._local_dropped("consensus.local", err)
            return
        self._local_handlers[msg.TYPE](self, identity, msg)

    def _on_propose(self, identity: bytes, msg: M.Propose) -> None:
        body = msg.items
        self.gateway_identity = identity
        accepted: list[int] = []
        rejected: list[M.Rejected] = []
        if self.disk.failed and (self.lead == self.id or not self.lead):
            # Nothing goes into a log this member cannot write (a follower forwards: below).
            rejected = [M.Rejected(req_id, self._disk_refusal().to_wire()) for req_id, _ in body]
        elif self.lead == self.id:
            try:
                self.node.propose_batch([data for _, data in body])
                accepted = [req_id for req_id, _ in body]
            except ProposalDropped:
                rejected = [M.Rejected(req_id, errors.NoLeader().to_wire()) for req_id, _ in body]
        elif self.lead and self.transport.send(self.lead, M.PeerForward(self.id, body)):
            accepted = [req_id for req_id, _ in body]
        else:
            rejected = [M.Rejected(req_id, errors.NoLeader().to_wire()) for req_id, _ in body]
        if rejected or msg.epoch != self.epoch:
            self._reply(identity, M.ProposeAck(self.epoch, accepted, rejected))

    def _on_read_index(self, identity: bytes, msg: M.ReadIndex) -> None:
        ctx_id = msg.ctx_id
        # Unique across the cluster: a follower forwards it to the leader.
        ctx = self.id.to_bytes(8, "big") + ctx_id.to_bytes(8, "big")
        if self.disk.failed:
            if self.conf.voters == [self.id]:
                # The sole voter is its own quorum: every acknowledged write is at or
                # below the commit index it has persisted and handed to storage. (Also
                # when it could not persist the vote that makes it leader: restarted on a
                # full disk. No other member can lead without its vote, which it does not
                # give while frozen.)
                self._reply(identity, M.ReadIndexResp(ctx_id, self.committed, None, self.node.raft.term))
            else:
                self._reply(identity, M.ReadIndexResp(ctx_id, 0, errors.Unavailable(
                    "etcdserver: this member cannot write its log (its disk refuses writes); "
                    "serializable reads are served, or ask another member").to_wire(), 0))
            return
        try:
            self.node.read_index(ctx)
        except ProposalDropped:
            self._reply(identity, M.ReadIndexResp(ctx_id, 0, errors.NoLeader().to_wire(), 0))
            return
        self.reads[ctx] = (identity, ctx_id)

    def _on_fetch(self, identity: bytes, msg: M.Fetch) -> None:
        after, durable_applied = msg.after_index, msg.durable_applied_index
        if identity != self.storage_identity:
            if identity in self.gone_storage:
                return  # sent by a storage process that has died since
            old = self.storage_identity
            restarted = old is not None
            if old is not None:
                self.gone_storage.add(old)
                self.fetches.pop(old, None)
                self.fetch_sent.pop(old, None)
                self.fetch_window.pop(old, None)
                self._storage_restarted()
            self.storage_identity = identity
            self.log.info("storage_connected", restarted=restarted)
        if msg.resend:
            self.fetch_sent[identity] = after
        self.fetches[identity] = max(after, self.fetch_sent.get(identity, 0))
        self.fetch_window[identity] = (0, 0)
        self.durable_applied = max(self.durable_applied, durable_applied)

    def _on_status(self, identity: bytes, msg: M.Status) -> None:
        ctx_id = msg.ctx_id
        st = self.node.status()
        members = self._members_wire()
        status: M.ConsensusStatus = {
            "epoch": self.epoch,
            "member_id": self.id,
            "term": st.term,
            "lead": st.lead,
            "state": StateType(st.raft_state).name.lower(),
            "commit": st.commit,
            "first_index": self.raft_storage.first_index(),
            "last_index": self.raft_storage.last_index(),
            "members": members,
            "is_learner": self.id in self.conf.learners,
            "faults": self._faults_text(),
            "disk": self.disk.wire(time.monotonic()),
        }
        self._reply(identity, M.StatusResp(ctx_id, status))

    def heartbeat_status(self) -> M.HeartbeatStatus:
        """For the supervisor's STATUS= line (nodes/supervisor.py)."""
        r = self.node.raft  # not status(): that copies the progress table
        return {"state": StateType(r.state).name.lower(), "term": r.term, "leader": r.lead,
                "commit": r.log.committed}

    def _faults_text(self) -> str | None:
        """Peer links cut by fault injection, for `status.errors`; None when there are none."""
        faults = self.transport.faults
        faults.refresh()
        if not faults.drop_to and not faults.drop_from:
            return None
        return (f"peer fault injection active: drop_to={sorted(faults.drop_to)} "
                f"drop_from={sorted(faults.drop_from)}")

    def _on_move_leader(self, identity: bytes, msg: M.MoveLeader) -> None:
        ctx_id, target = msg.ctx_id, msg.target_id
        if self.disk.failed:
            self._reply(identity, M.MoveLeaderResp(ctx_id, self._disk_refusal().to_wire()))
        elif self.lead != self.id:
            self._reply(identity, M.MoveLeaderResp(ctx_id, errors.NotLeader().to_wire()))
        elif target not in self.conf.voters:
            self._reply(identity, M.MoveLeaderResp(
                ctx_id, errors.InvalidArgument("etcdserver: bad leader transferee").to_wire()))
        elif target == self.id:
            self._reply(identity, M.MoveLeaderResp(ctx_id, None))
        else:
            self.node.transfer_leader(target)
            deadline = time.monotonic() + 2 * self.cfg.election_timeout / 1000.0
            self.moves[ctx_id] = (identity, target, deadline)

    def _on_lease_propose(self, identity: bytes, msg: M.LeasePropose) -> None:
        """Entries from the leader's storage (lease expiry, checkpoints): proposed only
        while this member leads in the term storage saw, never forwarded."""
        term, datas = msg.term, msg.datas
        if self.disk.failed or self.lead != self.id or not datas or self.node.raft.term != term:
            return
        try:
            self.node.propose_batch(list(datas))
        except ProposalDropped:
            pass

    def _send_leadership(self) -> None:
        is_leader = self.lead == self.id
        urls = self.member_info.get(self.lead, {}).get("client_urls") or [] if self.lead else []
        body = M.Leadership(is_leader, self.node.raft.term, self.lead, list(urls),
                            self.leader_ready_index if is_leader else 0,
                            self.conf.voters == [self.id])  # sole voter: storage's reads on a full disk
        try:
            self.storage.send(wire.pack(body), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    _local_handlers: dict[int, Callable[[Any, bytes, Any], None]] = {
        M.LEASE_PROPOSE: _on_lease_propose,
        M.PROPOSE: _on_propose,
        M.READ_INDEX: _on_read_index,
        M.FETCH: _on_fetch,
        M.STATUS: _on_status,
        M.MOVE_LEADER: _on_move_leader,
        M.MEMBER: lambda self, identity, msg: self._on_member(identity, msg),
    }
    _local_types = frozenset(_local_handlers)
    _storage_types = frozenset((M.CHECKPOINT_RESP, M.INSTALL_RESP))

    def on_storage(self, frames: list[bytes]) -> None:
        if not hasattr(self, "_local_dropped"):
            self._local_dropped = wire.Dropped(self.log)
        try:
            msg = wire.decode(frames[-1], self._storage_types)
        except errors.Malformed as err:
            self._local_dropped("consensus.storage", err)
            return
        if isinstance(msg, M.CheckpointResp):
            self._on_checkpoint(msg.ctx_id, msg.path, msg.applied_index, msg.error)
        elif isinstance(msg, M.InstallResp):
            self._on_installed(msg.ctx_id, msg.applied_index, msg.error)

    # --- from peers -----------------------------------------------------------------
    def on_peer(self, msg_type: int, frm: int, msg: Any) -> None:
        """A peer message the transport authenticated and decoded (peer_wire.py): typed and
        whole. Nothing here guards against shapes: an exception is a bug and crashes us."""
        self.last_heard[frm] = time.monotonic()
        if msg_type == M.PEER_RAFT:
            if self.disk.failed:  # frozen: as if cut off (module docstring)
                self.frozen_dropped += len(msg.messages)
                return
            for m in msg.messages:
                if m.type == MessageType.HEARTBEAT_RESP and frm in self._rtt_sent:
                    self._rtt_observed(frm)
                self.node.step(m)
        elif msg_type == M.PEER_FORWARD:
            try:
                if self.lead != self.id or self.disk.failed:
                    raise ProposalDropped()
                self.node.propose_batch([data for _, data in msg.proposals])
            except ProposalDropped:
                self.transport.send(frm, M.PeerForwardReject(self.id, [req_id for req_id, _ in msg.proposals]))
        elif msg_type == M.PEER_FORWARD_REJECT:
            if self.gateway_identity is not None:
                rejected = [M.Rejected(req_id, errors.NoLeader().to_wire()) for req_id in msg.req_ids]
                self._reply(self.gateway_identity, M.ProposeAck(self.epoch, [], rejected))
        elif msg_type == M.PEER_HELLO:
            if frm not in self.member_info:  # a peer we had not heard from: introduce ourselves at once
                self.transport.send(frm, M.PeerHello(self.id, self._my_info()))
            self.member_info[frm] = msg.info
        elif msg_type == M.PEER_SNAP_CHUNK:
            self._on_snap_chunk(frm, msg)
        elif msg_type == M.PEER_SNAP_ACK:
            self._on_snap_ack(frm, msg.snap_id, msg.seq, msg.status)
        elif msg_type == M.PEER_MEMBER:
            ctx = msg.ctx
            self._member_request(msg.op, functools.partial(self._member_resp_to_peer, frm, ctx))
        elif msg_type == M.PEER_MEMBER_RESP:
            waiter = self.forwarded.pop(msg.ctx, None)
            if waiter is not None:
                self._reply(waiter[0], M.MemberResp(waiter[1], msg.result, msg.error))
        elif msg_type == M.PEER_REMOVED:
            if not self.removed:
                self.log.warning("removed_by_peer", peer=f"{frm:x}")
                self._on_removed(0)

    def _hello(self) -> None:
        # A copy: a send to a link that stays down redials it (transport._note_down), which
        # replaces its entry in `peers`.
        for peer in list(self.transport.peers):
            self.transport.send(peer, M.PeerHello(self.id, self._my_info()))

    # --- the Ready loop ------------------------------------------------------------
    def flush(self) -> None:
        self._held = drive(self.node, self.raft_storage, self._hooks, self._held)
        self._serve_fetches()
        self._check_moves()
        if not self.disk.failed:
            self._maybe_compact()

    def _apply(self, rd: Any) -> None:
        self._answer_read_states(rd)
        if rd.committed_entries:
            self._apply_membership(rd.committed_entries)
            self.committed = max(self.committed, rd.committed_entries[-1].index)
        if rd.soft_state is not None and rd.soft_state.lead != self.lead:
            self._leader_changed(rd.soft_state.lead)

    def _advanced(self, rd: Any) -> None:
        if self._campaign_if_alone:
            self._campaign_if_alone = False
            st = self.node.status()
            if self.conf.voters == [self.id] and st.raft_state != StateType.LEADER:
                self.node.campaign()

    def _persist(self, rd: Any) -> bool:
        """Save a Ready's snapshot, hard state and entries (one batch). False when the disk
        refuses (or has refused and the log is not reopened yet): the Ready is held."""
        if rd.snapshot is None and rd.hard_state is None and not rd.entries:
            self._held = None
            return True
        if self._held is None:
            self._held = rd
            if self.disk.failed:
                self._answer_read_states(rd)
        if not self._wal_writable:
            return False
        failpoint("before_log_fsync")
        sync = rd.must_sync or rd.snapshot is not None
        started = time.perf_counter()
        try:
            self.wal.save(rd.hard_state, rd.entries, sync=sync, snapshot=rd.snapshot)
        except Exception as exc:
            if not self._disk_error(exc, "save"):
                raise
            self._answer_read_states(rd)
            return False
        failpoint("after_log_fsync")
        self._held = None
        if rd.snapshot is not None:
            self.committed = max(self.committed, rd.snapshot.index)
            self._restore_membership(rd.snapshot)
        if sync:
            metrics.wal_fsync_seconds.observe(time.perf_counter() - started)
            self.fsyncs += 1
            self.entries_synced += len(rd.entries)
        if self.disk.failed:
            self._disk_recovered()
        return True

    def _answer_read_states(self, rd: Any) -> None:
        """Answer a Ready's read states (once). A held Ready's are answered at once: etcd
        answers them before it persists (a read index depends on the leader's commit
        index, not on this member's log)."""
        for rs in rd.read_states:
            waiter = self.reads.pop(rs.request_ctx, None)
            if waiter is not None:
                identity, ctx_id = waiter
                # The term it was confirmed in: the storage's lessor answers a keep-alive
                # only if it leads that term (a stale lessor must not: tests/sim/leases.py).
                self._reply(identity, M.ReadIndexResp(ctx_id, rs.index, None, self.node.raft.term))
        rd.read_states = []

    # --- a full disk (module docstring; runtime/diskfault.py) --------------------------
    def _disk_error(self, exc: Exception, during: str) -> bool:
        """A write of the log raised `exc`: True when the disk refused it (the episode
        starts or goes on; logged once), False for anything else (the caller re-raises)."""
        kind = disk_error_kind(exc)
        if kind is None:
            return False
        self._wal_writable = False
        info = self.disk.fail(time.monotonic(), exc, kind)
        if info is not None:
            self.log.error("disk_full" if kind == NO_SPACE else "disk_write_failed", during=during, **info,
                           action="nothing unpersisted is sent or acknowledged; writes refused; retrying by itself")
        return True

    def _disk_retry(self) -> None:
        """Reopen the log read-write when due and the filesystem shows room; the held Ready
        (if any) is saved by the flush() that follows."""
        now = time.monotonic()
        if self._wal_writable or not self.disk.due(now):
            return
        if not enough_room(self.disk.path):
            self.disk.not_yet(now)
            return
        try:
            self.wal.reopen()
        except Exception as exc:
            if not self._disk_error(exc, "reopen"):
                raise
            return
        self._wal_writable = True
        if self._held is None:
            self._disk_recovered()

    def _disk_recovered(self) -> None:
        info = self.disk.recover(time.monotonic())
        if info is not None:
            self.log.info("disk_recovered", **info, peer_messages_dropped=self.frozen_dropped)
        self.frozen_dropped = 0

    def _disk_refusal(self) -> errors.QkvError:
        """The error for what needs our log while the disk refuses writes."""
        if self.disk.kind == NO_SPACE:
            return errors.NoSpace(f"etcdserver: mvcc: database space exceeded: the disk of member {self.id:x} "
                                  "is full; writes are refused until space is freed")
        return errors.Unavailable(f"etcdserver: member {self.id:x} cannot write its log (disk I/O error); "
                                  "writes are refused until it can")

    def _tick(self) -> None:
        if not self.disk.failed:  # frozen: as if cut off (module docstring)
            self.node.tick()

    def _send(self, messages: list[Message]) -> None:
        by_peer: dict[int, list[list]] = {}
        beats: set[int] = set()
        for msg in messages:
            if msg.type == MessageType.SNAP:
                self._start_snapshot(msg)
            else:
                if msg.type == MessageType.HEARTBEAT:
                    beats.add(msg.to)
                by_peer.setdefault(msg.to, []).append(msg.to_wire())
        for peer, wires in by_peer.items():
            if not self.transport.send(peer, M.PeerRaft(self.id, wires)):
                self.node.report_unreachable(peer)
                if peer in beats:
                    metrics.heartbeat_send_failures.inc()
            elif peer in beats and peer not in self._rtt_sent:
                self._rtt_sent[peer] = time.monotonic()  # timed until its HEARTBEAT_RESP

    def _leader_changed(self, lead: int) -> None:
        self.log.info("leader_changed", lead=f"{lead:x}", previous=f"{self.lead:x}", term=self.node.status().term)
        if lead:  # etcd: a new leader (not the loss of one) is a change seen
            metrics.leader_changes.inc()
        metrics.has_leader.set(1 if lead else 0)
        metrics.is_leader.set(1 if lead == self.id else 0)
        self._rtt_sent.clear()
        self.lead = lead
        # Every entry up to the log's end when we became leader is committed once storage
        # has applied this far (the new term's entries commit only after them).
        self.leader_ready_index = self.raft_storage.last_index() if lead == self.id else 0
        self._send_leadership()
        # The core forgets pending read-index requests on a leader change: answer them now.
        for identity, ctx_id in self.reads.values():
            self._reply(identity, M.ReadIndexResp(ctx_id, 0, errors.NoLeader().to_wire(), 0))
        self.reads.clear()

    def _serve_fetches(self) -> None:
        if not self.fetches:
            return
        first = self.raft_storage.first_index()
        for identity, after in list(self.fetches.items()):
            if after >= self.committed:
                continue  # hold it until the commit index moves
            lo = after + 1
            if lo < first:
                # Storage is behind the compacted log: only a snapshot helps (the
                # leader sends one when it sees this member lagging).
                continue
            hi = min(self.committed, lo + FETCH_MAX_ENTRIES - 1)
            entries = self.raft_storage.entries(lo, hi + 1, FETCH_MAX_BYTES)
            size = 0
            for e in entries:
                size += len(e.data)
            body = M.Entries([M.EntryRow(e.index, e.term, e.type, e.data) for e in entries], self.committed,
                             self.node.raft.term)
            if not self.send_router(self.router, identity, wire.pack(body)):
                del self.fetches[identity]  # gone or full: its next FETCH re-arms it
                continue
            last = entries[-1].index
            self.fetch_sent[identity] = last
            batches, sent_bytes = self.fetch_window.get(identity, (0, 0))
            batches, sent_bytes = batches + 1, sent_bytes + size
            self.fetch_window[identity] = (batches, sent_bytes)
            if batches >= M.MAX_FETCH_AHEAD_BATCHES or sent_bytes >= M.MAX_FETCH_AHEAD_BYTES:
                del self.fetches[identity]  # the window is full: wait for its FETCH
            else:
                self.fetches[identity] = last

    def _check_moves(self) -> None:
        if self.forwarded:
            now = time.monotonic()
            for ctx in [c for c, (_, _, deadline) in self.forwarded.items() if deadline < now]:
                del self.forwarded[ctx]  # the gateway has answered `timeout` by now
        if not self.moves:
            return
        now = time.monotonic()
        for ctx_id, (identity, target, deadline) in list(self.moves.items()):
            if self.lead == target:
                self._reply(identity, M.MoveLeaderResp(ctx_id, None))
            elif now > deadline:
                self._reply(identity, M.MoveLeaderResp(
                    ctx_id, errors.Timeout("etcdserver: leader transfer timed out").to_wire()))
            else:
                continue
            del self.moves[ctx_id]

    def _maybe_compact(self) -> None:
        first = self.raft_storage.first_index()
        durable = min(self.durable_applied, self.committed)
        keep = min(CATCH_UP_ENTRIES, self.cfg.snapshot_count)
        if durable - first >= self.cfg.snapshot_count + keep:
            index = durable - keep
        elif self.raft_storage.bytes > LOG_MEMORY_BYTES and durable >= first:
            # Entries above `durable` stay whatever their size (not yet applied everywhere
            # locally); below it, keep at most half the bound.
            index = max(durable - keep, self.raft_storage.keep_within(durable, LOG_MEMORY_BYTES // 2))
            if index < first:
                return
        else:
            return
        term = self.raft_storage.term(index)
        conf = self.ms.conf_at(index)
        try:
            self.wal.compact(index, term, conf)
        except Exception as exc:
            if not self._disk_error(exc, "compact"):
                raise
            return
        self.raft_storage.compact(index, conf)
        self.log.info("log_compacted", index=index, durable_applied=durable)

    # --- snapshots (the policy is actors/consensus/transfers.py; here only its I/O) -----
    def _start_snapshot(self, msg: Message) -> None:
        ctx = self.sends.start(msg)
        if ctx is None:
            return  # one transfer per follower at a time
        self._snap_send_started[msg.to] = time.monotonic()
        try:
            self.storage.send(wire.pack(M.Checkpoint(ctx)), zmq.NOBLOCK)
        except zmq.ZMQError:
            to = self.sends.unsent(ctx)
            self._snap_send_done(to, False)
            self.node.report_snapshot(to, False)

    def _on_checkpoint(self, ctx: int, path: str | None, applied: int, error: Any) -> None:
        got = self.sends.checkpoint(time.monotonic(), ctx, path, error)
        if isinstance(got, Orphan):
            if got.path is not None:  # given up on (_storage_restarted): nobody streams it
                shutil.rmtree(got.path, ignore_errors=True)
        elif isinstance(got, CheckpointFailed):
            self.log.warning("snapshot_checkpoint_failed", error=got.error)
            self._snap_send_done(got.to, False)
            self.node.report_snapshot(got.to, False)
        else:
            self.log.info("snapshot_send_started", to=f"{got.to:x}", index=got.index,
                          storage_applied=applied, bytes=got.bytes)
            self._pump(got.to, self.sends.chunks(got.to))

    def _pump(self, to: int, chunks: list[list[Any]]) -> None:
        for chunk in chunks:
            failpoint("snapshot_send")
            if not self.transport.send(to, M.PeerSnapChunk(self.id, *chunk)):
                self._finished(self.sends.finish(to, False, "peer unreachable"))
                return

    def _on_snap_ack(self, frm: int, snap_id: int, seq: int, status: str) -> None:
        got = self.sends.ack(time.monotonic(), frm, snap_id, seq, status)
        if isinstance(got, Finished):
            self._finished(got)
        else:
            self._pump(frm, got)

    def _finished(self, done: Finished | None) -> None:
        if done is not None:
            self._snap_send_done(done.to, done.ok)
            self.node.report_snapshot(done.to, done.ok)
            self.log.info("snapshot_send_finished", to=f"{done.to:x}", ok=done.ok, why=done.why)

    def _check_transfers(self) -> None:
        now = time.monotonic()
        for done in self.sends.check(now):
            self._finished(done)
        self.recvs.check(now)

    def _on_snap_chunk(self, frm: int, chunk: W.SnapChunk) -> None:
        now = time.monotonic()
        if chunk.seq == 0 or frm not in self._snap_recv_started:
            self._snap_recv_started[frm] = (chunk.snap_id, now)
        got = self.recvs.chunk(now, frm, chunk)
        if got.error is not None:
            self.log.warning("snapshot_receive_failed", error=got.error)
            self._snap_recv_done(frm, got.snap_id, False)
        self.transport.send(frm, M.PeerSnapAck(self.id, got.snap_id, got.seq, got.status))
        if got.install is not None:
            self.log.info("snapshot_received", frm=f"{frm:x}", bytes=got.install.bytes)
            try:
                self.storage.send(wire.pack(M.Install(got.install.ctx, got.install.root)), zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # storage not there (restarting) or its queue is full
                self._on_installed(got.install.ctx, 0, f"storage is not reachable: {exc}")

    def _on_installed(self, ctx: int, applied: int, error: Any) -> None:
        got = self.recvs.installed(ctx, error)
        if got is None:
            return
        self._snap_recv_done(got.frm, got.snap_id, got.status != "failed")
        if got.status == "failed":
            self.log.error("snapshot_install_failed", error=error)
        else:
            assert got.message.snapshot is not None  # peer_wire: a SNAP message carries its snapshot
            self.log.info("snapshot_installed", index=got.message.snapshot.index, storage_applied=applied)
            self.node.step(got.message)
        self.transport.send(got.frm, M.PeerSnapAck(self.id, got.snap_id, -1, got.status))

    def _storage_restarted(self) -> None:
        """Our storage actor is a new process: the CHECKPOINT and INSTALL requests the old
        one had will not be answered (module docstring)."""
        lost_checkpoints = self.sends.storage_restarted()
        for to in lost_checkpoints:
            self._snap_send_done(to, False)
            self.node.report_snapshot(to, False)
        lost_installs = self.recvs.storage_restarted()
        for frm, snap_id in lost_installs:
            self._snap_recv_done(frm, snap_id, False)
            self.transport.send(frm, M.PeerSnapAck(self.id, snap_id, -1, "failed"))
        if lost_checkpoints or lost_installs:
            self.log.warning("snapshot_requests_lost", reason="storage restarted",
                             checkpoints=len(lost_checkpoints), installs=len(lost_installs))

    # --- membership (the policy is actors/consensus/membership.py; here only its I/O) -----
    def _my_member(self) -> Member:
        key = security.load_keypair(self.cfg.peer_key_file)[0].decode() if self.cfg.peer_security else ""
        return Member(self.cfg.name, tuple(self.cfg.initial_advertise_peer_urls), key)

    def _static_members(self) -> list[tuple[int, Member, bool]]:
        """The membership this member started with: the table it joined with, else the
        static --initial-cluster (a snapshot in the WAL overrides both: Membership.initial)."""
        cfg = self.cfg
        if cfg.initial_members:
            return [(int(m[0]), Member(str(m[1]), tuple(m[2]), str(m[4]) if len(m) > 4 else ""), bool(m[3]))
                    for m in cfg.initial_members]
        return [(m.id, Member(m.name, tuple(m.peer_urls), m.peer_key), False) for m in cfg.members]

    def _force_new_cluster(self, hs: HardState, snapshot: SnapshotMeta,
                           entries: list[Entry]) -> tuple[HardState, list[Entry]]:
        """Commit the whole local log and append conf changes that leave only us."""
        ccs = []
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                try:
                    ccs.append(ConfChange.from_bytes(e.data))
                except ValueError:
                    pass
        changes = standalone_changes(self.conf, ccs, self.id, self._my_member())
        last_index, last_term = (entries[-1].index, entries[-1].term) if entries else (snapshot.index, snapshot.term)
        term = max(hs.term, last_term, 1)
        new = [Entry(term, last_index + 1 + i, int(EntryType.CONF_CHANGE), cc.to_bytes())
               for i, cc in enumerate(changes)]
        hs = HardState(term, hs.vote if term == hs.term else 0, last_index + len(new))
        self.wal.save(hs, new, sync=True)
        self.log.warning("force_new_cluster", commit=hs.commit, kept_entries=len(entries),
                         removed=[f"{cc.node_id:x}" for cc in changes if cc.type == CC.REMOVE_NODE])
        return hs, entries + new

    def _sync_transport(self) -> None:
        """Links and trust follow the member table: a DEALER per member (and per lingering
        removed member), and the ZAP table = the current members' peer keys, replaced whole
        (a removed member's key is refused from this moment)."""
        peers = dict(self.lingering)
        peers.update({i: (m.peer_urls[0], m.peer_key) for i, m in self.members.items()
                      if i != self.id and m.peer_urls})
        self.transport.set_trusted({i: m.peer_key for i, m in self.members.items()})
        self.transport.set_peers(peers)

    def _forget_peer(self, peer: int) -> None:
        """A removed member's grace period is over: drop its link, refuse its messages."""
        self.lingering.pop(peer, None)
        if peer not in self.members:
            self.transport.removed.add(peer)
        self._sync_transport()

    def _member_wire(self, mid: int) -> dict[str, Any]:
        m = self.members.get(mid, Member())
        info = self.member_info.get(mid, {})
        return {"id": mid, "name": m.name, "peer_urls": list(m.peer_urls), "peer_key": m.peer_key,
                "client_urls": info.get("client_urls") or [], "watch_urls": info.get("watch_urls") or [],
                "grpc_urls": info.get("grpc_urls") or [], "is_learner": self.ms.is_learner(mid)}

    def _members_wire(self) -> list[dict[str, Any]]:
        return [self._member_wire(mid) for mid in self.members]

    def _on_join(self) -> M.PeerJoinResp:
        """PEER_JOIN from a node that is starting with --initial-cluster-state existing."""
        return M.PeerJoinResp(self.cfg.cluster_id, [
            M.JoinMember(i, m.name, list(m.peer_urls), self.ms.is_learner(i), m.peer_key)
            for i, m in self.members.items()])

    def _restore_membership(self, snap: SnapshotMeta) -> None:
        if not self.ms.restore(snap):
            return
        self._sync_transport()
        self.log.info("membership_restored", index=snap.index, voters=[f"{v:x}" for v in self.conf.voters],
                      learners=[f"{v:x}" for v in self.conf.learners])

    def _apply_membership(self, entries: list[Entry]) -> None:
        """Committed entries are being applied: conf changes switch the membership; member
        ops waiting on one of these indexes get their answer."""
        for e in entries:
            waiter = self.member_ops.pop(e.index, None) if self.member_ops else None
            if e.type != EntryType.CONF_CHANGE:
                if waiter is not None:
                    waiter[1](None, errors.Unavailable("etcdserver: leader changed; the membership change "
                                                       "was not applied").to_wire())
                continue
            try:
                cc = ConfChange.from_bytes(e.data)
            except ValueError as exc:
                self.log.error("conf_change_undecodable", index=e.index, error=str(exc))
                continue
            self._apply_conf_change(e.index, cc)
            if waiter is not None:
                term, reply = waiter
                if term != e.term:
                    reply(None, errors.Unavailable("etcdserver: leader changed; the membership change "
                                                   "was not applied").to_wire())
                elif cc.type == CC.REMOVE_NODE:
                    reply({"members": self._members_wire()}, None)
                else:
                    reply({"member": self._member_wire(cc.node_id), "members": self._members_wire()}, None)

    def _apply_conf_change(self, index: int, cc: ConfChange) -> None:
        done = self.ms.apply(index, cc, self.node.apply_conf_change(cc))
        mid = cc.node_id
        if cc.type == CC.REMOVE_NODE and mid not in self.conf.voters:
            self.member_info.pop(mid, None)
            self.last_heard.pop(mid, None)
            gone = done.removed
            if mid != self.id and gone and gone.peer_urls:
                # Keep the link a little: a removed leader's hand-over (TIMEOUT_NOW) and
                # replies in flight still get through; the Raft core ignores the rest.
                self.lingering[mid] = (gone.peer_urls[0], gone.peer_key)
                self.call_later(min(2 * self.cfg.election_timeout / 1000.0, 5.0),
                                functools.partial(self._forget_peer, mid))
        self._sync_transport()
        self.log.info("membership_changed", index=index, change=cc.type.name.lower(), member=f"{mid:x}",
                      voters=[f"{v:x}" for v in self.conf.voters], learners=[f"{v:x}" for v in self.conf.learners],
                      changed=done.changed)
        if cc.type == CC.REMOVE_NODE and mid == self.id and self.id not in self.conf.voters:
            self._on_removed(index)
        elif self.conf.voters == [self.id]:
            self._campaign_if_alone = True

    def _on_removed(self, index: int) -> None:
        """This member is out of the cluster: leave a marker and stop (after a grace period
        in which a removed leader's successor can still get our vote)."""
        if self.removed:
            return
        self.removed = True
        path = os.path.join(self.data_dir, REMOVED_MARKER)
        with open(path + ".tmp", "w") as f:
            json.dump({"member_id": self.id, "index": index}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        self.log.error("member_removed", member_id=f"{self.id:x}", index=index,
                       message="this member has been permanently removed from the cluster; the node stops")
        grace = min(2 * self.cfg.election_timeout / 1000.0, 5.0)
        self.call_later(grace, self._stop_removed)

    def _stop_removed(self) -> None:
        self.stopping = True

    def _on_member(self, identity: bytes, msg: M.Member) -> None:
        ctx_id, op = msg.ctx_id, msg.op
        if self.removed:
            self._reply(identity, M.MemberResp(ctx_id, None, errors.Stopping(
                "etcdserver: this member was removed from the cluster").to_wire()))
        elif self.lead == self.id:
            self._member_request(op, lambda result, error: self._reply(identity, M.MemberResp(ctx_id, result, error)))
        elif self.lead and self.lead in self.transport.peers:
            ctx = next(self._ctx)
            self.forwarded[ctx] = (identity, ctx_id, time.monotonic() + 10.0)
            if not self.transport.send(self.lead, M.PeerMember(self.id, ctx, op)):
                del self.forwarded[ctx]
                self._reply(identity, M.MemberResp(ctx_id, None, errors.NoLeader().to_wire()))
        else:
            self._reply(identity, M.MemberResp(ctx_id, None, errors.NoLeader().to_wire()))

    def _member_resp_to_peer(self, frm: int, ctx: int, result: Any, error: Any) -> None:
        self.transport.send(frm, M.PeerMemberResp(self.id, ctx, result, error))

    def _auto_promoted(self, mid: int, result: Any, error: Any) -> None:
        self.log.info("learner_auto_promoted" if error is None else "learner_auto_promote_failed",
                      member=f"{mid:x}", error=error)

    def _member_request(self, op: dict, reply: Callable[[Any, Any], None]) -> None:
        """On the leader: check a member op, propose its conf change; `reply(result, error)`
        runs once it is applied (or refused now)."""
        try:
            if self.disk.failed:
                raise self._disk_refusal()
            if self.lead != self.id:
                raise errors.NoLeader("etcdserver: not leader")
            cc = self.ms.check(op, self._view(), lambda name, urls: new_member_id(
                self.cfg.cluster_id, name, urls, time.time_ns()))
            self.node.propose_conf_change(cc)
        except errors.QkvError as err:
            reply(None, err.to_wire())
            return
        except ConfChangeRefused:
            reply(None, errors.ConfChangeInProgress().to_wire())
            return
        except ProposalDropped as exc:
            reply(None, errors.NoLeader(f"etcdserver: {exc}").to_wire())
            return
        st = self.node.status()
        self.member_ops[st.last_index] = (st.term, reply)
        self.log.info("conf_change_proposed", index=st.last_index, change=cc.type.name.lower(),
                      member=f"{cc.node_id:x}")

    def _view(self) -> ClusterView:
        """What the membership policy needs to know now: members heard from within an election
        timeout and connected right now (etcd: transport ActiveSince), us included, and the
        leader's progress."""
        st = self.node.status()
        members = [*self.conf.voters, *self.conf.learners]
        active = frozenset(m for m in members if m == self.id or self._peer_active(m))
        return ClusterView(active, st.pending_conf_index > st.applied, st.commit,
                           {i: p[0] for i, p in st.progress.items()}, frozenset(self.transport.removed),
                           self.cfg.peer_security)

    def _peer_active(self, peer: int) -> bool:
        """Heard from within an election timeout, and connected now: a HELLO goes out (the
        links use ZMQ_IMMEDIATE, so a send to a dead peer fails at once)."""
        window = max(self.cfg.election_timeout / 1000.0, 0.2)
        return (time.monotonic() - self.last_heard.get(peer, -1e9) < window
                and self.transport.send(peer, M.PeerHello(self.id, self._my_info())))

    def _auto_promote(self) -> None:
        """--auto-promote-learners: the leader promotes a learner once it has caught up."""
        if self.lead != self.id or not self.conf.learners or self.removed:
            return
        mid = self.ms.promotion_candidate(self._view())
        if mid is not None:
            self._member_request({"op": "member_promote", "member_id": mid},
                                 functools.partial(self._auto_promoted, mid))

    # --- metrics (actors/runtime/metrics.py) -------------------------------------------
    def _metrics_tick(self) -> None:
        metrics.proposals_committed.set(self.committed)
        self.transport.flush_metrics()
        if self._rtt_sent:  # heartbeats whose response never came (lost): not timed
            now = time.monotonic()
            for peer in [p for p, t in self._rtt_sent.items() if now - t > RTT_PROBE_MAX_S]:
                del self._rtt_sent[peer]

    def _rtt_observed(self, peer: int) -> None:
        """A HEARTBEAT_RESP from `peer` while a heartbeat to it is being timed."""
        child = self._rtt_children.get(peer)
        if child is None:
            child = self._rtt_children[peer] = metrics.peer_rtt_seconds.labels(f"{peer:x}")
        child.observe(time.monotonic() - self._rtt_sent.pop(peer))

    def _snap_send_done(self, to: int, ok: bool) -> None:
        label = f"{to:x}"
        started = self._snap_send_started.pop(to, None)
        if ok:
            metrics.snapshot_send_success.labels(label).inc()
            if started is not None:
                metrics.snapshot_send_seconds.labels(label).observe(time.monotonic() - started)
        else:
            metrics.snapshot_send_failures.labels(label).inc()

    def _snap_recv_done(self, frm: int, snap_id: int, ok: bool) -> None:
        label = f"{frm:x}"
        started = self._snap_recv_started.get(frm)
        if started is not None and started[0] == snap_id:
            del self._snap_recv_started[frm]
        else:
            started = None
        if ok:
            metrics.snapshot_receive_success.labels(label).inc()
            if started is not None:
                metrics.snapshot_receive_seconds.labels(label).observe(time.monotonic() - started[1])
        else:
            metrics.snapshot_receive_failures.labels(label).inc()

    # --- stats and shutdown ----------------------------------------------------------
    def _log_stats(self) -> None:
        if self.fsyncs:
            self.log.info("wal_stats", fsyncs=self.fsyncs, entries=self.entries_synced,
                          entries_per_fsync=round(self.entries_synced / self.fsyncs, 1),
                          interval_s=STATS_INTERVAL_S)
        self.fsyncs = self.entries_synced = 0

    def _hand_over_leadership(self) -> None:
        """On a clean stop, a leader hands over to its most up-to-date follower (not while
        frozen: nothing could be sent)."""
        if self.lead != self.id or len(self.conf.voters) < 2 or self.disk.failed:
            return
        progress = self.node.status().progress or {}
        followers = [(p[0], peer) for peer, p in progress.items() if peer != self.id and peer in self.conf.voters]
        if not followers:
            return
        _, target = max(followers)
        self.node.transfer_leader(target)
        deadline = time.monotonic() + min(2 * self.cfg.election_timeout / 1000.0, 2.0)
        while self.lead == self.id and time.monotonic() < deadline:
            self._loop_once()
        self.log.info("leadership_handed_over", to=f"{target:x}", done=self.lead != self.id)

    def shutdown(self) -> None:
        # Also after a setup that stopped half-way (each part exists once setup made it).
        try:
            if hasattr(self, "node") and hasattr(self, "lead"):
                self._hand_over_leadership()
        finally:
            if hasattr(self, "transport"):
                self.transport.flush_metrics()
            if hasattr(self, "wal"):
                self.wal.close()
