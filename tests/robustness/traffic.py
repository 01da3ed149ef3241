"""Recording clients: a weighted mix of KV operations against a cluster, each recorded
with its invocation and completion times (one monotonic clock) and its result, as
`linearizability.Op`s. A write that timed out or whose outcome the server could not
know is recorded with `completed=None` (it may or may not have happened); a write the
server refused before proposing it (`no_leader`, `unavailable`...) is a definite failure.
Failed reads are left out (they change nothing).

Leases: each client owns two keys of its own (`lease_keys`), which only it writes, with
its current lease attached; a revoke is recorded as a `revoke` op on each of them (the
checker deletes the key if its latest put attached that lease). Multi-key txns are one
op per key sharing a `group`. Compactions change no key; they are counted, not checked
(reads here are at the latest revision; the watch checks cover compacted history).

`connect` makes the client (default: our native `Client`); the gRPC scenarios pass
grpc_traffic.GrpcKV, which makes the same calls through etcd's gRPC API."""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

from linearizability import Op

from protocol import errors
from protocol.client import Client, Compare, Op as TxnOp

UNCERTAIN = (errors.Timeout, errors.UnknownOutcome, errors.Internal, errors.Stopping)
KEYS = [b"key/%d" % i for i in range(8)]
MIX = [("put", 26), ("get", 28), ("get_serializable", 5), ("delete", 7), ("cas", 16), ("range", 6),
       ("mtxn", 6), ("lease_put", 4), ("revoke", 1), ("compact", 1)]
COMPACT_KEEP = 1000
LEASE_TTL = 300  # long enough never to expire within a run: expiry is not what this checks


