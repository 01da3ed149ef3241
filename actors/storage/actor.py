"""The storage actor: applies committed entries to the MVCC store and serves reads.

- It pulls committed entries from consensus (FETCH after applied_index -> ENTRIES) and
  applies each batch as one RocksDB write that also records `applied_index`, so a crash
  at any point leaves data and index in step; after a restart it simply fetches from
  its applied index again. Consensus re-arms the fetch with every ENTRIES it sends, up to
  a window; the next FETCH goes out once half of it has arrived (runtime/messages.py
  MAX_FETCH_AHEAD_BATCHES), and one from the applied index after FETCH_RESEND_S without any
  (consensus may have restarted, something may have been lost); re-sent or stale
  batches are harmless because apply skips indexes at or below applied_index.
- The store's writes are not fsynced one by one (the Raft log is the durable copy).
  About once a second the RocksDB WAL is synced and that index is reported to
  consensus as `durable_applied`; consensus never compacts its log above it.
- Replies to writes that arrived through this node's gateway go back to it, already encoded
  as client frames (CLIENT_REPLIES);
  every applied revision's events go to the watch actor (EVENTS). Neither send ever
  blocks: if the receiver is gone, the message is dropped and the receiver recovers
  (the gateway times the request out; the watch catches up from history).
- A read carries the index it must see (0 for serializable, the read index for
  linearizable); it waits until applied_index reaches it.
- Lease expiry (SPEC "Leases"): the lease table is in the store (applied from the log);
  the policy (deadlines on the leader only, promotion once caught up to the term's start,
  demotion, expiry proposals with a rate limit, checkpoints, the clearing checkpoint a
  keep-alive waits for) is the pure Lessor's (actors/storage/lessor.py, its "Rules:").
  This actor does its I/O: it tells it who leads (LEADERSHIP from consensus), what the
  log applied and the monotonic time; it sends its replies (keep-alive and time-to-live,
  answered once the read index the gateway got first has applied) and proposes its
  entries through consensus (LEASE_PROPOSE, only accepted while leading in that term):
  nothing is deleted except by a committed entry, so a leader without quorum revokes
  nothing. Ticks every LEASE_TICK_S (expiry) and LEASE_CHECKPOINT_S (checkpoints, etcd
  #9888, on by default).
- Auth (issue 11, SPEC "Authentication"): the auth state (users, roles, permissions) is
  the store's (mvcc/store.py, persisted in the same write as the batch that changed it).
  Every entry carries its auth (runtime/entry.py) and the store checks it at apply;
  entries with req_id 0 are the server's own (lease expiry and checkpoints,
  auto-compaction, the gateway's alarms) and are not checked. Every client read
  (CLIENT_READ) carries its auth too and is checked here before it is served. After a
  batch that changed the auth state (and after a snapshot install, and at start) the
  whole state is PUSHed to the gateway and the watch actor (AUTH_STATE), before the
  batch's replies and events; applied `authenticate` entries are PUSHed as AUTH_TOKEN
  grants to both. AUTH_STATE_GET on the ROUTER answers with AUTH_STATE.
- Snapshot saves (`qkvctl snapshot save`, SPEC section 6): a `snapshot` request makes a
  RocksDB checkpoint under `<data-dir>/snapsave` (consistent: taken between two applied
  batches, with the metadata read at that instant) and each further request reads one
  chunk of it (snapshot_file.py), so serving never stops for long; a save left idle for
  SNAPSHOT_IDLE_S is dropped with its checkpoint.
- Compaction (issue 13): the `compact` entry's apply is logical (mvcc/store.py); the rows
  it makes obsolete are removed here afterwards, in slices of at most
  `--compaction-batch-limit` revisions and about 5 ms each (COMPACTION_SCAN_S plus the
  write), COMPACTION_PAUSE_S apart (etcd: 1,000 revisions, 10 ms), so applies and reads
  interleave. Each slice is one
  write that records its progress, so a restart resumes it (`compaction_started` with
  `resumed`, then `compaction_finished`); none runs while the disk is failed. A `compact`
  with `physical` that came through this member's gateway is answered once this member's
  physical compaction has reached its revision (etcd's semantics); without, at apply.
- `hash_kv` (the corruption check's, `endpoint hashkv`) runs as a job over a pinned
  snapshot of the store, HASH_SLICE_S at a time between other work; at most HASH_JOBS_MAX
  at once, HASH_QUEUE_MAX more wait, beyond that `unavailable`. A job whose store is
  replaced (snapshot install, disk reopen) starts again on the new one (the scheduling:
  actors/storage/hashjobs.py).
- A full disk (issue 12; actors/runtime/diskfault.py): a write of the store that the disk
  refuses (apply, the periodic WAL sync, the open at start) does not take the actor down.
  The batch is not applied (nothing of it was written, nothing is published); one log line
  (`disk_full`, naming the store's directory) starts the episode; status reports `disk`;
  reads are served from the store as it was; no entries are fetched. Every so often
  (backing off, once the filesystem shows room) the database is closed and opened again
  (RocksDB stays unable to write on that handle otherwise); a reopen that fails leaves a
  read-only handle, so reads go on. Once it opens read-write the store is read again from
  disk, entries are fetched from the applied index, and `disk_recovered` is logged. The
  gateway refuses writes meanwhile (it sees `disk` in the status it polls).
"""
from __future__ import annotations

import heapq
import itertools
import os
import shutil
import time
from typing import Any, NamedTuple, cast

import zmq

from actors.runtime import entry
from actors.runtime import messages as M
from actors.runtime import metrics
from actors.runtime import wire
from actors.runtime.entry import InvalidEntry
from actors.runtime.entry_ops import validate_entry_op
from actors.runtime.actor import Actor
from actors.runtime.diskfault import NO_SPACE, DiskFault, disk_error_kind, enough_room
from actors.runtime.failpoints import failpoint
from actors.storage.backend import RocksBackend, fsync_dir
from actors.storage.compactor import make_compactor
from actors.storage.defrag import Defrag
from actors.storage.hashjobs import Done, HashJobs
from actors.storage.lessor import Lessor, LessorConfig, Reply
from actors.storage.mvcc import alarms as alarm_rules
from actors.storage.mvcc import MVCCStore
from actors.storage.mvcc.store import AUTH_ENTRY_OPS, SERVER
from actors.storage import reads
from actors.storage.offline import mark_installed
from actors.storage.snapshot_file import (
    BadOffset, SnapshotFileError, SnapshotMeta, SnapshotSaves, TooManySaves, UnknownSave,
)
from protocol import VERSION, errors
from protocol.requests import LEASE_LEADER_OPS, SNAPSHOT_CHUNK_DEFAULT, SNAPSHOT_CHUNK_MIN, SNAPSHOT_FRAME_OVERHEAD

