"""The backup file of `qkvctl snapshot save`: one member's store as a RocksDB checkpoint,
packed into one stream with its metadata and a SHA-256 of the whole content.

Layout (protocol/SPEC.md section 6; integers big-endian):

    magic     8 bytes   b"QKVSNAP\\x01"
    meta_len  4 bytes   uint32
    meta      msgpack map: {"format": 1, "revision", "compact_revision", "applied_index",
              "key_count", "cluster_id", "member_id", "created" (unix seconds, float),
              "version", "files": [[name, size], ...]}
    files     the bytes of every file named in `files`, in that order, back to back
    sha256    32 bytes: SHA-256 of every byte before it

The metadata comes first and names every file with its size, so the total size is known
before the first chunk goes out (a progress bar) and a truncated file is told apart from
a corrupted one. The hash comes last, so the server hashes as it streams.

- `PackStream` reads a checkpoint directory as that stream, chunk by chunk (the storage
  actor serves one chunk per client request: no step takes long);
- `SnapshotSaves` holds the storage actor's saves in progress: their checkpoints, the
  last chunk served (a client that lost a reply asks for it again), and an idle deadline
  after which an abandoned save's checkpoint is removed;
- `read_meta`, `verify`, `unpack` read a file back (`snapshot status`, `snapshot restore`).

File I/O only: no sockets, no clock except the one `SnapshotSaves` is given.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import msgpack

MAGIC = b"QKVSNAP\x01"
FORMAT = 1
HASH_LEN = 32
_U32 = struct.Struct(">I")
HEADER_MAX = 16 * 1024 * 1024  # a sane bound for meta_len (a corrupted length is refused)
READ_BLOCK = 1024 * 1024


class SnapshotFileError(Exception):
    """The file is not a usable snapshot: wrong magic, truncated, or a hash mismatch."""


@dataclass
class SnapshotMeta:
    revision: int
    compact_revision: int
    applied_index: int
    key_count: int
    cluster_id: int
    member_id: int
    created: float
    version: str
    files: list[tuple[str, int]] = field(default_factory=list)
    format: int = FORMAT

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": self.format, "revision": self.revision, "compact_revision": self.compact_revision,
            "applied_index": self.applied_index, "key_count": self.key_count,
            "cluster_id": self.cluster_id, "member_id": self.member_id, "created": self.created,
            "version": self.version, "files": [[n, s] for n, s in self.files],
        }

    @classmethod
    def from_wire(cls, wire: Any) -> "SnapshotMeta":
        if not isinstance(wire, dict):
            raise SnapshotFileError("snapshot metadata is not a map")
        if wire.get("format") != FORMAT:
            raise SnapshotFileError(f"unsupported snapshot format {wire.get('format')!r} (this qkvctl reads {FORMAT})")
        ints = {}
        for name in ("revision", "compact_revision", "applied_index", "key_count", "cluster_id", "member_id"):
            v = wire.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SnapshotFileError(f"snapshot metadata: bad {name} {v!r}")
            ints[name] = v
        created = wire.get("created")
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise SnapshotFileError(f"snapshot metadata: bad created {created!r}")
        files = wire.get("files")
        if not isinstance(files, list):
            raise SnapshotFileError("snapshot metadata: files is not a list")
        out: list[tuple[str, int]] = []
        for item in files:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise SnapshotFileError(f"snapshot metadata: bad file entry {item!r:.80}")
            name, size = item
            if not _safe_name(name) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise SnapshotFileError(f"snapshot metadata: bad file entry {item!r:.80}")
            out.append((name, size))
        return cls(created=float(created), version=str(wire.get("version", "")), files=out, **ints)

    @property
    def data_size(self) -> int:
        return sum(size for _, size in self.files)


def _safe_name(name: Any) -> bool:
    """A plain file name (a checkpoint is flat): nothing that could escape the target dir."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name)


def encode_header(meta: SnapshotMeta) -> bytes:
    body = msgpack.packb(meta.to_wire(), use_bin_type=True)
    return MAGIC + _U32.pack(len(body)) + body


def short_hash(digest: bytes) -> int:
    """The 32-bit hash `snapshot status` prints (etcdctl prints a uint32 there): the
    first four bytes of the SHA-256."""
    return int.from_bytes(digest[:4], "big")


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


# --- reading a file back -------------------------------------------------------------------
def read_meta(path: str) -> tuple[SnapshotMeta, int]:
    """The metadata and the offset of the first file byte; checks that the file's size is
    exactly what the metadata says (a truncated or padded file is refused)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + _U32.size)
            if len(head) < len(MAGIC) + _U32.size or head[: len(MAGIC)] != MAGIC:
                raise SnapshotFileError(f"{path} is not a quorumkv snapshot file (bad magic)")
            (meta_len,) = _U32.unpack(head[len(MAGIC):])
            if meta_len > HEADER_MAX:
                raise SnapshotFileError(f"{path}: snapshot metadata length {meta_len} is corrupt")
            body = f.read(meta_len)
    except OSError as exc:
        raise SnapshotFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(body) < meta_len:
        raise SnapshotFileError(f"{path} is truncated (in its metadata)")
    try:
        wire = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        raise SnapshotFileError(f"{path}: snapshot metadata is corrupt") from None
    meta = SnapshotMeta.from_wire(wire)
    data_offset = len(MAGIC) + _U32.size + meta_len
    expected = data_offset + meta.data_size + HASH_LEN
    if size < expected:
        raise SnapshotFileError(f"{path} is truncated: {size} bytes, the snapshot needs {expected}")
    if size > expected:
        raise SnapshotFileError(f"{path} has {size - expected} unexpected trailing bytes")
    return meta, data_offset


def _stored_and_computed(path: str) -> tuple[bytes, bytes]:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        _read_blocks(f, size - HASH_LEN, digest.update, path)
        stored = f.read(HASH_LEN)
    return stored, digest.digest()


def _read_blocks(f, length: int, sink, path: str) -> None:
    """Feed the next `length` bytes of `f` to `sink` in blocks of at most READ_BLOCK."""
    left = length
    while left > 0:
        block = f.read(min(READ_BLOCK, left))
        if not block:
            raise SnapshotFileError(f"{path} shrank while being read")
        sink(block)
        left -= len(block)


def verify(path: str) -> tuple[SnapshotMeta, bytes]:
    """The metadata and the SHA-256 of a snapshot file whose hash matches its content;
    SnapshotFileError otherwise."""
    meta, _ = read_meta(path)
    try:
        stored, computed = _stored_and_computed(path)
    except OSError as exc:
        raise SnapshotFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stored != computed:
        raise SnapshotFileError(
            f"snapshot file {path} is corrupted: its SHA-256 does not match its content "
            f"(stored {stored.hex()[:16]}..., computed {computed.hex()[:16]}...)")
    return meta, computed


def unpack(path: str, dest_dir: str) -> SnapshotMeta:
    """Verify `path`, then write its checkpoint files into `dest_dir` (created; must not
    exist), each fsynced."""
    meta, _ = verify(path)
    _, offset = read_meta(path)
    os.makedirs(dest_dir)
    with open(path, "rb") as src:
        src.seek(offset)
        for name, size in meta.files:
            with open(os.path.join(dest_dir, name), "wb") as out:
                _read_blocks(src, size, out.write, path)
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
