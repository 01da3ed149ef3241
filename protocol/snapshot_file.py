"""The snapshot file of `qkvctl snapshot save`: its layout, and reading it back.

Shared by the client (`qkvctl snapshot save` verifies what arrived, `snapshot status`
reads a file) and the server (actors/storage/snapshot_file.py streams one out;
nodes/utl.py `qkvutl snapshot restore` unpacks one), so it lives in protocol/: the client
package imports nothing from actors/ or nodes/.

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

Rules:
- `read_meta` refuses a file whose size is not exactly what its metadata says;
- `verify` returns the metadata only when the stored SHA-256 matches the content;
- a file name in the metadata is a plain name (no path): unpacking cannot escape its dir.
File reads only: no writes, no sockets, no clock.
"""
from __future__ import annotations

import hashlib
import os
import struct
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
            raise SnapshotFileError(f"unsupported snapshot format {wire.get('format')!r} (this version reads {FORMAT})")
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
    body: bytes = msgpack.packb(meta.to_wire(), use_bin_type=True)
    return MAGIC + _U32.pack(len(body)) + body


def short_hash(digest: bytes) -> int:
    """The 32-bit hash `snapshot status` prints (etcdctl prints a uint32 there): the
    first four bytes of the SHA-256."""
    return int.from_bytes(digest[:4], "big")


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
        read_blocks(f, size - HASH_LEN, digest.update, path)
        stored = f.read(HASH_LEN)
    return stored, digest.digest()


def read_blocks(f: BinaryIO, length: int, sink: Callable[[bytes], Any], path: str) -> None:
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
