"""The peer transport of the consensus actor: ZeroMQ links to the other members.

- Inbound: one ROUTER bound at `--listen-peer-urls`. Outbound: one DEALER per peer,
  connected to its advertised peer URL, with ZMQ_IMMEDIATE so nothing queues for a peer
  that is down (Raft retries by itself; stale messages are worse than lost ones).
- Every frame is `codec.pack_msg(type, [frm, ...])`. Garbage from the network (bad
  frames, unknown types, impossible bodies) is counted, logged and dropped; it never
  raises out of the transport.
- A fault layer for tests: `<run dir>/faults.json` = {"drop_to": [member ids],
  "drop_from": [member ids]} cuts links one way or both. It is re-read every 100 ms
  and survives restarts of the actor; a missing file means no faults.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import zmq

from actors.runtime import messages as M
from nodes.config import Member
from protocol import errors
from protocol.codec import pack_msg, unpack_msg

PEER_TYPES = frozenset(
    (M.PEER_RAFT, M.PEER_FORWARD, M.PEER_FORWARD_REJECT, M.PEER_HELLO, M.PEER_SNAP_CHUNK, M.PEER_SNAP_ACK)
)
FAULTS_RELOAD_S = 0.1
MAX_PEER_FRAME = 64 * 1024 * 1024


class Faults:
    """Which links the test harness has cut; read from a file so tests can flip it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.drop_to: frozenset[int] = frozenset()
        self.drop_from: frozenset[int] = frozenset()
        self._mtime: float | None = None
        self._checked = 0.0

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < FAULTS_RELOAD_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self.drop_to = self.drop_from = frozenset()
            self._mtime = None
            return
        if mtime == self._mtime:
            return
        try:
            with open(self.path) as f:
                spec = json.load(f)
            self.drop_to = frozenset(int(x) for x in spec.get("drop_to", []))
            self.drop_from = frozenset(int(x) for x in spec.get("drop_from", []))
            self._mtime = mtime
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # half-written; the next refresh reads it again


class PeerTransport:
    def __init__(
        self,
        actor: Any,
        my_id: int,
        listen_urls: list[str],
        members: list[Member],
        faults_path: str,
        on_message: Callable[[int, int, list], None],
    ) -> None:
        self.my_id = my_id
        self.log = actor.log
        self.on_message = on_message
        self.faults = Faults(faults_path)
        self.dropped_garbage = 0
        self.router = actor.socket(
            zmq.ROUTER, bind=listen_urls, handler=self._on_frames, maxmsgsize=MAX_PEER_FRAME
        )
        self.peers: dict[int, zmq.Socket] = {}
        for member in members:
            if member.id != my_id:
                self.peers[member.id] = actor.socket(
                    zmq.DEALER, connect=member.peer_urls[0], hwm=10_000, immediate=1
                )

    def send(self, to: int, msg_type: int, body: list) -> bool:
        """Send to one peer; False when it cannot go now (down, full, or cut by a fault)."""
        self.faults.refresh()
        sock = self.peers.get(to)
        if sock is None or to in self.faults.drop_to:
            return False
        try:
            sock.send(pack_msg(msg_type, [self.my_id, *body]), zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise errors.Malformed("expected one frame")
            msg_type, body = unpack_msg(frames[1])
            if msg_type not in PEER_TYPES or not isinstance(body, list) or not body:
                raise errors.Malformed(f"unexpected peer message type {msg_type}")
            frm = body[0]
            if isinstance(frm, bool) or not isinstance(frm, int) or frm not in self.peers:
                raise errors.Malformed(f"peer message from unknown member {frm!r}")
        except errors.QkvError as err:
            self._garbage(err)
            return
        self.faults.refresh()
        if frm in self.faults.drop_from:
            return
        try:
            self.on_message(msg_type, frm, body[1:])
        except (ValueError, TypeError, KeyError, IndexError, errors.QkvError) as err:
            self._garbage(err)

    def _garbage(self, err: Exception) -> None:
        self.dropped_garbage += 1
        if self.dropped_garbage <= 10 or self.dropped_garbage % 1000 == 0:
            self.log.warning("peer_garbage_dropped", error=str(err)[:200], total=self.dropped_garbage)
