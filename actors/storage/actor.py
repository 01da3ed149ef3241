"""The storage actor: applies committed entries to the MVCC store and serves reads.

- It pulls committed entries from consensus (FETCH after applied_index -> ENTRIES) and
  applies each batch as one RocksDB write that also records `applied_index`, so a crash
  at any point leaves data and index in step; after a restart it simply fetches from
  its applied index again. A fetch that got no answer is re-sent (consensus may have
  restarted); re-sent or stale batches are harmless because apply skips indexes at or
  below applied_index.
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
"""
from __future__ import annotations

import heapq
import itertools
import os
import shutil
import time
from typing import Any

import msgpack
import zmq

from actors.runtime import messages as M
from actors.runtime.actor import Actor
from actors.runtime.failpoints import failpoint
from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from protocol import errors
from protocol.codec import pack, pack_msg, unpack_msg

FETCH_RESEND_S = 0.3
SYNC_INTERVAL_S = 1.0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _event_wire(ev: Any) -> list:
    return [ev.type, ev.kv, ev.prev_kv]


class StorageActor(Actor):
    role = "storage"

    def setup(self) -> None:
        cfg = self.cfg
        self.member_id = cfg.member_id
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.store_dir = os.path.join(self.data_dir, "storage")
        self._recover_install()
        self.backend = RocksBackend(self.store_dir)
        self.store = MVCCStore(self.backend)
        self.backend.sync()  # whatever survived the last run is durable from here on
        self.durable_applied = self.store.applied_index
        self.raft_term = 0
        self.consensus = self.socket(zmq.DEALER, connect=self.endpoints.consensus, handler=self.on_consensus)
        self.router = self.socket(zmq.ROUTER, bind=self.endpoints.storage, handler=self.on_request)
        self.results = self.socket(zmq.PUSH, connect=self.endpoints.gateway_results)
        self.events = self.socket(zmq.PUSH, connect=self.endpoints.watch_events)
        self.fetch_sent_at = 0.0
        self.fetch_outstanding = False
        # (min_index, seq, identity, req_id, op, client_id): reads waiting for applied_index
        # to reach min_index; client_id is None for READ (decoded reply), else CLIENT_READ
        self.waiting: list[tuple[int, int, bytes, int, dict, Any]] = []
        self.cluster_id = cfg.cluster_id
        self._seq = itertools.count()
        self.every(FETCH_RESEND_S, self._resend_fetch)
        self.every(SYNC_INTERVAL_S, self._sync)
        self._send_fetch()
        self.log.info("storage_loaded", applied_index=self.store.applied_index,
                      revision=self.store.current_revision, compact_revision=self.store.compact_revision)

    # --- entries from consensus ----------------------------------------------------
    def _send_fetch(self) -> None:
        body = [self.store.applied_index, self.durable_applied, 4096]
        try:
            self.consensus.send(pack_msg(M.FETCH, body), zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.fetch_outstanding = True
        self.fetch_sent_at = time.monotonic()

    def _resend_fetch(self) -> None:
        if not self.fetch_outstanding or time.monotonic() - self.fetch_sent_at >= FETCH_RESEND_S:
            self._send_fetch()

    def _sync(self) -> None:
        if self.store.applied_index > self.durable_applied:
            self.backend.sync()
            self.durable_applied = self.store.applied_index

    def on_consensus(self, frames: list[bytes]) -> None:
        try:
            msg_type, body = unpack_msg(frames[-1])
        except errors.QkvError:
            return
        if msg_type != M.ENTRIES:
            return
        raw_entries, _commit, term = body
        self.raft_term = max(self.raft_term, term)
        self.fetch_outstanding = False
        batch: list[tuple[int, dict | None]] = []
        origins: dict[int, tuple[int, int, Any]] = {}
        expected = self.store.applied_index + 1
        for index, _term, _type, data in raw_entries:
            if index < expected:
                continue
            if index != expected:
                self.log.warning("entries_gap", expected=expected, got=index)
                break
            expected += 1
            op = None
            if data:
                try:
                    origin, req_id, op, client_id = msgpack.unpackb(data, raw=False, strict_map_key=False)
                    origins[index] = (origin, req_id, client_id)
                except Exception:
                    self.log.error("entry_undecodable", index=index)
                    op = None
            batch.append((index, op))
        if batch:
            failpoint("before_storage_commit")
            results = self.store.apply(batch)
            failpoint("after_storage_commit")
            self._publish(results, origins)
        self._send_fetch()
        self._serve_waiting()

    def _client_frame(self, client_id: Any, response: dict | None, error: Any, revision: int) -> bytes:
        """The finished client reply (SPEC section 1), so the gateway only forwards bytes."""
        if error is not None:
            return pack({"id": client_id, "ok": False, "error": error})
        reply = {"id": client_id, "ok": True, "header": {
            "cluster_id": self.cluster_id, "member_id": self.member_id,
            "revision": revision, "raft_term": self.raft_term}}
        reply.update(response or {})
        return pack(reply)

    def _publish(self, results: list, origins: dict[int, tuple[int, int, Any]]) -> None:
        replies = []
        revisions = []
        for res in results:
            origin = origins.get(res.index)
            if origin is not None and origin[0] == self.member_id:
                error = res.error.to_wire() if res.error is not None else None
                replies.append([origin[1], self._client_frame(origin[2], res.response, error, res.revision),
                                res.revision])
            if res.events:
                revisions.append([res.revision, [_event_wire(e) for e in res.events]])
        if revisions:
            try:
                self.events.send(pack_msg(M.EVENTS, revisions), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the watch actor is away; it catches up from history
        if replies:
            try:
                self.results.send(pack_msg(M.CLIENT_REPLIES, replies), zmq.NOBLOCK)
            except zmq.ZMQError:
                self.log.warning("results_dropped", count=len(replies))

    # --- reads and status from the gateway -----------------------------------------
    def on_request(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        identity, frame = frames
        try:
            msg_type, body = unpack_msg(frame)
        except errors.QkvError:
            return
        if msg_type == M.READ:
            self._reads(identity, [(req_id, op, min_index, None) for req_id, op, min_index in body])
        elif msg_type == M.CLIENT_READ:
            self._reads(identity, body)
        elif msg_type == M.CHECKPOINT:
            self._checkpoint(identity, *body)
        elif msg_type == M.INSTALL:
            self._install(identity, *body)
        elif msg_type == M.HASH_KV:
            ctx_id, revision = body
            try:
                digest, rev = self.store.hash_kv(revision)
                result = {"hash": digest, "revision": rev, "compact_revision": self.store.compact_revision}
                reply = [ctx_id, result, None]
            except errors.QkvError as err:
                reply = [ctx_id, None, err.to_wire()]
            self.send_router(self.router, identity, pack_msg(M.HASH_KV_RESP, reply))
        elif msg_type == M.STORAGE_STATUS:
            (ctx_id,) = body
            size = self.backend.size_bytes()
            status = {
                "applied_index": self.store.applied_index,
                "revision": self.store.current_revision,
                "compact_revision": self.store.compact_revision,
                "db_size": size,
                "db_size_in_use": size,
                "raft_term": self.raft_term,
            }
            self.send_router(self.router, identity, pack_msg(M.STORAGE_STATUS_RESP, [ctx_id, status]))

    def _read(self, req_id: int, op: dict) -> list:
        try:
            if op.get("op") == "history":  # the watch's catch-up (clients and the watch actor)
                return [req_id, self.store.history(op), None, self.store.current_revision, self.raft_term]
            return [req_id, self.store.range(op), None, self.store.current_revision, self.raft_term]
        except errors.QkvError as err:
            return [req_id, None, err.to_wire(), self.store.current_revision, self.raft_term]
        except Exception as exc:
            self.log.exception("read_failed")
            return [req_id, None, errors.Internal(f"{type(exc).__name__}: {exc}").to_wire(), 0, 0]

    def _reads(self, identity: bytes, reads: list) -> None:
        applied = self.store.applied_index
        ready = []
        for req_id, op, min_index, client_id in reads:
            if min_index <= applied:
                ready.append((identity, req_id, op, client_id))
            else:
                heapq.heappush(self.waiting, (min_index, next(self._seq), identity, req_id, op, client_id))
        self._answer(ready)

    def _answer(self, reads: list[tuple[bytes, int, dict, Any]]) -> None:
        """Serve reads, one message per asker and kind: decoded (READ_RESP) for the watch
        actor, finished client frames (CLIENT_REPLIES) for the gateway."""
        out: dict[tuple[bytes, bool], list] = {}
        for identity, req_id, op, client_id in reads:
            req_id, response, error, revision, _term = self._read(req_id, op)
            if client_id is None:
                out.setdefault((identity, False), []).append([req_id, response, error, revision, self.raft_term])
            else:
                frame = self._client_frame(client_id, response, error, revision)
                out.setdefault((identity, True), []).append([req_id, frame, revision])
        for (identity, client), replies in out.items():
            self.send_router(self.router, identity, pack_msg(M.CLIENT_REPLIES if client else M.READ_RESP, replies))

    def _serve_waiting(self) -> None:
        applied = self.store.applied_index
        ready = []
        while self.waiting and self.waiting[0][0] <= applied:
            _, _, identity, req_id, op, client_id = heapq.heappop(self.waiting)
            ready.append((identity, req_id, op, client_id))
        self._answer(ready)

    # --- snapshots -------------------------------------------------------------------
    def _checkpoint(self, identity: bytes, ctx_id: int) -> None:
        """A consistent copy of the store for a follower; consensus streams and removes it."""
        path = os.path.join(self.data_dir, "snapshots", f"out-{ctx_id}-{os.getpid()}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            self.backend.checkpoint(path)
            reply = [ctx_id, path, self.store.applied_index, None]
        except Exception as exc:  # disk full, permissions: the leader retries later
            self.log.exception("checkpoint_failed")
            reply = [ctx_id, None, 0, errors.Internal(f"checkpoint failed: {exc}").to_wire()]
        self.send_router(self.router, identity, pack_msg(M.CHECKPOINT_RESP, reply))

    def _install(self, identity: bytes, ctx_id: int, path: str) -> None:
        """Replace the store by a snapshot received from the leader.

        Crash-safe by renames: storage -> storage.old, snapshot -> storage, then remove
        storage.old; `_recover_install` finishes or undoes a half-done swap at start.
        """
        failpoint("snapshot_install")
        old = self.store_dir + ".old"
        try:
            probe = RocksBackend(path)
            applied = MVCCStore(probe).applied_index
            probe.close()
        except Exception as exc:
            self.log.warning("snapshot_rejected", error=str(exc)[:200])
            self.send_router(self.router, identity, pack_msg(
                M.INSTALL_RESP, [ctx_id, self.store.applied_index, errors.Internal(str(exc)).to_wire()]))
            return
        if applied <= self.store.applied_index:
            # Our store is already as new: the log, not the data, was what lagged.
            shutil.rmtree(path, ignore_errors=True)
            self.send_router(self.router, identity,
                             pack_msg(M.INSTALL_RESP, [ctx_id, self.store.applied_index, None]))
            return
        self.backend.close()
        shutil.rmtree(old, ignore_errors=True)
        os.rename(self.store_dir, old)
        _fsync_dir(self.data_dir)
        os.rename(path, self.store_dir)
        _fsync_dir(self.data_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.backend = RocksBackend(self.store_dir)
        self.store = MVCCStore(self.backend)
        self.durable_applied = self.store.applied_index
        self.log.info("snapshot_installed", applied_index=self.store.applied_index,
                      revision=self.store.current_revision)
        self.send_router(self.router, identity, pack_msg(M.INSTALL_RESP, [ctx_id, self.store.applied_index, None]))
        self._send_fetch()
        self._serve_waiting()

    def _recover_install(self) -> None:
        old = self.store_dir + ".old"
        if os.path.exists(old):
            if os.path.exists(self.store_dir):
                shutil.rmtree(old)  # the swap finished; only the clean-up was cut short
            else:
                os.rename(old, self.store_dir)  # cut between the renames: keep our own store
            _fsync_dir(self.data_dir)

    def shutdown(self) -> None:
        self.backend.close()