class RecordingClient(threading.Thread):
    def __init__(self, client_no: int, endpoints: list[str], seed: int, history: list[Op],
                 lock: threading.Lock, stop: threading.Event, timeout_s: float = 3.0,
                 client_options: dict | None = None, connect: Callable[..., Any] = Client) -> None:
        super().__init__(daemon=True, name=f"traffic-{client_no}")
        self.connect = connect  # (endpoints, timeout=, **client_options) -> a client
        self.client_options = dict(client_options or {})  # security: server_key, user, password
        self.no = client_no
        self.endpoints = endpoints
        self.rng = random.Random(seed)
        self.history = history
        self.lock = lock
        self.stop_event = stop
        self.timeout_s = timeout_s
        self.counts: dict[str, int] = {}
        self._seq = 0
        self._kinds = [k for k, w in MIX for _ in range(w)]
        self.lease_keys = [b"key/l%d-%d" % (client_no, j) for j in range(2)]
        self._lease = 0  # the current lease (0: none granted yet)
        self._last_revision = 0
        self.compactions: list[int] = []  # revisions compacted at (watch checks excuse them)

    def _record(self, op: Op) -> None:
        with self.lock:
            self.history.append(op)

    def run(self) -> None:
        client = self.connect(self.endpoints, timeout=self.timeout_s, **self.client_options)
        # Each client prefers another endpoint, so followers take writes too.
        client._preferred = self.no % len(self.endpoints)  # noqa: SLF001 (test harness)
        try:
            while not self.stop_event.is_set():
                kind = self.rng.choice(self._kinds)
                key = self.rng.choice(KEYS + self.lease_keys if kind == "get" else KEYS)
                try:
                    self._one(client, kind, key)
                except Exception as exc:  # a harness bug must not hide behind a thread
                    self.counts["harness_error"] = self.counts.get("harness_error", 0) + 1
                    self.counts["last_error"] = repr(exc)  # type: ignore[assignment]
        finally:
            client.close()

    def _value(self) -> bytes:
        self._seq += 1
        return b"c%d-%d" % (self.no, self._seq)

    def _one(self, client: Any, kind: str, key: bytes) -> None:
        t0 = time.monotonic()
        op: Op | None = None
        try:
            if kind == "put":
                value = self._value()
                op = Op(self.no, "put", key, t0, None, value=value)
                resp = client.put(key, value)
                op.revision = resp.header.revision
            elif kind in ("get", "get_serializable"):
                serializable = kind == "get_serializable"
                resp = client.get(key, serializable=serializable)
                if serializable:
                    return  # may be stale by design: not a linearizability claim
                kv = resp.kvs[0] if resp.kvs else None
                op = Op(self.no, "get", key, t0, None, revision=resp.header.revision,
                        found=(kv.value, kv.mod_revision, kv.version) if kv else None)
            elif kind == "range":
                resp = client.get(b"key/", prefix=True)
                t1 = time.monotonic()
                by_key = {kv.key: kv for kv in resp.kvs}
                for k in KEYS:  # one linearizable read of every key at one point
                    kv = by_key.get(k)
                    self._record(Op(self.no, "get", k, t0, t1, revision=resp.header.revision,
                                    found=(kv.value, kv.mod_revision, kv.version) if kv else None))
                self._count("range")
                return
            elif kind == "mtxn":
                self._multi_txn(client, t0)
                return
            elif kind == "lease_put":
                if not self._lease:
                    self._lease = client.lease_grant(LEASE_TTL).id
                    t0 = time.monotonic()
                key = self.rng.choice(self.lease_keys)
                value = self._value()
                op = Op(self.no, "put", key, t0, None, value=value, lease=self._lease)
                resp = client.put(key, value, lease=self._lease)
                op.revision = resp.header.revision
            elif kind == "revoke":
                if not self._lease:
                    return
                lease, self._lease = self._lease, 0
                ops = [Op(self.no, "revoke", k, t0, None, lease=lease) for k in self.lease_keys]
                try:
                    resp = client.lease_revoke(lease)
                except UNCERTAIN:
                    for o in ops:
                        self._record(o)
                    raise
                except errors.QkvError:
                    raise  # lease_not_found...: it had no effect
                t1 = time.monotonic()
                for o in ops:
                    o.completed, o.revision = t1, resp.header.revision
                    self._record(o)
                self._count("revoke")
                return
            elif kind == "compact":
                # Keep ~1000 revisions: watchers resuming after a fault should mostly find
                # their history (a compacted resume is legal but checks less).
                if self._last_revision > COMPACT_KEEP + 100:
                    revision = self._last_revision - COMPACT_KEEP
                    self.compactions.append(revision)  # even if its outcome is unknown
                    client.compact(revision)
                    self._count("compact")
                return
            elif kind == "delete":
                op = Op(self.no, "delete", key, t0, None)
                resp = client.delete(key)
                op.deleted, op.revision = resp.deleted, resp.header.revision
            elif kind == "cas":
                current = client.get(key)
                expected = current.kvs[0].mod_revision if current.kvs else 0
                t0 = time.monotonic()
                value = self._value()
                op = Op(self.no, "cas", key, t0, None, value=value, expected_mod=expected)
                resp = client.txn(compare=[Compare.mod_revision(key) == expected],
                                  success=[TxnOp.put(key, value)], failure=[])
                op.succeeded, op.revision = resp.succeeded, resp.header.revision
            op.completed = time.monotonic()
            self._last_revision = max(self._last_revision, op.revision)
            self._record(op)
            self._count(kind)
        except UNCERTAIN:
            if op is not None and op.is_write:
                op.completed = None  # may or may not have happened
                self._record(op)
            self._count("uncertain")
        except errors.QkvError as err:
            if err.code == "lease_not_found":
                self._lease = 0  # revoked by an op of unknown outcome: grant another
            if op is not None and op.is_write:
                op.completed = time.monotonic()
                op.ok = False  # refused before it was proposed
                self._record(op)
            self._count(err.code)

    def _multi_txn(self, client: Any, t0: float) -> None:
        """One txn putting two keys and deleting a third, in one revision."""
        k1, k2, k3 = self.rng.sample(KEYS, 3)
        self._seq += 1
        group = self.no * 1_000_000 + self._seq
        v1, v2 = self._value(), self._value()
        ops = [Op(self.no, "put", k1, t0, None, value=v1, group=group),
               Op(self.no, "put", k2, t0, None, value=v2, group=group),
               Op(self.no, "delete", k3, t0, None, group=group)]
        try:
            resp = client.txn(compare=[], success=[TxnOp.put(k1, v1), TxnOp.put(k2, v2), TxnOp.delete(k3)],
                              failure=[])
        except UNCERTAIN:
            for o in ops:
                self._record(o)
            self._count("uncertain")
            return
        except errors.QkvError as err:
            t1 = time.monotonic()
            for o in ops:
                o.completed, o.ok = t1, False
                self._record(o)
            self._count(err.code)
            return
        t1 = time.monotonic()
        for o in ops:
            o.completed, o.revision = t1, resp.header.revision
        ops[2].deleted = resp.responses[2].deleted
        for o in ops:
            self._record(o)
        self._last_revision = max(self._last_revision, resp.header.revision)
        self._count("mtxn")

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