FETCH_RESEND_S = 0.3
SYNC_INTERVAL_S = 1.0
LEASE_TICK_S = 0.25
LEASE_REVOKES_PER_S = 500
REPLIES_MESSAGE_BYTES = 4 * 1024 * 1024  # client read replies are sent on once a batch holds this much
READ_TURN_BYTES = 4 * 1024 * 1024  # reply bytes made per loop turn before the rest waits a turn
LEASE_RETRY_S = 3.0  # an expiry or clear proposal that did not apply is proposed again
LEASE_CHECKPOINT_S = float(os.environ.get("QKV_LEASE_CHECKPOINT_S", "5.0"))
LEASE_CHECKPOINT_BATCH = 1000
LEADERSHIP_SILENCE_S = 3.0  # no LEADERSHIP from consensus for this long: stop acting as leader
# Auto-compaction in revision mode checks this often (etcd: 5 minutes); tests shorten it.
AUTO_COMPACTION_REVISION_INTERVAL_S = float(os.environ.get("QKV_AUTO_COMPACTION_REVISION_INTERVAL_S", "300"))
AUTO_COMPACTION_TICK_S = 0.1
DEFRAG_POLL_S = 0.02
# `snapshot save`: a save not asked for its next chunk for this long is dropped (client gone)
SNAPSHOT_IDLE_S = float(os.environ.get("QKV_SNAPSHOT_IDLE_S", "10.0"))
# A lease is checkpointed when its remaining TTL is this much below what the log knows
# (its last checkpoint, or its full TTL); leases kept alive more often are never touched.
LEASE_CHECKPOINT_MARGIN_MS = 1000
DISK_RETRY_TICK_S = 0.1  # how often a failed disk is looked at (DiskFault sets the backoff)
# Physical compaction (module docstring): a slice's scan stops at --compaction-batch-limit
# revisions or after COMPACTION_SCAN_S, whichever first, then writes its deletions (~1 ms
# more: about 5 ms a slice); then other work for the pause.
COMPACTION_SCAN_S = 0.004
COMPACTION_PAUSE_S = 0.01  # etcd's compaction batch interval
# hash_kv jobs: each loop turn gives one job (round-robin) this long.
HASH_SLICE_S = 0.005
HASH_JOBS_MAX = 2
HASH_QUEUE_MAX = 64
METRICS_INTERVAL_S = 1.0  # gauges (applied index, sizes, keys) are set this often
SLOW_APPLY_S = 0.1  # etcd's warnApplyDuration: an applied batch slower than this is a slow apply


# What each socket may receive (runtime/wire.py decodes and checks every message).
_CONSENSUS_TYPES = frozenset((M.ENTRIES,))
_REQUEST_TYPES = frozenset((M.READ, M.CLIENT_READ, M.LEADERSHIP, M.CHECKPOINT, M.INSTALL, M.HASH_KV,
                            M.STORAGE_STATUS, M.DEFRAG, M.AUTH_STATE_GET))


def _event_wire(ev: Any) -> M.Event:
    return M.Event(ev.type, ev.kv, ev.prev_kv)


class PendingRead(NamedTuple):
    """A read waiting to be served: who asked (identity; client_id None for the watch
    actor's own reads), the op, the asker's auth, and the term its read index was
    confirmed in (0: a serializable read, or not known)."""
    identity: bytes
    req_id: int
    op: dict
    client_id: Any
    auth: Any
    read_term: int


