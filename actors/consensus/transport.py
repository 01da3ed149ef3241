"""The peer transport of the consensus actor: ZeroMQ links to the other members.

- Inbound: one ROUTER bound at `--listen-peer-urls`. Outbound: one DEALER per peer,
  connected to its advertised peer URL, with ZMQ_IMMEDIATE so nothing queues for a peer
  that is down (Raft retries by itself; stale messages are worse than lost ones).
- Every frame is `codec.pack_msg(type, [frm, ...])`, decoded by the typed decoder of its
  type (peer_wire.py). Garbage from the network (bad frames, unknown types, impossible
  bodies, spoofed senders) is counted, logged and dropped. A message that decodes is
  handed to the actor's handler unguarded: an exception there is a bug and crashes the
  actor (the supervisor restarts it), it is never swallowed as garbage.
- Peer security (`--peer-key-file`): the ROUTER is a CURVE server whose ZAP handler
  (domain "peer", this process) admits only the peer public keys of the current member
  table, each with the User-Id = that member's id in hex; `set_trusted` replaces the
  table whole at every membership change, so a removed member's key is refused from
  then on. Every message's claimed sender `frm` must be the member its connection
  authenticated as (PEER_JOIN, frm 0, needs any trusted key). Each outbound DEALER is a
  CURVE client pinned to that member's public key, so we only ever talk to the real
  member; PEER_REMOVED is believed only on the DEALER of the member that sends it. A
  DEALER whose handshake was refused (libzmq never redials after a ZAP refusal, e.g. a
  just-added member that connected before its key was applied here) is recreated after
  REDIAL_S of failed sends.
- Peers are dynamic: `set_peers` follows the membership (a DEALER per member, closed
  when it is removed, reconnected when its peer URL or key changes). Frames from ids that
  are not members are dropped, except PEER_JOIN (a node asking for the membership before
  it knows its id) and, for a removed id, one PEER_REMOVED answer so that it stops.
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

from actors.consensus import peer_wire
from actors.consensus.peer_wire import PeerWireError
from actors.runtime import messages as M
from actors.runtime import metrics
from actors.runtime import wire
from protocol import errors
from protocol.codec import unpack_msg

PEER_TYPES = peer_wire.PEER_TYPES
ZAP_DOMAIN = "peer"
REDIAL_S = 1.0
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
        faults_path: str,
        on_message: Callable[[int, int, Any], None],
        on_join: Callable[[], M.PeerJoinResp] | None = None,
        keypair: tuple[bytes, bytes] | None = None,
    ) -> None:
        """`keypair` = this member's (public, secret) Z85 keys: peer security on."""
        self.my_id = my_id
        self.actor = actor
        self.log = actor.log
        self.on_message = on_message
        self.on_join = on_join
        self.faults = Faults(faults_path, enabled=actor.cfg.test_fault_injection)
        self.dropped_garbage = 0
        self.dropped_spoofed = 0
        self.keypair = keypair
        self._trusted: dict[bytes, str] = {}  # Z85 key -> member id in hex; replaced whole
        curve = None
        if keypair is not None:
            # The ZAP handler must run before the socket binds: without one, libzmq lets
            # every CURVE client in.
            self.authenticator = actor.start_authenticator(ZAP_DOMAIN, self._lookup)
            curve = (keypair[0], keypair[1], ZAP_DOMAIN)
        self.router = actor.socket(
            zmq.ROUTER, bind=listen_urls, handler=self._on_frames, maxmsgsize=MAX_PEER_FRAME,
            curve_server=curve, with_user=True,
        )
        self.peers: dict[int, zmq.Socket] = {}
        self.peer_urls: dict[int, tuple[str, str]] = {}  # peer -> (url, Z85 key)
        self._down_since: dict[int, float] = {}  # peer -> first failed send since the last success
        self._dialed: dict[int, float] = {}  # peer -> when its DEALER was made
        self.removed: set[int] = set()  # ids removed from the cluster: told so, never heard
        # Byte counters by peer (etcd_network_peer_*_total): counted in memory per message,
        # written by flush_metrics (the actor's metrics timer). Label: the peer id in hex.
        self._sent = metrics.CounterTally(metrics.peer_sent_bytes)
        self._sent_failures = metrics.CounterTally(metrics.peer_sent_failures)
        self._received = metrics.CounterTally(metrics.peer_received_bytes)
        self._labels: dict[int, tuple[str]] = {}  # peer -> (its id in hex,)

    @property
    def secure(self) -> bool:
        return self.keypair is not None

    def _lookup(self, key: bytes) -> str | None:
        """ZAP (the authenticator's thread): the member a key belongs to, None = refused."""
        return self._trusted.get(key)

    def set_trusted(self, keys: dict[int, str]) -> None:
        """The peer keys the ZAP handler admits: member id -> Z85 key (self excluded)."""
        self._trusted = {k.encode(): f"{mid:x}" for mid, k in keys.items() if k and mid != self.my_id}

    def set_peers(self, peers: dict[int, tuple[str, str]]) -> None:
        """Follow the membership: peer id -> (its first peer URL, its Z85 key); self is skipped."""
        for peer in [p for p in self.peers if p not in peers or peers[p] != self.peer_urls.get(p)]:
            self._close(peer)
        for peer, (url, key) in peers.items():
            if peer == self.my_id or peer in self.peers:
                continue
            if self.secure and not key:
                self.log.warning("peer_without_key", peer=f"{peer:x}",
                                 message="peer security is on but this member has no peer key; not linked")
                continue
            self._dial(peer, url, key)

    def _dial(self, peer: int, url: str, key: str) -> None:
        # Outbound only, but it hears PEER_REMOVED (the member telling us we are gone).
        curve = (self.keypair[0], self.keypair[1], key) if self.keypair is not None else None
        self.peers[peer] = self.actor.socket(
            zmq.DEALER, connect=url, hwm=10_000, immediate=1, curve_client=curve,
            handler=lambda frames, peer=peer: self._on_dealer_frames(peer, frames))
        self.peer_urls[peer] = (url, key)
        self._dialed[peer] = time.monotonic()

    def _close(self, peer: int) -> None:
        sock = self.peers.pop(peer)
        self.peer_urls.pop(peer, None)
        self._down_since.pop(peer, None)
        self._dialed.pop(peer, None)
        self.actor.close_socket(sock)

    def _on_dealer_frames(self, peer: int, frames: list[bytes]) -> None:
        try:
            msg_type, body = unpack_msg(frames[-1])
            if msg_type != M.PEER_REMOVED:
                raise PeerWireError(f"unexpected message type {msg_type} on an outbound link")
            frm, msg = peer_wire.decode(msg_type, body, self.my_id)
            if frm != peer:
                raise PeerWireError(f"PEER_REMOVED naming {frm:x} on the link to {peer:x}")
        except (errors.QkvError, PeerWireError) as err:
            self._garbage(err)
            return
        self.on_message(msg_type, frm, msg)

    def send(self, to: int, msg: M.Message) -> bool:
        """Send a peer message (messages.py PEER_*, frm = this member) to one peer; False
        when it cannot go now (down, full, or cut by a fault)."""
        self.faults.refresh()
        sock = self.peers.get(to)
        if sock is None or to in self.faults.drop_to:
            return False
        frame = wire.pack(msg)
        label = self._labels.get(to) or self._label(to)
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            self._sent_failures.inc(label)
            self._note_down(to)
            return False
        self._sent.inc(label, len(frame))
        self._down_since.pop(to, None)
        return True

    def _note_down(self, peer: int) -> None:
        """libzmq does not redial a CURVE connection that the peer's ZAP refused: a link
        that stays down is made again (the peer may have learnt our key since)."""
        if not self.secure:
            return
        now = time.monotonic()
        since = self._down_since.setdefault(peer, now)
        if now - since >= REDIAL_S and now - self._dialed.get(peer, now) >= REDIAL_S:
            url, key = self.peer_urls[peer]
            self._close(peer)
            self._dial(peer, url, key)

    def _on_frames(self, frames: list[bytes], user: str = "") -> None:
        try:
            if len(frames) != 2:
                raise PeerWireError("expected one frame")
            msg_type, body = unpack_msg(frames[1])
            if type(body) is not list or not body:
                raise PeerWireError("peer message body must be a non-empty array")
            claimed = body[0]
            if self.secure and msg_type != M.PEER_JOIN and not (type(claimed) is int and user == f"{claimed:x}"):
                self._spoofed(msg_type, claimed, user)
                return
            if msg_type == M.PEER_JOIN:
                peer_wire.decode(msg_type, body, self.my_id)
                if self.on_join is not None and (user or not self.secure):
                    self.actor.send_router(self.router, frames[0], wire.pack(self.on_join()))
                return
            if msg_type == M.PEER_REMOVED:
                raise PeerWireError("PEER_REMOVED is only believed on an outbound link")
            if type(claimed) is int and claimed in self.removed:
                # A removed member that did not hear of its removal: tell it.
                self.actor.send_router(self.router, frames[0], wire.pack(M.PeerRemoved(self.my_id)))
                return
            if type(claimed) is not int or claimed not in self.peers:
                raise PeerWireError(f"peer message from unknown member {claimed!r}"[:200])
            frm, msg = peer_wire.decode(msg_type, body, self.my_id)
        except (errors.QkvError, PeerWireError) as err:
            self._garbage(err)
            return
        self.faults.refresh()
        if frm in self.faults.drop_from:
            return
        # frm is a member (checked above): a bounded set of labels
        self._received.inc(self._labels.get(frm) or self._label(frm), len(frames[1]))
        self.on_message(msg_type, frm, msg)

    def _label(self, peer: int) -> tuple[str]:
        label = self._labels[peer] = (f"{peer:x}",)
        return label

    def flush_metrics(self) -> None:
        """Write the byte and failure counts kept since the last call (the actor's timer)."""
        self._sent.flush()
        self._sent_failures.flush()
        self._received.flush()

    def _spoofed(self, msg_type: Any, claimed: Any, user: str) -> None:
        self.dropped_spoofed += 1
        if self.dropped_spoofed <= 10 or self.dropped_spoofed % 1000 == 0:
            self.log.warning("peer_spoofed_sender_dropped", type=msg_type, claimed=repr(claimed)[:40],
                             authenticated_as=user, total=self.dropped_spoofed)

    def _garbage(self, err: Exception) -> None:
        self.dropped_garbage += 1
        if self.dropped_garbage <= 10 or self.dropped_garbage % 1000 == 0:
            self.log.warning("peer_garbage_dropped", error=str(err)[:200], total=self.dropped_garbage)
