"""The peer transport of the consensus actor: ZeroMQ links to the other members.

- Inbound: one ROUTER bound at `--listen-peer-urls`. Outbound: one DEALER per peer,
  connected to its advertised peer URL, with ZMQ_IMMEDIATE so nothing queues for a peer
  that is down (Raft retries by itself; stale messages are worse than lost ones).
- Every frame is `codec.pack_msg(type, [frm, ...])`. Garbage from the network (bad
  frames, unknown types, impossible bodies) is counted, logged and dropped; it never
  raises out of the transport.
- Peers are dynamic: `set_peers` follows the membership (a DEALER per member, closed
  when it is removed, reconnected when its peer URL changes). Frames from ids that are
  not members are dropped, except PEER_JOIN (a node asking for the membership before it
  knows its id) and, for a removed id, one PEER_REMOVED answer so that it stops.
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
    (M.PEER_RAFT, M.PEER_FORWARD, M.PEER_FORWARD_REJECT, M.PEER_HELLO, M.PEER_SNAP_CHUNK, M.PEER_SNAP_ACK,
     M.PEER_MEMBER, M.PEER_MEMBER_RESP, M.PEER_JOIN, M.PEER_REMOVED)
)
FAULTS_RELOAD_S = 0.1
MAX_PEER_FRAME = 64 * 1024 * 1024


class Faults:
    """Which links the test harness has cut; read from a file so tests can flip it."""

    def __init__(self, path: str, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # off unless --test-fault-injection: the file is never read
        self.drop_to: frozenset[int] = frozenset()
        self.drop_from: frozenset[int] = frozenset()
        self._mtime: float | None = None
        self._checked = 0.0

    def refresh(self) -> None:
        if not self.enabled:
            return
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
        on_join: Callable[[], list] | None = None,
    ) -> None:
        self.my_id = my_id
        self.actor = actor
        self.log = actor.log
        self.on_message = on_message
        self.on_join = on_join
        self.faults = Faults(faults_path, enabled=actor.cfg.test_fault_injection)
        self.dropped_garbage = 0
        self.router = actor.socket(
            zmq.ROUTER, bind=listen_urls, handler=self._on_frames, maxmsgsize=MAX_PEER_FRAME
        )
        self.peers: dict[int, zmq.Socket] = {}
        self.peer_urls: dict[int, str] = {}
        self.removed: set[int] = set()  # ids removed from the cluster: told so, never heard
        self.set_peers({m.id: m.peer_urls[0] for m in members if m.id != my_id})

    def set_peers(self, urls: dict[int, str]) -> None:
        """Follow the membership: peer id -> its (first) peer URL; self is skipped."""
        for peer in [p for p in self.peers if p not in urls or urls[p] != self.peer_urls.get(p)]:
            sock = self.peers.pop(peer)
            self.peer_urls.pop(peer, None)
            self.actor.poller.unregister(sock)
            self.actor._socket_handlers.pop(sock, None)
            sock.close(0)
        for peer, url in urls.items():
            if peer == self.my_id or peer in self.peers:
                continue
            # Outbound only, but it hears PEER_REMOVED (a member telling us we are gone).
            self.peers[peer] = self.actor.socket(zmq.DEALER, connect=url, hwm=10_000, immediate=1,
                                                 handler=self._on_dealer_frames)
            self.peer_urls[peer] = url

    def _on_dealer_frames(self, frames: list[bytes]) -> None:
        try:
            msg_type, body = unpack_msg(frames[-1])
            frm = body[0]
            if msg_type != M.PEER_REMOVED or frm not in self.peers:
                raise errors.Malformed(f"unexpected message type {msg_type} on an outbound link")
            self.on_message(msg_type, frm, [])
        except (errors.QkvError, TypeError, IndexError, KeyError) as err:
            self._garbage(err)

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
            if msg_type == M.PEER_JOIN and self.on_join is not None:
                self.actor.send_router(self.router, frames[0], pack_msg(M.PEER_JOIN_RESP, self.on_join()))
                return
            if isinstance(frm, int) and frm in self.removed and msg_type != M.PEER_REMOVED:
                # A removed member that did not hear of its removal: tell it, once a while.
                self.actor.send_router(self.router, frames[0], pack_msg(M.PEER_REMOVED, [self.my_id]))
                return
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