class StorageActor(Actor):
    role = "storage"

    def setup(self) -> None:
        cfg = self.cfg
        self.member_id = cfg.member_id
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.store_dir = os.path.join(self.data_dir, "storage")
        self._recover_install()
        self.disk = DiskFault(self.store_dir)
        # On a full disk RocksDB cannot open read-write: read-only, so reads go on.
        self.backend = RocksBackend(self.store_dir, fallback_read_only=True)
        self.backend.write_observer = metrics.backend_commit_seconds.observe
        if self.backend.open_error is not None:
            self._disk_error(self.backend.open_error, "open")
        self.store = MVCCStore(self.backend)
        if not self.disk.failed:
            try:
                self.backend.sync()  # whatever survived the last run is durable from here on
            except Exception as exc:
                if not self._disk_error(exc, "sync"):
                    raise
        self.durable_applied = self.store.applied_index
        self.raft_term = 0
        self.dropped = wire.Dropped(self.log)  # invalid internal messages (runtime/wire.py)
        self.consensus = self.socket(zmq.DEALER, connect=self.endpoints.consensus, handler=self.on_consensus)
        self.router = self.socket(zmq.ROUTER, bind=self.endpoints.storage, handler=self.on_request)
        self.results = self.socket(zmq.PUSH, connect=self.endpoints.gateway_results)
        self.events = self.socket(zmq.PUSH, connect=self.endpoints.watch_events)
        self.fetch_sent_at = 0.0  # when the last FETCH went out (0: the last one could not)
        self.fetch_window = (0, 0)  # (ENTRIES, bytes of entry data) received since (messages.py)
        self.entries_at = 0.0  # when the last ENTRIES arrived
        # (min_index, seq, identity, req_id, op, client_id, auth): reads waiting for
        # applied_index to reach min_index; client_id is None for READ (decoded reply, the
        # watch actor's: auth SERVER, unchecked), else CLIENT_READ (checked with its auth)
        self.waiting: list[tuple[int, int, PendingRead]] = []  # (min index, seq, read): a heap
        # Reads past this loop turn's byte budget, served first thing next turn after the
        # reads that arrive then (so a few big reads cannot hold up everybody's small ones).
        self.deferred: list[PendingRead] = []
        self.turn_bytes = 0
        self.cluster_id = cfg.cluster_id
        self._seq = itertools.count()
        self.every(FETCH_RESEND_S, self._resend_fetch)
        self.every(SYNC_INTERVAL_S, self._sync)
        self.every(DISK_RETRY_TICK_S, self._disk_retry)
        self._lease_setup()
        self._maintenance_setup()
        # Snapshot saves in progress: checkpoints in their own dir (consensus empties
        # `snapshots` whenever it starts), removed when done, idle, or at start.
        self.saves = SnapshotSaves(os.path.join(self.data_dir, "snapsave"), SNAPSHOT_IDLE_S)
        self.every(1.0, self._snapshot_expire)
        self._compaction_setup()
        self._send_fetch()
        self._push_auth_state()  # a gateway or watch that asked while we were away learns it now
        # Lease counts are per request: kept here, written once a second with the gauges.
        self._leases_granted = self._leases_revoked = self._leases_renewed = self._leases_expired = 0
        self._lease_ttls = metrics.HistogramTally(metrics.lease_ttl)
        self.every(METRICS_INTERVAL_S, self._metrics_tick)
        self._metrics_tick()
        self.log.info("storage_loaded", applied_index=self.store.applied_index,
                      revision=self.store.current_revision, compact_revision=self.store.compact_revision)

    # --- entries from consensus ----------------------------------------------------
    def _send_fetch(self, resend: bool = True) -> None:
        """FETCH from the applied index; `resend=False` (an ENTRIES window's
        acknowledgement) lets consensus go on after the batches already on their way."""
        if self.disk.failed:
            return  # nothing can be applied: fetched again once writes work
        self.fetch_window = (0, 0)
        try:
            self.consensus.send(wire.pack(M.Fetch(self.store.applied_index, self.durable_applied, 4096, resend)),
                                zmq.NOBLOCK)
        except zmq.ZMQError:
            self.fetch_sent_at = 0.0
            return
        self.fetch_sent_at = time.monotonic()

    def _resend_fetch(self) -> None:
        """Neither a FETCH sent nor an ENTRIES received for FETCH_RESEND_S: one from the
        applied index (a restarted consensus learns of us; anything lost on the way is sent
        again; durable_applied is reported). Not while ENTRIES still arrive: a storage slow to
        apply a long catch-up would otherwise have consensus send its window again and again,
        piling duplicates into its queue."""
        if time.monotonic() - max(self.fetch_sent_at, self.entries_at) >= FETCH_RESEND_S:
            self._send_fetch()

    def _sync(self) -> None:
        if self.store.applied_index > self.durable_applied and not self.disk.failed:
            try:
                self.backend.sync()
            except Exception as exc:
                if not self._disk_error(exc, "sync"):
                    raise
                return
            self.durable_applied = self.store.applied_index

    # --- a full disk (module docstring; runtime/diskfault.py) --------------------------
    def _disk_error(self, exc: Exception, during: str) -> bool:
        """A write of the store raised `exc`: True when the disk refused it (the episode
        starts or goes on; logged once), False for anything else (the caller re-raises)."""
        kind = disk_error_kind(exc)
        if kind is None:
            return False
        info = self.disk.fail(time.monotonic(), exc, kind)
        if info is not None:
            self.log.error("disk_full" if kind == NO_SPACE else "disk_write_failed", during=during, **info,
                           applied_index=self.store.applied_index if hasattr(self, "store") else None,
                           action="writes refused, reads served from what is applied; retrying by itself")
        if getattr(self, "waiting", None):  # they wait for entries that cannot be applied now
            waiting, self.waiting = self.waiting, []
            self._stalled_reads([w[2] for w in waiting])
        return True

    def _disk_retry(self) -> None:
        now = time.monotonic()
        if not self.disk.due(now):
            return
        if not enough_room(self.store_dir):
            self.disk.not_yet(now)
            return
        self._defrag_join()
        self._hash_restart()  # their snapshots go with the handle
        try:
            self.backend.reopen()
        except Exception as exc:
            if not self._disk_error(exc, "reopen"):
                raise
        # Read again from disk, read-write or read-only: the store is what the disk holds.
        self.store = MVCCStore(self.backend)
        if self.disk.failed and self.backend.open_error is None:
            info = self.disk.recover(time.monotonic())
            if info is not None:
                self.log.info("disk_recovered", **info, applied_index=self.store.applied_index)
            self.durable_applied = self.store.applied_index  # the reopen flushed the WAL
            self._push_auth_state()
            self._send_fetch()
            self._serve_waiting()
            self._compaction_kick()

    def on_consensus(self, frames: list[bytes]) -> None:
        try:
            msg: M.Entries = wire.decode(frames[-1], _CONSENSUS_TYPES)
        except errors.Malformed as err:
            self.dropped("storage.consensus", err)
            return
        raw_entries, term = msg.entries, msg.term
        self.raft_term = max(self.raft_term, term)
        if self.disk.failed:
            return  # fetched before the disk failed: fetched again (resend) once writes work
        self.entries_at = time.monotonic()
        batches, size = self.fetch_window
        batches += 1
        for row in raw_entries:
            size += len(row.data)
        self.fetch_window = (batches, size)
        gap = False
        batch: list[tuple[int, dict | errors.QkvError | None, Any]] = []
        origins: dict[int, tuple[int, int, Any]] = {}
        kinds: set[str] = set()  # the ops of the batch other than put: what else to do after it
        expected = self.store.applied_index + 1
        for index, _term, _type, data in raw_entries:
            if index < expected:
                continue
            if index != expected:
                self.log.warning("entries_gap", expected=expected, got=index)
                gap = True
                break
            expected += 1
            op: dict | errors.QkvError | None = None
            auth: Any = None
            # Type 1 = a Raft conf change (membership, consensus's business): only the
            # applied index moves past it.
            if data and _type == 0:
                op, auth = self._decode_entry(index, data, origins)
                if isinstance(op, dict) and op["op"] != "put":
                    kinds.add(op["op"])
            batch.append((index, op, auth))
        if batch:
            failpoint("before_storage_commit")
            if "compact" in kinds:
                failpoint("during_compaction")  # the compaction is in this batch's one write
            auth_before = self.store.auth
            started = time.monotonic()
            try:
                results = self.store.apply(batch)
            except Exception as exc:
                if not self._disk_error(exc, "apply"):
                    raise
                return  # nothing of the batch was written or published
            if time.monotonic() - started > SLOW_APPLY_S:
                metrics.slow_apply.inc()
            failpoint("after_storage_commit")
            if self.store.auth is not auth_before or not kinds.isdisjoint(AUTH_ENTRY_OPS):
                self._publish_auth(batch, results, auth_before)
            self._publish(results, origins, batch if "compact" in kinds else None)
            if any(kind.startswith("lease_") for kind in kinds):
                self._lease_applied(batch, results)
            self._compaction_kick()
        if gap:
            self._send_fetch()  # from the applied index: what follows it was lost
        elif 2 * batches >= M.MAX_FETCH_AHEAD_BATCHES or 2 * size >= M.MAX_FETCH_AHEAD_BYTES:
            self._send_fetch(resend=False)  # half the window: consensus goes on after what it sent
        self._serve_waiting()
        self._maybe_promote()

    def _decode_entry(self, index: int, data: bytes, origins: dict[int, tuple[int, int, Any]]
                      ) -> tuple[dict | errors.QkvError, Any]:
        """A committed entry's op, validated whole (runtime/entry.py, entry_ops.py), and the
        auth it is checked with (SERVER for req_id 0: an entry the server wrote itself, never
        a client's request). An entry that does not validate is applied as the same
        `invalid_argument` error on every member (the reason depends only on the entry): it
        takes its index, changes nothing."""
        try:
            ent = entry.decode(data)
            origins[index] = (ent.origin, ent.req_id, ent.client_id)
            return validate_entry_op(ent.op), (SERVER if ent.req_id == 0 else ent.auth)
        except InvalidEntry as exc:
            self.log.error("entry_invalid", index=index, reason=str(exc)[:200])
            return errors.InvalidArgument(f"etcdserver: invalid log entry: {exc}"[:300]), None

    def _client_frame(self, client_id: Any, response: dict | None, error: Any, revision: int) -> bytes:
        return reads.client_frame(client_id, response, error, cluster_id=self.cluster_id,
                                  member_id=self.member_id, revision=revision, raft_term=self.raft_term)

    def _publish(self, results: list, origins: dict[int, tuple[int, int, Any]], batch: list | None) -> None:
        """The batch's replies to this member's gateway (first: a client waits for them),
        then its events to the watch actor. `batch` is given when it holds a `compact`
        (one with `physical` is answered once the physical compaction got there)."""
        replies = []
        physical = {} if batch is None else {
            index: op["revision"] for index, op, _ in batch
            if isinstance(op, dict) and op.get("op") == "compact" and op.get("physical")}
        member_id, raft_term, cluster_id = self.member_id, self.raft_term, self.cluster_id
        for res in results:
            origin = origins.get(res.index)
            if origin is not None and origin[0] == member_id:
                error = res.error.to_wire() if res.error is not None else None
                frame = reads.client_frame(origin[2], res.response, error, cluster_id=cluster_id,
                                           member_id=member_id, revision=res.revision, raft_term=raft_term)
                reply = M.ClientReply(origin[1], frame, res.revision)
                if physical:
                    target = physical.get(res.index)
                    if target is not None and error is None and self.store.physical_revision < target:
                        self.physical_waiting.append((target, reply))  # answered by _compaction_slice
                        continue
                replies.append(reply)
        if replies:
            try:
                self.results.send(wire.pack(M.ClientReplies(replies)), zmq.NOBLOCK)
            except zmq.ZMQError:
                self.log.warning("results_dropped", count=len(replies))
        revisions = [(res.revision, [(e.type, e.kv, e.prev_kv) for e in res.events]) for res in results if res.events]
        if revisions:
            try:  # the items as their wire arrays (M.RevisionEvents of M.Event: the same bytes)
                self.events.send(wire.pack(M.Events(cast(list, revisions))), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the watch actor is away; it catches up from history

    def _push(self, sock: zmq.Socket, msg: M.Message) -> None:
        try:
            sock.send(wire.pack(msg), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the receiver is away: it asks (AUTH_STATE_GET) when it comes back

    def _push_auth_state(self) -> None:
        frame_body = [self.store.auth.to_wire()]
        self._push(self.results, M.AuthState(*frame_body))
        self._push(self.events, M.AuthState(*frame_body))

    def _publish_auth(self, batch: list, results: list, before: Any) -> None:
        """After a batch: the new auth state if it changed, and the tokens of applied
        `authenticate` entries. Sent before the batch's replies and events on the same
        sockets, so the gateway knows a token (and a new user) before its client does."""
        if self.store.auth is not before:
            self._push_auth_state()
        ops = {index: op for index, op, _ in batch if isinstance(op, dict) and op.get("op") in AUTH_ENTRY_OPS}
        if not ops:
            return
        grants = []
        for res in results:
            op = ops.get(res.index)
            if op is not None and op["op"] == "authenticate" and res.error is None:
                issued = op.get("issued")
                grants.append(M.AuthTokenGrant(op["token_sha256"], op["name"], issued if isinstance(issued, int) else 0,
                                               op.get("key")))
        if grants:
            self._push(self.results, M.AuthToken(grants))
            self._push(self.events, M.AuthToken(grants))

    # --- reads and status from the gateway -----------------------------------------
    def on_request(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise errors.Malformed(f"expected 2 frames, got {len(frames)}")
            identity, frame = frames
            msg = wire.decode(frame, _REQUEST_TYPES)
        except errors.Malformed as err:
            self.dropped("storage.request", err)
            return
        if isinstance(msg, M.Read):  # the watch actor's own reads (history catch-up): not a client's
            self._reads(identity, [(r.min_applied_index, PendingRead(identity, r.req_id, r.op, None, SERVER, 0))
                                   for r in msg.items])
        elif isinstance(msg, M.ClientRead):
            self._reads(identity, [(r.min_applied_index, PendingRead(identity, r.req_id, r.op, r.client_id, r.auth,
                                                                     r.read_term)) for r in msg.items])
        elif isinstance(msg, M.AuthStateGet):
            self.send_router(self.router, identity, wire.pack(M.AuthState(self.store.auth.to_wire())))
        elif isinstance(msg, M.Leadership):
            self._on_leadership(msg)
        elif isinstance(msg, M.Checkpoint):
            self._checkpoint(identity, msg.ctx_id)
        elif isinstance(msg, M.Install):
            self._install(identity, msg.ctx_id, msg.path)
        elif isinstance(msg, M.HashKv):
            self._hash_answer(self.hash_jobs.request(self.store, (identity, msg.ctx_id), msg.revision))
        elif isinstance(msg, M.StorageStatusReq):
            ctx_id = msg.ctx_id
            size = self.backend.size_bytes()
            status: M.StorageStatus = {
                "applied_index": self.store.applied_index,
                "revision": self.store.current_revision,
                "compact_revision": self.store.compact_revision,
                "db_size": size,
                "db_size_in_use": min(size, self.backend.size_in_use_bytes()),
                "raft_term": self.raft_term,
                "alarms": alarm_rules.to_wire(self.store.alarms),
                "defragmenting": self.defrag.active,
                "auth_revision": self.store.auth.revision,
                "disk": self.disk.wire(time.monotonic()),
            }
            self.send_router(self.router, identity, wire.pack(M.StorageStatusResp(ctx_id, status)))
        elif isinstance(msg, M.Defrag):
            self._defrag_request(identity, msg.ctx_id)

    def _read(self, req_id: int, op: dict) -> list:
        try:
            if op.get("op") == "snapshot":  # `qkvctl snapshot save`: one chunk per request
                response = self._snapshot_chunk(op)
            else:
                response = reads.read(self.store, op)
            return [req_id, response, None, self.store.current_revision, self.raft_term]
        except errors.QkvError as err:
            return [req_id, None, err.to_wire(), self.store.current_revision, self.raft_term]

    def _reads(self, identity: bytes, reads: list[tuple[int, PendingRead]]) -> None:
        """Reads that may be served once this store applied `min index`."""
        applied = self.store.applied_index
        ready = []
        stalled = []
        for min_index, read in reads:
            if min_index <= applied:
                ready.append(read)
            elif self.disk.failed:
                stalled.append(read)
            else:
                heapq.heappush(self.waiting, (min_index, next(self._seq), read))
        self._answer(ready)
        self._stalled_reads(stalled)

    def _stalled_reads(self, reads: list[PendingRead]) -> None:
        """Reads that wait for entries this store cannot apply (its disk refuses writes).
        On a sole voter they are served at once: every write acknowledged anywhere was
        acknowledged by this storage after it applied it, so what it has applied holds
        them all (leading or not: a node restarted on a full disk cannot persist the vote
        that makes it leader, and nobody else can lead without that vote). Elsewhere another member may have applied and acknowledged
        more: `unavailable` (retryable: the client asks another member) at once rather
        than a timeout."""
        if not reads:
            return
        if self.sole_voter:
            self._answer(reads)
        else:
            self._answer(reads, errors.Unavailable(
                "etcdserver: this member cannot apply the log (its disk refuses writes); serializable reads "
                "are served, or ask another member"))

    def _answer(self, reads: list[PendingRead], error: errors.QkvError | None = None) -> None:
        """Serve reads, one message per asker and kind: decoded (READ_RESP) for the watch
        actor, finished client frames (CLIENT_REPLIES) for the gateway. A client read is
        checked against the applied auth state first (at serve time: the state it meets).
        With `error`, each gets that error instead."""
        out: dict[tuple[bytes, bool], list] = {}
        pending_bytes: dict[bytes, int] = {}
        for n, (identity, req_id, op, client_id, auth, read_term) in enumerate(reads):
            if error is None and self.turn_bytes >= READ_TURN_BYTES:
                self.deferred.extend(reads[n:])
                break
            if error is not None:
                revision = self.store.current_revision
                if client_id is None:
                    out.setdefault((identity, False), []).append([req_id, None, error.to_wire(), revision,
                                                                   self.raft_term])
                else:
                    frame = self._client_frame(client_id, None, error.to_wire(), revision)
                    out.setdefault((identity, True), []).append([req_id, frame, revision])
                continue
            if auth != SERVER:
                try:
                    self.store.check_read(auth, op)
                except errors.QkvError as err:
                    frame = self._client_frame(client_id, None, err.to_wire(), self.store.current_revision)
                    out.setdefault((identity, True), []).append([req_id, frame, self.store.current_revision])
                    continue
            if op.get("op") in LEASE_LEADER_OPS:
                self._lease_leader_op(identity, req_id, op, client_id, read_term)
                continue
            req_id, response, read_error, revision, _term = self._read(req_id, op)
            if client_id is None:
                out.setdefault((identity, False), []).append([req_id, response, read_error, revision,
                                                               self.raft_term])
            else:
                frame = self._client_frame(client_id, response, read_error, revision)
                out.setdefault((identity, True), []).append([req_id, frame, revision])
                self.turn_bytes += len(frame)
                pending_bytes[identity] = pending_bytes.get(identity, 0) + len(frame)
                if pending_bytes[identity] >= REPLIES_MESSAGE_BYTES:
                    # Big replies go out as they are made, not as one message of the whole
                    # batch: the gateway forwards (and bounds) them sooner (issue 12).
                    self.send_router(self.router, identity, wire.pack(M.ClientReplies(out.pop((identity, True)))))
                    pending_bytes[identity] = 0
        for (identity, client), replies in out.items():
            self.send_router(self.router, identity, wire.pack(M.ClientReplies(replies) if client else M.ReadResp(replies)))

    def _serve_waiting(self) -> None:
        applied = self.store.applied_index
        ready = []
        while self.waiting and self.waiting[0][0] <= applied:
            ready.append(heapq.heappop(self.waiting)[2])
        self._answer(ready)

    # --- snapshots -------------------------------------------------------------------
    def _checkpoint(self, identity: bytes, ctx_id: int) -> None:
        """A consistent copy of the store for a follower; consensus streams and removes it."""
        path = os.path.join(self.data_dir, "snapshots", f"out-{ctx_id}-{os.getpid()}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            started = time.monotonic()
            self.backend.checkpoint(path)
            metrics.backend_snapshot_seconds.observe(time.monotonic() - started)
            reply = M.CheckpointResp(ctx_id, path, self.store.applied_index, None)
        except Exception as exc:  # disk full, permissions: the leader retries later
            self.log.exception("checkpoint_failed")
            reply = M.CheckpointResp(ctx_id, None, 0, errors.Internal(f"checkpoint failed: {exc}").to_wire())
        self.send_router(self.router, identity, wire.pack(reply))

    def _install(self, identity: bytes, ctx_id: int, path: str) -> None:
        """Replace the store by a snapshot received from the leader.

        Crash-safe by renames: storage -> storage.old, snapshot -> storage, then remove
        storage.old; `_recover_install` finishes or undoes a half-done swap at start.
        """
        failpoint("snapshot_install")
        old = self.store_dir + ".old"
        snapshots = os.path.join(os.path.realpath(self.data_dir), "snapshots") + os.sep
        if not os.path.realpath(path).startswith(snapshots):
            self.log.warning("snapshot_rejected", error="path outside the snapshots dir")
            self.send_router(self.router, identity, wire.pack(M.InstallResp(
                ctx_id, self.store.applied_index, errors.InvalidArgument("install path outside the snapshots dir").to_wire())))
            return
        try:
            probe = RocksBackend(path)
            probe_store = MVCCStore(probe)
            applied = probe_store.applied_index
            mark_installed(probe_store)  # the log may end before this index (nodes/preflight.py)
            probe.close()
        except Exception as exc:
            self.log.warning("snapshot_rejected", error=str(exc)[:200])
            self.send_router(self.router, identity, wire.pack(
                M.InstallResp(ctx_id, self.store.applied_index, errors.Internal(str(exc)).to_wire())))
            return
        if applied <= self.store.applied_index:
            # Our store is already as new: the log, not the data, was what lagged.
            shutil.rmtree(path, ignore_errors=True)
            self.send_router(self.router, identity,
                             wire.pack(M.InstallResp(ctx_id, self.store.applied_index, None)))
            return
        self._defrag_join()
        self._hash_restart()  # their snapshots go with the old store
        self.backend.close()
        shutil.rmtree(old, ignore_errors=True)
        os.rename(self.store_dir, old)
        fsync_dir(self.data_dir)
        os.rename(path, self.store_dir)
        fsync_dir(self.data_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.backend = RocksBackend(self.store_dir, fallback_read_only=True)
        self.backend.write_observer = metrics.backend_commit_seconds.observe
        if self.backend.open_error is not None:
            self._disk_error(self.backend.open_error, "open")
        self.store = MVCCStore(self.backend)
        self.durable_applied = self.store.applied_index
        self._demote()  # a leader never installs a snapshot; start from the new table anyway
        self._push_auth_state()  # the snapshot carries the auth state of its index
        self.log.info("snapshot_installed", applied_index=self.store.applied_index,
                      revision=self.store.current_revision)
        self.send_router(self.router, identity, wire.pack(M.InstallResp(ctx_id, self.store.applied_index, None)))
        self._send_fetch()
        self._serve_waiting()
        self._release_physical_waiting()
        self._compaction_kick()  # the snapshot may carry physical work still to do

    def _recover_install(self) -> None:
        old = self.store_dir + ".old"
        if os.path.exists(old):
            if os.path.exists(self.store_dir):
                shutil.rmtree(old)  # the swap finished; only the clean-up was cut short
            else:
                os.rename(old, self.store_dir)  # cut between the renames: keep our own store
            fsync_dir(self.data_dir)

    # --- snapshot save (SPEC `snapshot`; actors/storage/snapshot_file.py) -------------
    def _snapshot_chunk(self, op: dict) -> dict:
        """Start a save (a checkpoint: consistent, made between two applied batches, the
        metadata read at the same instant) or serve its next chunk. Each call reads at most
        one chunk, so the actor keeps serving while a save is streamed."""
        limit = max(SNAPSHOT_CHUNK_MIN, self.cfg.max_request_bytes - SNAPSHOT_FRAME_OVERHEAD)
        max_bytes = min(op["max_bytes"] or SNAPSHOT_CHUNK_DEFAULT, limit)
        try:
            if op["snapshot_id"] == 0:
                meta = SnapshotMeta(
                    revision=self.store.current_revision, compact_revision=self.store.compact_revision,
                    applied_index=self.store.applied_index, key_count=self.store.key_count(),
                    cluster_id=self.cluster_id, member_id=self.member_id, created=time.time(),
                    version=VERSION)
                save = self.saves.start(self.backend.checkpoint, meta)
                self.log.info("snapshot_save_started", id=f"{save.snapshot_id:x}", revision=meta.revision,
                              applied_index=meta.applied_index, bytes=save.stream.total_size)
                snapshot_id, offset = save.snapshot_id, 0
            else:
                snapshot_id, offset = op["snapshot_id"], op["offset"]
            save, offset, data, done = self.saves.chunk(snapshot_id, offset, max_bytes)
        except TooManySaves as exc:
            raise errors.Unavailable(str(exc)) from None
        except (UnknownSave, BadOffset) as exc:
            raise errors.InvalidArgument(str(exc)) from None
        except (OSError, SnapshotFileError) as exc:  # disk full, a checkpoint file gone
            self.log.exception("snapshot_save_failed")
            raise errors.Internal(f"snapshot failed: {exc}") from None
        except Exception as exc:  # RocksDB's checkpoint on a full disk
            if disk_error_kind(exc) is None:
                raise
            self.log.warning("snapshot_save_failed", error=str(exc)[:300])
            if disk_error_kind(exc) == NO_SPACE:
                raise errors.NoSpace("snapshot save failed: no space left on this member's disk") from None
            raise errors.Internal(f"snapshot failed: {exc}"[:300]) from None
        if done:
            self.log.info("snapshot_save_sent", id=f"{save.snapshot_id:x}", bytes=save.stream.total_size)
        return {"snapshot_id": save.snapshot_id, "offset": offset, "data": data, "done": done,
                "total_size": save.stream.total_size, "snapshot_revision": save.stream.meta.revision}

    def _snapshot_expire(self) -> None:
        for snapshot_id in self.saves.expire():
            self.log.info("snapshot_save_dropped", id=f"{snapshot_id:x}", idle_s=SNAPSHOT_IDLE_S)

    # --- maintenance: defragmentation, auto-compaction ---------------------------------
    def _maintenance_setup(self) -> None:
        self.defrag: Defrag[tuple[bytes, int]] = Defrag()
        self.compactor = make_compactor(self.cfg.auto_compaction_mode, self.cfg.auto_compaction_retention,
                                        AUTO_COMPACTION_REVISION_INTERVAL_S)
        if self.compactor is not None:
            self.every(AUTO_COMPACTION_TICK_S, self._auto_compact_tick)

    def _defrag_request(self, identity: bytes, ctx_id: int) -> None:
        self._defrag_started(self.defrag.request(self.backend, (identity, ctx_id)))

    def _defrag_started(self, db_size: int | None) -> None:
        if db_size is not None:  # a pass started (actors/storage/defrag.py)
            self.log.info("defrag_started", db_size=db_size)
            self.call_later(DEFRAG_POLL_S, self._defrag_poll)

    def _defrag_poll(self) -> None:
        if not self.defrag.active:
            return
        done, started = self.defrag.poll(self.backend)
        if done is None:
            self.call_later(DEFRAG_POLL_S, self._defrag_poll)
            return
        if done.error is None:
            metrics.backend_defrag_seconds.observe(done.took_s)
            self.log.info("defrag_finished", took_s=round(done.took_s, 3), db_size_before=done.size_before,
                          db_size_after=done.size_after)
            reply: list = [{"took_s": done.took_s, "db_size_before": done.size_before,
                            "db_size_after": done.size_after}, None]
        else:
            self.log.error("defrag_failed", error=done.error)
            reply = [None, errors.Internal(f"defragment failed: {done.error}").to_wire()]
        for identity, ctx_id in done.askers:
            self.send_router(self.router, identity, wire.pack(M.DefragResp(ctx_id, *reply)))
        self._defrag_started(started)

    def _defrag_join(self) -> None:
        """Before the backend closes: a running compact_range (and any pass queued after it)
        must finish first."""
        while self.defrag.active:
            self.defrag.join()
            self._defrag_poll()

    def _auto_compact_tick(self) -> None:
        assert self.compactor is not None
        revision = self.compactor.tick(time.monotonic(), self.store.current_revision,
                                       self.store.compact_revision, self.lessor.promoted)
        if revision is not None:
            self.log.info("auto_compaction_proposed", revision=revision, mode=self.cfg.auto_compaction_mode,
                          retention=self.cfg.auto_compaction_retention)
            self._lease_propose([{"op": "compact", "revision": revision, "physical": False}])

    # --- physical compaction in slices (module docstring; MVCCStore.compact_step) --------
    def _compaction_setup(self) -> None:
        self.compaction_scheduled = False
        self.compaction_run: dict[str, Any] | None = None
        self.compaction_resumed = self.store.compaction_pending  # left pending by the last run
        # (revision, client reply): `compact` with `physical`, answered once this member's
        # physical compaction reaches the revision
        self.physical_waiting: list[tuple[int, M.ClientReply]] = []
        self.hash_jobs: HashJobs[tuple[bytes, int]] = HashJobs(HASH_JOBS_MAX, HASH_QUEUE_MAX)
        self._compaction_kick()

    def _compaction_kick(self, delay_s: float = 0.0) -> None:
        if self.compaction_scheduled or self.disk.failed or not self.store.compaction_pending:
            return
        self.compaction_scheduled = True
        self.call_later(delay_s, self._compaction_slice)

    def _compaction_slice(self) -> None:
        self.compaction_scheduled = False
        store = self.store
        if self.disk.failed or not store.compaction_pending:
            return
        run = self.compaction_run
        started = time.monotonic()
        if run is None:
            run = self.compaction_run = {"started": started, "revision": store.compact_revision,
                                         "from": store.physical_revision, "removed": 0, "slices": 0,
                                         "slice_max_s": 0.0}
            self.log.info("compaction_started", revision=store.compact_revision,
                          physical_revision=store.physical_revision, resumed=self.compaction_resumed,
                          batch_limit=self.cfg.compaction_batch_limit)
            self.compaction_resumed = False
        deadline = started + COMPACTION_SCAN_S
        try:
            removed = store.compact_step(self.cfg.compaction_batch_limit, stop=lambda: time.monotonic() >= deadline)
        except Exception as exc:
            if not self._disk_error(exc, "compaction"):
                raise
            return  # nothing of the slice was written; resumed once the disk recovers
        took_s = time.monotonic() - started
        metrics.compaction_keys.inc(removed)
        run["removed"] += removed
        run["slices"] += 1
        run["slice_max_s"] = max(run["slice_max_s"], took_s)
        self._release_physical_waiting()
        if store.compaction_pending:
            failpoint("compaction_slice")  # between two slices (tests kill it here)
            self._compaction_kick(COMPACTION_PAUSE_S)
            return
        self.compaction_run = None
        total_s = time.monotonic() - run["started"]
        metrics.compaction_seconds.observe(total_s)
        metrics.compaction_ms.observe(total_s * 1000)
        self.log.info("compaction_finished", revision=store.compact_revision, physical_from=run["from"],
                      revisions_removed=run["removed"], took_s=round(time.monotonic() - run["started"], 3),
                      slices=run["slices"], slice_max_ms=round(run["slice_max_s"] * 1000, 2))

    def _release_physical_waiting(self) -> None:
        if not self.physical_waiting:
            return
        done = self.store.physical_revision
        ready = [reply for target, reply in self.physical_waiting if target <= done]
        if not ready:
            return
        self.physical_waiting = [(t, r) for t, r in self.physical_waiting if t > done]
        try:
            self.results.send(wire.pack(M.ClientReplies(ready)), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.log.warning("results_dropped", count=len(ready))

    # --- hash_kv in slices (module docstring; actors/storage/hashjobs.py) ---------------
    def _hash_answer(self, done: list[Done[tuple[bytes, int]]]) -> None:
        for d in done:
            identity, ctx_id = d.asker
            self.send_router(self.router, identity, wire.pack(M.HashKvResp(ctx_id, d.result, d.error)))

    def _hash_restart(self) -> None:
        """Before the store's handle closes: running jobs start again on the store that
        replaces it."""
        if hasattr(self, "hash_jobs"):
            self.hash_jobs.restart()

    # --- leases: the I/O around the lessor (actors/storage/lessor.py) --------------------
    def _lease_setup(self) -> None:
        self.sole_voter = False  # this member is the only voter (LEADERSHIP): reads on a full disk
        self.lead = 0
        self.lead_urls: list[str] = []
        # A waiter is (identity, req_id, client_id, want_keys): where the reply goes.
        self.lessor: Lessor[tuple[bytes, int, Any, bool]] = Lessor(LessorConfig(
            tick_s=LEASE_TICK_S, revokes_per_s=LEASE_REVOKES_PER_S, retry_s=LEASE_RETRY_S,
            checkpoint_margin_ms=LEASE_CHECKPOINT_MARGIN_MS, checkpoint_batch=LEASE_CHECKPOINT_BATCH,
            silence_s=LEADERSHIP_SILENCE_S))
        self.every(LEASE_TICK_S, self._lease_tick)
        self.every(LEASE_CHECKPOINT_S, self._lease_checkpoint_tick)

    def _on_leadership(self, msg: M.Leadership) -> None:
        self.sole_voter = msg.sole_voter
        self.lead = msg.lead
        self.lead_urls = list(msg.lead_client_urls)
        self.raft_term = max(self.raft_term, msg.term)
        was = self.lessor.promoted_term
        self._lease_replies(self.lessor.leadership(time.monotonic(), msg.is_leader, msg.term, msg.ready_index), was)
        self._maybe_promote()

    def _maybe_promote(self) -> None:
        if not self.lessor.can_promote(self.store.applied_index):
            return
        replies = self.lessor.promote(time.monotonic(), self.store.leases())
        self.log.info("lease_promoted", term=self.lessor.promoted_term, leases=len(self.lessor.leases),
                      applied_index=self.store.applied_index)
        self._lease_replies(replies)

    def _demote(self) -> None:
        was = self.lessor.promoted_term
        self._lease_replies(self.lessor.demote(), was)

    def _lease_replies(self, replies: list[Reply[tuple[bytes, int, Any, bool]]], was: int | None = None) -> None:
        """Send the lessor's answers; log a demotion (promoted in term `was`, no longer)."""
        if was is not None and self.lessor.promoted_term is None:
            self.log.info("lease_demoted", term=was)
        for r in replies:
            identity, req_id, client_id, want_keys = r.waiter
            if r.kind == "keepalive":
                self._leases_renewed += 1  # written by _metrics_tick (a keep-alive is a hot path)
            if r.kind == "not_leader":
                response, error = None, self._not_leader()
            else:
                response, error = reads.lease_answer(self.store, r, want_keys)
            revision = self.store.current_revision
            frame = self._client_frame(client_id, response, error, revision)
            self.send_router(self.router, identity, wire.pack(M.ClientReplies([M.ClientReply(req_id, frame, revision)])))

    def _not_leader(self) -> dict:
        details: dict[str, Any] = {}
        if self.lead and not self.lessor.is_leader:
            details = {"leader_id": self.lead, "leader_client_urls": self.lead_urls}
        return errors.NotLeader(**details).to_wire()

    def _lease_leader_op(self, identity: bytes, req_id: int, op: dict, client_id: Any, read_term: int) -> None:
        """lease_keepalive / lease_timetolive: the leader's lessor answers them, only if it
        was promoted in the term the read index was confirmed in (else a lessor that has
        not yet heard it lost leadership would answer: tests/sim/leases.py)."""
        waiter = (identity, req_id, client_id, bool(op.get("keys")))
        self._lease_replies(self.lessor.request(time.monotonic(), waiter, op["op"], op["id"], read_term or None))

    def _lease_applied(self, batch: list[tuple[int, dict | errors.QkvError | None, Any]], results: list) -> None:
        ops = {index: op for index, op, _ in batch if isinstance(op, dict)}  # not refused entries
        applied: list[dict] = []
        for res in results:
            op = ops.get(res.index)
            if op is None or res.error is not None or not str(op.get("op", "")).startswith("lease_"):
                continue
            if op["op"] == "lease_expire":
                self.log.info("lease_expired", id=f"{op['id']:x}", revision=res.revision)
                self._leases_expired += 1
                self._leases_revoked += 1  # etcd counts an expired lease as revoked too
            elif op["op"] == "lease_grant":
                self._leases_granted += 1
                self._lease_ttls.observe(op.get("ttl", 0))
            elif op["op"] == "lease_revoke":
                self._leases_revoked += 1
            applied.append(op)
        if applied:
            self._lease_replies(self.lessor.applied(time.monotonic(), applied))

    def _lease_propose(self, ops: list[dict]) -> None:
        term = self.lessor.promoted_term
        if not ops or term is None:  # only a promoted lessor proposes
            return
        datas = [entry.encode(0, 0, None, None, op) for op in ops]  # req_id 0: the server's
        try:
            self.consensus.send(wire.pack(M.LeasePropose(term, datas)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # proposed again after LEASE_RETRY_S

    def _metrics_tick(self) -> None:
        """Gauges (actors/runtime/metrics.py): set once a second, never per batch."""
        metrics.proposals_applied.set(self.store.applied_index)
        metrics.keys_total.set(self.store.key_count())
        size = self.backend.size_bytes()
        metrics.db_total_size.set(size)
        metrics.db_total_size_in_use.set(min(size, self.backend.size_in_use_bytes()))
        self._metrics_counts()

    def _metrics_counts(self) -> None:
        for counter, attr in ((metrics.lease_granted, "_leases_granted"), (metrics.lease_revoked, "_leases_revoked"),
                              (metrics.lease_renewed, "_leases_renewed"), (metrics.lease_expired, "_leases_expired")):
            n = getattr(self, attr)
            if n:
                counter.inc(n)
                setattr(self, attr, 0)
        self._lease_ttls.flush()

    def flush(self) -> None:
        if self.hash_jobs.busy:  # one slice per turn; restarted jobs start on the new store
            deadline = time.monotonic() + HASH_SLICE_S
            self._hash_answer(self.hash_jobs.step(self.store, lambda: time.monotonic() >= deadline))
        if self.lessor.clear_waiting:
            self._lease_propose(self.lessor.clear_proposals(time.monotonic()))
        if self.deferred:
            reads, self.deferred = self.deferred, []
            self.turn_bytes = 0
            self._answer(reads)
        self.turn_bytes = 0  # the next turn's reads start with a full budget

    def poll_timeout_ms(self) -> int | None:
        return 0 if self.deferred or self.hash_jobs.busy else None

    def _lease_tick(self) -> None:
        was = self.lessor.promoted_term
        replies, ops = self.lessor.tick(time.monotonic())
        self._lease_replies(replies, was)
        self._lease_propose(ops)

    def _lease_checkpoint_tick(self) -> None:
        self._lease_propose(self.lessor.checkpoint_tick(time.monotonic()))

    def heartbeat_status(self) -> M.HeartbeatStatus:
        """For the supervisor's STATUS= line (nodes/supervisor.py): the alarm names only."""
        return {"applied_index": self.store.applied_index, "revision": self.store.current_revision,
                "alarms": sorted({name for _, name in self.store.alarms})[:16]}

    def shutdown(self) -> None:
        # Also after a setup that stopped half-way (each part exists once setup made it).
        if hasattr(self, "_lease_ttls"):
            self._metrics_counts()
        if hasattr(self, "defrag"):
            self._defrag_join()
        if hasattr(self, "hash_jobs"):
            self.hash_jobs.close()
        if hasattr(self, "saves"):
            self.saves.close()
        if hasattr(self, "backend"):
            self.backend.close()
