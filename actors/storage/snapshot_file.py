"""The server side of the snapshot file (protocol/snapshot_file.py holds its layout and
the readers `read_meta`, `verify`, which the client shares):

- `PackStream` reads a checkpoint directory as that stream, chunk by chunk (the storage
  actor serves one chunk per client request: no step takes long);
- `SnapshotSaves` holds the storage actor's saves in progress: their checkpoints, the
  last chunk served (a client that lost a reply asks for it again), and an idle deadline
  after which an abandoned save's checkpoint is removed;
- `unpack` writes a verified file's checkpoint into a new dir (`qkvutl snapshot restore`).

File I/O only: no sockets, no clock except the one `SnapshotSaves` is given.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from protocol.snapshot_file import (  # noqa: F401  (re-exported: the server's one import point)
    FORMAT, HASH_LEN, HEADER_MAX, MAGIC, READ_BLOCK, SnapshotFileError, SnapshotMeta, encode_header,
    read_blocks, read_meta, short_hash, verify,
)


def checkpoint_files(directory: str) -> list[tuple[str, int]]:
    """The files of a checkpoint directory, by name, with their sizes."""
    files = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise SnapshotFileError(f"checkpoint {directory} holds a non-file {name!r}")
        files.append((name, os.path.getsize(path)))
    return files


class PackStream:
    """The snapshot stream of a checkpoint directory, read chunk by chunk."""

    def __init__(self, directory: str, meta: SnapshotMeta) -> None:
        self.directory = directory
        self.meta = meta
        self._header = encode_header(meta)
        self.total_size = len(self._header) + meta.data_size + HASH_LEN
        self.position = 0
        self._hash = hashlib.sha256(self._header)  # the header is the stream's first bytes
        self._pending = self._header  # bytes ready to go out before the next file
        self._file_index = 0
        self._file: BinaryIO | None = None
        self._file_left = 0
        self._trailer_done = False

    def read(self, n: int) -> bytes:
        """Up to `n` bytes (fewer only at the end); b"" once everything has been read."""
        out = bytearray()
        while len(out) < n:
            if self._pending:
                take = self._pending[: n - len(out)]
                self._pending = self._pending[len(take):]
                out += take
                continue
            if self._file is not None:
                data = self._file.read(min(n - len(out), self._file_left))
                if not data:
                    raise SnapshotFileError(f"checkpoint file {self.meta.files[self._file_index][0]!r} shrank")
                self._hash.update(data)
                self._file_left -= len(data)
                out += data
                if self._file_left == 0:
                    self._file.close()
                    self._file = None
                    self._file_index += 1
                continue
            if self._file_index < len(self.meta.files):
                name, size = self.meta.files[self._file_index]
                if size == 0:
                    self._file_index += 1
                    continue
                self._file = open(os.path.join(self.directory, name), "rb")
                self._file_left = size
                continue
            if not self._trailer_done:
                self._trailer_done = True
                self._pending = self._hash.digest()
                continue
            break
        self.position += len(out)
        return bytes(out)

    @property
    def done(self) -> bool:
        return self.position >= self.total_size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def pack_checkpoint(directory: str, out_path: str, meta: SnapshotMeta) -> int:
    """Write the snapshot file of a checkpoint directory in one go (tests, tools); its size."""
    meta.files = checkpoint_files(directory)
    stream = PackStream(directory, meta)
    try:
        with open(out_path, "wb") as f:
            while chunk := stream.read(READ_BLOCK):
                f.write(chunk)
    finally:
        stream.close()
    return stream.total_size


def unpack(path: str, dest_dir: str, check_hash: bool = True) -> SnapshotMeta:
    """Verify `path`, then write its checkpoint files into `dest_dir` (created; must not
    exist), each fsynced. `check_hash=False` (restore --skip-hash-check) skips its SHA-256;
    the layout (magic, metadata, sizes) is read either way."""
    if check_hash:
        verify(path)
    meta, offset = read_meta(path)
    os.makedirs(dest_dir)
    with open(path, "rb") as src:
        src.seek(offset)
        for name, size in meta.files:
            with open(os.path.join(dest_dir, name), "wb") as out:
                read_blocks(src, size, out.write, path)
                out.flush()
                os.fsync(out.fileno())
    return meta


# --- the storage actor's saves in progress --------------------------------------------------
@dataclass
class _Save:
    snapshot_id: int
    directory: str
    stream: PackStream
    deadline: float
    last: tuple[int, bytes, bool] | None = None  # (offset, data, done) of the last chunk served


class SnapshotSaves:
    """Saves in progress on one storage actor. Each request is answered from memory and at
    most one chunk read from disk; a save not asked for within `idle_s` is dropped and its
    checkpoint removed (the client went away)."""

    def __init__(self, root: str, idle_s: float, max_saves: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.idle_s = idle_s
        self.max_saves = max_saves
        self.clock = clock
        self.saves: dict[int, _Save] = {}
        self._rng = random.SystemRandom()
        shutil.rmtree(root, ignore_errors=True)  # leftovers of a previous process

    def start(self, checkpoint: Callable[[str], None], meta: SnapshotMeta) -> _Save:
        """Make a checkpoint (`checkpoint(path)`, consistent with `meta`) and a save on it.
        Raises `TooManySaves`, or whatever the checkpoint raises."""
        self.expire()
        if len(self.saves) >= self.max_saves:
            raise TooManySaves(f"{len(self.saves)} snapshots are being saved from this member already")
        snapshot_id = self._rng.randrange(1, 2**63)
        directory = os.path.join(self.root, f"save-{snapshot_id:x}")
        os.makedirs(self.root, exist_ok=True)
        try:
            checkpoint(directory)
            meta.files = checkpoint_files(directory)
            stream = PackStream(directory, meta)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        save = _Save(snapshot_id, directory, stream, self.clock() + self.idle_s)
        self.saves[snapshot_id] = save
        return save

    def chunk(self, snapshot_id: int, offset: int, max_bytes: int) -> tuple[_Save, int, bytes, bool]:
        """(save, offset, data, done) for a request at `offset`: the next chunk, or the last
        one again. Raises `UnknownSave` / `BadOffset`."""
        save = self.saves.get(snapshot_id)
        if save is None:
            raise UnknownSave(
                f"snapshot {snapshot_id:x} is not being saved here (it finished, was idle for more than "
                f"{self.idle_s:g}s, or the member restarted): start the save again")
        save.deadline = self.clock() + self.idle_s
        if save.last is not None and offset == save.last[0]:
            return save, offset, save.last[1], save.last[2]
        if offset != save.stream.position:
            raise BadOffset(f"snapshot {snapshot_id:x}: offset {offset} is not the next one "
                            f"({save.stream.position})")
        try:
            data = save.stream.read(max_bytes)
        except BaseException:
            self.drop(snapshot_id)
            raise
        done = save.stream.done
        save.last = (offset, data, done)
        if done:  # the checkpoint is not needed any more; the last chunk stays for a retry
            save.stream.close()
            shutil.rmtree(save.directory, ignore_errors=True)
        return save, offset, data, done

    def drop(self, snapshot_id: int) -> None:
        save = self.saves.pop(snapshot_id, None)
        if save is not None:
            save.stream.close()
            shutil.rmtree(save.directory, ignore_errors=True)

    def expire(self) -> list[int]:
        now = self.clock()
        gone = [sid for sid, s in self.saves.items() if s.deadline <= now]
        for sid in gone:
            self.drop(sid)
        return gone

    def close(self) -> None:
        for sid in list(self.saves):
            self.drop(sid)
        shutil.rmtree(self.root, ignore_errors=True)


class TooManySaves(Exception):
    pass


class UnknownSave(Exception):
    pass


class BadOffset(Exception):
    pass
