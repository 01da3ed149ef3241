"""What the health endpoints know of this member: its consensus and storage actors, asked
over their ROUTERs (Endpoints.consensus / Endpoints.storage) as the gateway asks them.

Rules:
- called from HTTP handler threads: every call makes its own DEALER sockets on the actor's
  context (zmq sockets are not thread-safe; a context is) and closes them before returning;
- bounded: at most a handful of messages out per call, replies read until the deadline,
  anything not answering its own request ids dropped (a late reply of an earlier call, a
  malformed frame: runtime/wire.py decodes and checks every one);
- request ids have the top bit set, so they never meet the gateway's (random 60-bit ones) in
  consensus's table of pending read indexes, which is keyed by (member, ctx id);
- a linearizable read is what the gateway does: a read index from consensus (the leader
  confirms it with a heartbeat round), then storage's status until its applied index has
  reached it.
"""
from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

import zmq

from actors.metrics.health import TIMED_OUT, Observation
from actors.runtime import messages as M
from actors.runtime import wire
from nodes.endpoints import Endpoints
from protocol.errors import Malformed

_REPLY_TYPES = frozenset((M.STATUS_RESP, M.STORAGE_STATUS_RESP, M.READ_INDEX_RESP))
POLL_STEP_S = 0.05  # the longest wait between two checks of the stop flag
APPLIED_RETRY_S = 0.01  # between two storage status asks while storage catches up with a read index
MAX_STATUS_ASKS = 1000  # a bound on the storage asks of one call, whatever the deadline


class Probe:
    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, timeout_s: float, stopping: threading.Event) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.stopping = stopping
        # next() on itertools.count is atomic under the GIL: ids stay unique across threads.
        self._ids = itertools.count((1 << 63) | (random.SystemRandom().getrandbits(40) << 20))

    def _dealer(self, url: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.connect(url)
        return sock

    @staticmethod
    def _send(sock: zmq.Socket, msg: M.Message) -> bool:
        try:
            sock.send(wire.pack(msg), zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def observe(self, consensus: bool, linearizable: bool) -> Observation:
        """Ask storage's status (always), consensus's status (`consensus`) and a
        linearizable read (`linearizable`), all at once; wait for the answers until the
        timeout."""
        if self.stopping.is_set():  # the actor is ending: its context is about to go
            return Observation(None, None, None, TIMED_OUT, TIMED_OUT if linearizable else None)
        deadline = time.monotonic() + self.timeout_s
        cons = self._dealer(self.endpoints.consensus)
        stor = self._dealer(self.endpoints.storage)
        try:
            return self._observe(cons, stor, consensus, linearizable, deadline)
        finally:
            cons.close(0)
            stor.close(0)

    def _observe(self, cons: zmq.Socket, stor: zmq.Socket, want_consensus: bool, linearizable: bool,
                 deadline: float) -> Observation:
        status_id, read_id = next(self._ids), next(self._ids)
        first_ask = next(self._ids)
        storage_ids = {first_ask}
        awaiting: int | None = first_ask  # the storage ask not answered yet
        self._send(stor, M.StorageStatusReq(first_ask))
        if want_consensus:
            self._send(cons, M.Status(status_id))
        if linearizable:
            self._send(cons, M.ReadIndex(read_id))
        consensus_status: dict[str, Any] | None = None
        storage_status: dict[str, Any] | None = None
        applied = -1  # the highest applied index storage reported
        read_index: int | None = None
        read_error: str | None = None
        ask_again_at: float | None = None  # storage is behind the read index: ask then
        poller = zmq.Poller()
        poller.register(cons, zmq.POLLIN)
        poller.register(stor, zmq.POLLIN)

        def done() -> bool:
            if storage_status is None or (want_consensus and consensus_status is None):
                return False
            if linearizable and read_error is None and (read_index is None or applied < read_index):
                return False
            return True

        while not done() and not self.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if ask_again_at is not None and now >= ask_again_at and len(storage_ids) < MAX_STATUS_ASKS:
                awaiting = next(self._ids)
                storage_ids.add(awaiting)
                self._send(stor, M.StorageStatusReq(awaiting))
                ask_again_at = None
            wait_s = min(deadline - now, POLL_STEP_S)
            if ask_again_at is not None:
                wait_s = min(wait_s, max(0.0, ask_again_at - now))
            for sock, _ in poller.poll(max(1, int(wait_s * 1000))):
                for _ in range(64):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = wire.decode(frames[-1], _REPLY_TYPES)
                    except Malformed:
                        continue
                    if isinstance(msg, M.StorageStatusResp) and msg.ctx_id in storage_ids:
                        storage_status = dict(msg.status)
                        applied = max(applied, int(msg.status["applied_index"]))
                        if msg.ctx_id == awaiting:
                            awaiting = None
                    elif isinstance(msg, M.StatusResp) and msg.ctx_id == status_id:
                        consensus_status = dict(msg.status)
                    elif isinstance(msg, M.ReadIndexResp) and msg.ctx_id == read_id:
                        if msg.error is not None:
                            read_error = str(msg.error.get("message") or msg.error.get("code"))
                        else:
                            read_index = msg.read_index
            if (linearizable and read_index is not None and applied < read_index and ask_again_at is None
                    and awaiting is None):
                ask_again_at = time.monotonic() + APPLIED_RETRY_S

        alarms = None
        serializable_error: str | None = TIMED_OUT
        if storage_status is not None:
            alarms = tuple(str(a.get("alarm", "")) for a in storage_status.get("alarms", []))
            serializable_error = None
        linearizable_error: str | None = None
        if linearizable:
            if read_error is not None:
                linearizable_error = read_error
            elif read_index is None or applied < read_index:
                linearizable_error = TIMED_OUT
        leader = is_learner = None
        if consensus_status is not None:
            leader = int(consensus_status.get("lead", 0))
            is_learner = bool(consensus_status.get("is_learner", False))
        return Observation(alarms, leader, is_learner, serializable_error, linearizable_error)
