"""Snapshot transfers' policy (actors/consensus/transfers.py) on fake senders and receivers,
and once end to end with the real file streaming (actors/consensus/snapshot.py)."""
from __future__ import annotations

import itertools
import os

from actors.consensus.peer_wire import SnapChunk
from actors.consensus.raft import Message, MessageType, SnapshotMeta
from actors.consensus.snapshot import SnapshotError, SnapshotReceiver, SnapshotSender
from actors.consensus.transfers import (IDLE_TIMEOUT_S, CheckpointFailed, ChunkResult, Finished, Incoming, Install,
                                        Installed, Orphan, Outgoing, Started)


def snap(to: int, index: int = 10) -> Message:
    return Message(MessageType.SNAP, to, 1, term=2, snapshot=SnapshotMeta(index, 2))


class FakeSender:
    def __init__(self, snap_id, to, root, message_wire):
        self.snap_id, self.to, self.root, self.message_wire = snap_id, to, root, message_wire
        self.total_bytes = 123
        self.acked = -1
        self.sent = 0
        self.cleaned = False

    def next_chunks(self):
        out = []
        while self.sent - self.acked <= 3 and self.sent < 5:  # a window of 3
            out.append([self.snap_id, self.sent])
            self.sent += 1
        return out

    def on_ack(self, seq):
        self.acked = max(self.acked, seq)

    def cleanup(self):
        self.cleaned = True


def outgoing():
    made = []

    def make(*args):
        made.append(FakeSender(*args))
        return made[-1]
    return Outgoing(itertools.count(1).__next__, make), made


def test_one_transfer_per_follower():
    out, made = outgoing()
    assert out.start(snap(2)) == 1
    assert out.start(snap(2)) is None  # a checkpoint asked for
    assert out.start(snap(3)) == 2  # another follower
    assert out.checkpoint(0.0, 1, "/cp/1", None) == Started(2, 10, 123)
    assert out.start(snap(2)) is None  # streaming
    assert made[0].snap_id == 1 and made[0].to == 2 and made[0].root == "/cp/1"
    assert made[0].message_wire == snap(2).to_wire()


def test_unsent_checkpoint_request_is_forgotten():
    out, _ = outgoing()
    ctx = out.start(snap(2))
    assert out.unsent(ctx) == 2
    assert out.start(snap(2)) == 2


def test_checkpoint_failed_and_orphaned():
    out, made = outgoing()
    ctx = out.start(snap(2))
    assert out.checkpoint(0.0, ctx, None, "no space") == CheckpointFailed(2, "no space")
    assert out.checkpoint(0.0, ctx, "/cp/1", None) == Orphan("/cp/1")  # answered twice: nobody's
    assert out.checkpoint(0.0, 99, None, "x") == Orphan(None)
    assert made == []


def test_window_acks_and_done():
    out, made = outgoing()
    ctx = out.start(snap(2))
    out.checkpoint(0.0, ctx, "/cp", None)
    assert out.chunks(2) == [[1, 0], [1, 1], [1, 2]]
    assert out.ack(1.0, 2, 1, 0, "ok") == [[1, 3]]
    assert out.ack(1.0, 2, 7, 1, "ok") == []  # another transfer's ack
    assert out.ack(1.0, 3, 1, 1, "ok") == []  # another peer
    assert out.ack(1.0, 2, 1, 3, "ok") == [[1, 4]]
    assert out.ack(2.0, 2, 1, -1, "done") == Finished(2, True, "done")
    assert made[0].cleaned and out.senders == {}
    assert out.ack(2.0, 2, 1, -1, "done") == []  # reported once
    assert out.chunks(2) == []


def test_failed_ack_unreachable_and_timeout():
    out, made = outgoing()
    for to in (2, 3, 4):
        out.checkpoint(0.0, out.start(snap(to)), f"/cp/{to}", None)
    assert out.ack(1.0, 2, 1, -1, "failed") == Finished(2, False, "failed")
    assert out.finish(3, False, "peer unreachable") == Finished(3, False, "peer unreachable")
    assert out.finish(3, False, "peer unreachable") is None
    out.ack(5.0, 4, 3, 0, "ok")  # progress: the clock restarts
    assert out.check(5.0 + IDLE_TIMEOUT_S) == []
    assert out.check(5.0 + IDLE_TIMEOUT_S + 0.1) == [Finished(4, False, "timed out")]
    assert all(s.cleaned for s in made) and out.senders == {}


def test_storage_restart_loses_checkpoints_not_transfers():
    out, _ = outgoing()
    out.checkpoint(0.0, out.start(snap(2)), "/cp", None)
    ctx3, ctx4 = out.start(snap(3)), out.start(snap(4))
    assert out.storage_restarted() == [3, 4]
    assert out.storage_restarted() == []
    assert out.checkpoint(1.0, ctx3, "/cp/3", None) == Orphan("/cp/3")
    assert ctx4 is not None and 2 in out.senders


# --- receiving ---------------------------------------------------------------------

class FakeReceiver:
    def __init__(self, snap_id, frm):
        self.snap_id, self.frm = snap_id, frm
        self.root = f"/in/{frm:x}-{snap_id}"
        self.bytes_received = 0
        self.expected = 0
        self.cleaned = False

    def on_chunk(self, seq, relpath, offset, data, final, digest):
        if seq != self.expected:
            raise SnapshotError("out of order")
        if data == b"disk":
            raise OSError("disk full")
        self.expected += 1
        self.bytes_received += len(data)
        return bool(final)

    def cleanup(self):
        self.cleaned = True


