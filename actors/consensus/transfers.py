"""Snapshot transfers' policy and bookkeeping: which transfer runs, which waits for storage,
which has ended and why. The consensus actor does the I/O (the CHECKPOINT and INSTALL
requests to its storage, chunks and acks to peers, reports to the Raft core, logs); the
file streaming is snapshot.py's SnapshotSender and SnapshotReceiver, made by factories the
actor passes in (tests pass fakes).

Rules (sending, `Outgoing`):
- One transfer per follower at a time: a SNAP for a follower that has a checkpoint asked
  for, or a transfer streaming, is dropped (the core sends SNAP again once told the
  transfer failed).
- A checkpoint answered after it was given up on (`storage_restarted`) is nobody's: its
  directory is removed by the caller.
- A failed checkpoint, an unreachable peer, a "failed" ack, or IDLE_TIMEOUT_S without an
  ack end the transfer unsuccessfully; a "done" ack (the follower installed it) ends it
  successfully. Each end is reported to the core once (`Finished`).
- Acks that name another transfer (an older snap_id, another peer) are ignored.

Rules (receiving, `Incoming`):
- One transfer at a time: a first chunk (seq 0) starts a new one and drops the one in
  progress, unless a received snapshot is being installed (then the chunk is refused).
- A chunk of another transfer, out of order, malformed or not stored is refused ("failed");
  the last three also drop the transfer.
- A complete, verified snapshot is handed to storage to install (ctx from `new_ctx`); the
  sender hears "done" or "failed" once storage answers.
- A storage restart loses the INSTALLs in flight: their senders hear "failed", and the
  staging dir goes once storage answers a later INSTALL (the lost one may still reach it).
- A transfer idle for IDLE_TIMEOUT_S is dropped (not while installing).
- No clock, no sockets: `now` (monotonic seconds) is passed in.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.consensus.peer_wire import SnapChunk
from actors.consensus.raft import Message
from actors.consensus.snapshot import SnapshotError

IDLE_TIMEOUT_S = 15.0  # a transfer without progress this long fails


class Sender(Protocol):
    """What Outgoing needs of a SnapshotSender."""
    snap_id: int
    to: int
    total_bytes: int

    def next_chunks(self) -> list[list[Any]]: ...

    def on_ack(self, seq: int) -> None: ...

    def cleanup(self) -> None: ...


class Receiver(Protocol):
    """What Incoming needs of a SnapshotReceiver."""
    snap_id: int
    frm: int
    root: str
    bytes_received: int

    def on_chunk(self, seq: object, relpath: object, offset: object, data: object, final: object,
                 digest: object) -> bool: ...

    def cleanup(self) -> None: ...


@dataclass(frozen=True)
class Finished:
    """A send that ended: report `ok` to the core for `to`, log `snapshot_send_finished`."""
    to: int
    ok: bool
    why: str


@dataclass(frozen=True)
class Orphan:
    """A checkpoint nobody waits for any more: remove its directory `path` (if any)."""
    path: str | None


@dataclass(frozen=True)
class CheckpointFailed:
    """Storage could not make the checkpoint: log `error`, report failure for `to`."""
    to: int
    error: Any


@dataclass(frozen=True)
class Started:
    """A transfer started: log it, then send `chunks(to)`."""
    to: int
    index: int
    bytes: int


class Outgoing:
    def __init__(self, new_ctx: Callable[[], int],
                 make_sender: Callable[[int, int, str, list[Any]], Sender]) -> None:
        self.new_ctx = new_ctx
        self.make_sender = make_sender  # (snap_id, to, checkpoint dir, SNAP message wire)
        self.checkpoints: dict[int, Message] = {}  # ctx -> the SNAP message waiting for it
        self.senders: dict[int, Sender] = {}  # peer id -> transfer in progress
        self.heard: dict[int, float] = {}  # peer id -> when its transfer last moved

    def start(self, msg: Message) -> int | None:
        """A SNAP from the core: the ctx of the CHECKPOINT to ask storage for, or None."""
        if msg.to in self.senders or any(m.to == msg.to for m in self.checkpoints.values()):
            return None  # one transfer per follower at a time
        ctx = self.new_ctx()
        self.checkpoints[ctx] = msg
        return ctx

    def unsent(self, ctx: int) -> int:
        """The CHECKPOINT could not be sent: the follower to report failure for."""
        return self.checkpoints.pop(ctx).to

    def checkpoint(self, now: float, ctx: int, path: str | None, error: Any) -> Orphan | CheckpointFailed | Started:
        msg = self.checkpoints.pop(ctx, None)
        if msg is None:
            return Orphan(path)  # given up on (storage_restarted): nobody streams it
        if error is not None or path is None:
            return CheckpointFailed(msg.to, error)
        assert msg.snapshot is not None  # a SNAP message from the core
        sender = self.make_sender(ctx, msg.to, path, msg.to_wire())
        self.senders[msg.to] = sender
        self.heard[msg.to] = now
        return Started(msg.to, msg.snapshot.index, sender.total_bytes)

    def chunks(self, to: int) -> list[list[Any]]:
        """Chunk bodies (PeerSnapChunk's, after the sender id) the window allows now; if
        one cannot be sent, call `finish(to, False, "peer unreachable")`."""
        sender = self.senders.get(to)
        return sender.next_chunks() if sender is not None else []

    def ack(self, now: float, frm: int, snap_id: int, seq: int, status: str) -> Finished | list[list[Any]]:
        """An ack from `frm`: the transfer's end, or the chunks to send now (none when the
        ack names no transfer in progress)."""
        sender = self.senders.get(frm)
        if sender is None or sender.snap_id != snap_id:
            return []
        if status == "ok":
            sender.on_ack(seq)
            self.heard[frm] = now
            return sender.next_chunks()
        done = self.finish(frm, status == "done", status)
        assert done is not None  # the sender was there
        return done

    def finish(self, to: int, ok: bool, why: str) -> Finished | None:
        sender = self.senders.pop(to, None)
        self.heard.pop(to, None)
        if sender is None:
            return None
        sender.cleanup()
        return Finished(to, ok, why)

    def check(self, now: float) -> list[Finished]:
        """Transfers silent for IDLE_TIMEOUT_S: ended."""
        idle = [to for to in self.senders if now - self.heard[to] > IDLE_TIMEOUT_S]
        return [f for to in idle if (f := self.finish(to, False, "timed out")) is not None]

    def storage_restarted(self) -> list[int]:
        """The CHECKPOINTs in flight are lost: the followers to report failure for."""
        lost = [msg.to for msg in self.checkpoints.values()]
        self.checkpoints.clear()
        return lost


@dataclass(frozen=True)
class ChunkResult:
    """What to do about one chunk: ack it with `status`; log `error` (snapshot_receive_failed)
    if set; if `install` is set, log snapshot_received and ask storage to install."""
    snap_id: int
    seq: int
    status: str  # "ok" | "failed"
    error: str | None = None
    install: Install | None = None


@dataclass(frozen=True)
class Install:
    """INSTALL `root` under `ctx`; `bytes` received."""
    ctx: int
    root: str
    bytes: int


@dataclass(frozen=True)
class Installed:
    """Storage answered an INSTALL: ack `status` ("done" | "failed") to `frm` for `snap_id`
    (seq -1); on "done" step `message` (the SNAP) into the core."""
    frm: int
    snap_id: int
    status: str
    message: Message


class Incoming:
    def __init__(self, new_ctx: Callable[[], int], make_receiver: Callable[[int, int], Receiver],
                 before_chunk: Callable[[], None] = lambda: None) -> None:
        self.new_ctx = new_ctx
        self.make_receiver = make_receiver  # (snap_id, frm): a receiver with its staging dir
        self.before_chunk = before_chunk  # the actor's failpoint, where a chunk is stored
        self.receiver: Receiver | None = None
        self.heard = 0.0  # when the receiver last moved
        self.installing: dict[int, tuple[int, int, Message]] = {}  # ctx -> (frm, snap_id, SNAP message)
        self.stale: list[Receiver] = []  # installs a dead storage took with it

    def chunk(self, now: float, frm: int, chunk: SnapChunk) -> ChunkResult:
        snap_id, seq = chunk.snap_id, chunk.seq
        if seq == 0 and not self.installing:
            if self.receiver is not None:
                self.receiver.cleanup()
            self.receiver = self.make_receiver(snap_id, frm)
            self.heard = now
        rcv = self.receiver
        if rcv is None or rcv.snap_id != snap_id or rcv.frm != frm:
            return ChunkResult(snap_id, seq, "failed")
        try:
            self.before_chunk()
            complete = rcv.on_chunk(seq, chunk.relpath, chunk.offset, chunk.data, chunk.final, chunk.digest)
        except (SnapshotError, OSError) as exc:
            rcv.cleanup()
            self.receiver = None
            return ChunkResult(snap_id, seq, "failed", error=str(exc)[:200])
        self.heard = now
        if not complete:
            return ChunkResult(snap_id, seq, "ok")
        assert chunk.message is not None  # peer_wire: the final chunk carries the SNAP message
        ctx = self.new_ctx()
        self.installing[ctx] = (frm, snap_id, chunk.message)
        return ChunkResult(snap_id, seq, "ok", install=Install(ctx, rcv.root, rcv.bytes_received))

    def installed(self, ctx: int, error: Any) -> Installed | None:
        # Storage answers in order: an INSTALL given up on has been handled or lost by now.
        for stale in self.stale:
            stale.cleanup()
        self.stale.clear()
        pending = self.installing.pop(ctx, None)
        if pending is None:
            return None
        frm, snap_id, msg = pending
        if self.receiver is not None:
            self.receiver.cleanup()
            self.receiver = None
        return Installed(frm, snap_id, "failed" if error is not None else "done", msg)

    def check(self, now: float) -> None:
        """Drop a transfer silent for IDLE_TIMEOUT_S (not while installing)."""
        if self.receiver is not None and now - self.heard > IDLE_TIMEOUT_S and not self.installing:
            self.receiver.cleanup()
            self.receiver = None

    def storage_restarted(self) -> list[tuple[int, int]]:
        """The INSTALLs in flight are lost: (frm, snap_id) of the senders to tell "failed"."""
        lost = list(self.installing.values())
        self.installing.clear()
        if lost and self.receiver is not None:
            # The INSTALL may still reach the new process (sent while none was listening):
            # its staging dir goes once storage has answered a later INSTALL.
            self.stale.append(self.receiver)
            self.receiver = None
        return [(frm, snap_id) for frm, snap_id, _msg in lost]
