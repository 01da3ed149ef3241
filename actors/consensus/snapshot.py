"""Moving a storage snapshot between members, in chunks, with flow control and a hash.

The Raft core only carries snapshot metadata (a SNAP message); the data is a RocksDB
checkpoint of the leader's store, made by its storage actor. The sender streams the
checkpoint's files in chunks of CHUNK_BYTES, at most WINDOW chunks unacknowledged. The
receiver writes them to a staging directory, checks a blake2b digest over everything it
received (path, offset and bytes of each chunk, in order) against the sender's, fsyncs,
and only then hands the directory to its storage actor to install. Any mismatch,
missing chunk or silence (transfers.py) fails the transfer; the leader's Raft core retries later.
"""
from __future__ import annotations

import hashlib
import os
import shutil

CHUNK_BYTES = 1 << 20
WINDOW = 4


class SnapshotError(Exception):
    """The transfer cannot go on; the message says why."""


def _digest_update(h: "hashlib.blake2b", relpath: str, offset: int, data: bytes) -> None:
    h.update(relpath.encode())
    h.update(offset.to_bytes(8, "big"))
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def safe_relpath(relpath: object) -> str:
    if not isinstance(relpath, str) or not relpath or "\0" in relpath:
        raise SnapshotError(f"bad path in snapshot chunk: {relpath!r}")
    norm = os.path.normpath(relpath)
    if os.path.isabs(norm) or norm == "." or norm.split(os.sep)[0] == ".." or norm != relpath:
        raise SnapshotError(f"bad path in snapshot chunk: {relpath!r}")
    return norm


class SnapshotSender:
    def __init__(self, snap_id: int, to: int, root: str, message_wire: list) -> None:
        self.snap_id = snap_id
        self.to = to
        self.root = root
        self.message_wire = message_wire
        self.files: list[tuple[str, int]] = []
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                self.files.append((os.path.relpath(full, root), os.path.getsize(full)))
        self.files.sort()
        self.total_bytes = sum(size for _, size in self.files)
        self._file = 0
        self._offset = 0
        self.seq = 0  # next chunk to send
        self.acked = -1
        self.finished_sending = False
        self._hash = hashlib.blake2b(digest_size=32)

    def next_chunks(self) -> list[list]:
        """Chunk bodies that the window allows now: [snap_id, seq, relpath, offset, data,
        final, digest, message_wire]."""
        out = []
        while not self.finished_sending and self.seq - self.acked <= WINDOW:
            if self._file < len(self.files):
                relpath, size = self.files[self._file]
                with open(os.path.join(self.root, relpath), "rb") as f:
                    f.seek(self._offset)
                    data = f.read(CHUNK_BYTES)
                offset = self._offset
                self._offset += len(data)
                if self._offset >= size:
                    self._file += 1
                    self._offset = 0
            else:
                relpath, offset, data = "", 0, b""
            final = self._file >= len(self.files)
            if relpath:
                _digest_update(self._hash, relpath, offset, data)
            digest = self._hash.digest() if final else None
            out.append([self.snap_id, self.seq, relpath, offset, data, final,
                        digest, self.message_wire if final else None])
            self.seq += 1
            self.finished_sending = final
        return out

    def on_ack(self, seq: int) -> None:
        self.acked = max(self.acked, seq)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class SnapshotReceiver:
    def __init__(self, snap_id: int, frm: int, root: str) -> None:
        if type(snap_id) is not int or type(frm) is not int or snap_id < 0 or frm <= 0:
            raise SnapshotError(f"bad snapshot id {snap_id!r} from {frm!r}")  # they name `root`
        self.snap_id = snap_id
        self.frm = frm
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        self.expected_seq = 0
        self._hash = hashlib.blake2b(digest_size=32)
        self.bytes_received = 0

    def on_chunk(self, seq: object, relpath: object, offset: object, data: object, final: object,
                 digest: object) -> bool:
        """Store one chunk; True when the snapshot is complete and verified."""
        if seq != self.expected_seq:
            raise SnapshotError(f"snapshot chunk {seq!r} out of order (expected {self.expected_seq})")
        if not isinstance(data, bytes) or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise SnapshotError("malformed snapshot chunk")
        self.expected_seq += 1
        if relpath != "":
            rel = safe_relpath(relpath)
            path = os.path.join(self.root, rel)
            if os.path.commonpath([self.root, path]) != self.root:
                raise SnapshotError(f"bad path in snapshot chunk: {relpath!r}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "r+b" if os.path.exists(path) else "wb") as f:
                f.seek(offset)
                f.write(data)
            _digest_update(self._hash, rel, offset, data)
            self.bytes_received += len(data)
        if not final:
            return False
        if digest != self._hash.digest():
            raise SnapshotError("snapshot digest mismatch: the data was corrupted in transit")
        self._fsync_tree()
        return True

    def _fsync_tree(self) -> None:
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fd = os.open(dirpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