def chunk(snap_id: int, seq: int, data: bytes = b"xy", final: bool = False) -> SnapChunk:
    msg = snap(9) if final else None
    return SnapChunk(snap_id, seq, "f" if data else "", 0, data, final, b"d" if final else None, msg,
                     msg.to_wire() if msg else None)


def incoming():
    made, fails = [], []

    def make(snap_id, frm):
        made.append(FakeReceiver(snap_id, frm))
        return made[-1]
    return Incoming(itertools.count(100).__next__, make, lambda: fails.append(1)), made, fails


def test_receive_and_install():
    inc, made, fails = incoming()
    assert inc.chunk(0.0, 2, chunk(5, 0)) == ChunkResult(5, 0, "ok")
    got = inc.chunk(1.0, 2, chunk(5, 1, final=True))
    assert got == ChunkResult(5, 1, "ok", install=Install(100, "/in/2-5", 4))
    assert len(fails) == 2  # the failpoint hook, before each chunk is stored
    assert inc.chunk(2.0, 3, chunk(8, 0)) == ChunkResult(8, 0, "failed")  # installing: refused
    assert len(made) == 1
    done = inc.installed(100, None)
    assert done == Installed(2, 5, "done", snap(9))
    assert made[0].cleaned and inc.receiver is None
    assert inc.installed(100, None) is None


def test_install_failed():
    inc, made, _ = incoming()
    inc.chunk(0.0, 2, chunk(5, 0, final=True))
    assert inc.installed(100, "bad checkpoint") == Installed(2, 5, "failed", snap(9))


def test_bad_chunks_are_refused_and_drop_the_transfer():
    inc, made, _ = incoming()
    assert inc.chunk(0.0, 2, chunk(5, 1)) == ChunkResult(5, 1, "failed")  # no transfer
    inc.chunk(0.0, 2, chunk(5, 0))
    assert inc.chunk(0.0, 3, chunk(5, 1)) == ChunkResult(5, 1, "failed")  # another peer
    assert inc.chunk(0.0, 2, chunk(6, 1)) == ChunkResult(6, 1, "failed")  # another transfer
    assert inc.receiver is made[0]  # ...which leave this one alone
    assert inc.chunk(0.0, 2, chunk(5, 3)) == ChunkResult(5, 3, "failed", error="out of order")
    assert made[0].cleaned and inc.receiver is None
    inc.chunk(0.0, 2, chunk(5, 0))
    assert inc.chunk(0.0, 2, chunk(5, 1, data=b"disk")) == ChunkResult(5, 1, "failed", error="disk full")
    assert made[1].cleaned and inc.receiver is None


def test_new_transfer_replaces_the_one_in_progress():
    inc, made, _ = incoming()
    inc.chunk(0.0, 2, chunk(5, 0))
    assert inc.chunk(0.0, 3, chunk(1, 0)) == ChunkResult(1, 0, "ok")
    assert made[0].cleaned and inc.receiver is made[1]


def test_idle_receiver_is_dropped_unless_installing():
    inc, made, _ = incoming()
    inc.chunk(0.0, 2, chunk(5, 0))
    inc.chunk(10.0, 2, chunk(5, 1))
    inc.check(10.0 + IDLE_TIMEOUT_S)
    assert inc.receiver is made[0]
    inc.check(10.0 + IDLE_TIMEOUT_S + 0.1)
    assert inc.receiver is None and made[0].cleaned
    inc.chunk(20.0, 2, chunk(6, 0, final=True))
    inc.check(1000.0)
    assert not made[1].cleaned  # storage has it


def test_storage_restart_loses_installs():
    inc, made, _ = incoming()
    inc.chunk(0.0, 2, chunk(5, 0, final=True))
    assert inc.storage_restarted() == [(2, 5)]
    assert inc.receiver is None and not made[0].cleaned  # the lost INSTALL may still come
    assert inc.storage_restarted() == []
    assert inc.chunk(1.0, 3, chunk(7, 0, final=True)).install == Install(101, "/in/3-7", 2)
    assert inc.installed(100, None) is None  # the lost one, answered late: nobody's
    assert made[0].cleaned  # its staging dir goes with the next answer
    assert inc.installed(101, None) == Installed(3, 7, "done", snap(9))


def test_real_files_end_to_end(tmp_path):
    """The managers move a real checkpoint dir with snapshot.py's sender and receiver."""
    src = tmp_path / "cp"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(os.urandom(3000))
    (src / "sub" / "b").write_bytes(b"hello")
    out = Outgoing(itertools.count(1).__next__, SnapshotSender)
    inc = Incoming(itertools.count(1).__next__, lambda s, f: SnapshotReceiver(s, f, str(tmp_path / f"in-{s}")))
    ctx = out.start(snap(2))
    assert out.checkpoint(0.0, ctx, str(src), None) == Started(2, 10, 3005)
    pending = out.chunks(2)
    install = None
    while pending:
        body = pending.pop(0)
        msg = Message.from_wire(body[7]) if body[7] is not None else None
        got = inc.chunk(0.0, 1, SnapChunk(*body[:7], msg, body[7]))
        assert got.status == "ok"
        install = install or got.install
        more = out.ack(0.0, 2, got.snap_id, got.seq, got.status)
        assert isinstance(more, list)
        pending += more
    assert install is not None
    assert (tmp_path / "in-1" / "a").read_bytes() == (src / "a").read_bytes()
    assert (tmp_path / "in-1" / "sub" / "b").read_bytes() == b"hello"
    done = inc.installed(install.ctx, None)
    assert done is not None and done.status == "done" and done.message == snap(2)
    assert out.ack(0.0, 2, done.snap_id, -1, done.status) == Finished(2, True, "done")
    assert not src.exists() and not (tmp_path / "in-1").exists()
