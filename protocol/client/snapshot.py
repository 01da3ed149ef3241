"""Snapshots for disaster recovery (etcdctl's `snapshot save | status`).

- `save` streams one member's store (SPEC section 6, op `snapshot`) into `<file>.part`
  (mode 0600: it holds every key), chunk by chunk: each request asks for the next chunk,
  so there is never more than one chunk in flight and no frame exceeds the server's
  limit. A chunk whose reply was lost is asked for again (the server keeps the last
  one). The file is verified (its SHA-256) before it is renamed to `<file>`.
- `status` reads a file's metadata after checking its hash.
- `restore` is not here: it builds a data dir with server code, offline, so it is
  `qkvutl snapshot restore` (nodes/utl.py), as etcd moved it into etcdutl.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, TextIO

from protocol.errors import Internal
from protocol.requests import SNAPSHOT_CHUNK_DEFAULT
from protocol.snapshot_file import SnapshotFileError, SnapshotMeta, short_hash, verify

__all__ = ["SnapshotFileError", "SnapshotStatus", "ProgressBar", "save", "status"]


@dataclass(frozen=True)
class SnapshotStatus:
    hash: int  # the first 4 bytes of the file's SHA-256 (etcdctl prints a uint32 here)
    revision: int
    total_key: int  # live keys at `revision`
    total_size: int  # bytes of the file
    sha256: str
    meta: SnapshotMeta


def status(path: str) -> SnapshotStatus:
    """The status of a snapshot file; `SnapshotFileError` when it is corrupt or truncated."""
    meta, digest = verify(path)
    return SnapshotStatus(short_hash(digest), meta.revision, meta.key_count, os.path.getsize(path),
                          digest.hex(), meta)


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_private(path: str) -> BinaryIO:
    """`path` truncated for writing, mode 0600 (a snapshot holds every key and the auth
    data); the rename to the final name keeps the mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a .part left by an older run keeps its mode otherwise
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def save(endpoint: str, path: str, *, timeout: float = 7.0, chunk_bytes: int = SNAPSHOT_CHUNK_DEFAULT,
         serializable: bool = False, progress: Callable[[int, int], None] | None = None,
         **client_options: Any) -> SnapshotStatus:
    """Save a snapshot of the member at `endpoint` into `path`. `timeout` bounds each
    request. A save is linearizable unless `serializable`: it holds every write
    acknowledged before it started (the member first applies up to a read index, which
    needs a leader); `serializable` saves whatever the member has applied (a member
    without quorum). `client_options`: the Client's security options (user, password,
    server_key, key_file). The file is created 0600: it holds the whole store."""
    from protocol.client.client import Client

    part = path + ".part"
    try:
        with Client([endpoint], timeout=timeout, **client_options) as client, _open_private(part) as f:
            req: dict[str, Any] = {"op": "snapshot", "max_bytes": int(chunk_bytes)}
            if serializable:
                req["serializable"] = True
            reply = client.request(req)
            snapshot_id = reply.get("snapshot_id")
            total = reply.get("total_size")
            if not isinstance(snapshot_id, int) or not isinstance(total, int) or total <= 0:
                raise Internal(f"bad snapshot reply: {reply!r:.200}")
            written = 0
            while True:
                data = reply.get("data")
                if (reply.get("snapshot_id") != snapshot_id or reply.get("offset") != written
                        or not isinstance(data, bytes) or written + len(data) > total):
                    raise Internal(f"bad snapshot chunk at offset {written} (reply offset "
                                   f"{reply.get('offset')!r}, {len(data) if isinstance(data, bytes) else '?'} bytes)")
                f.write(data)
                written += len(data)
                if progress is not None:
                    progress(written, total)
                if reply.get("done"):
                    break
                if not data:
                    raise Internal(f"the server sent an empty chunk at offset {written} of {total}")
                reply = client.request({"op": "snapshot", "snapshot_id": snapshot_id, "offset": written,
                                        "max_bytes": int(chunk_bytes)})
            if written != total:
                raise Internal(f"snapshot ended after {written} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())
        result = status(part)  # the hash the server computed must match what arrived
        os.replace(part, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        return result
    except BaseException:
        try:
            os.unlink(part)
        except FileNotFoundError:
            pass
        raise


class ProgressBar:
    """A one-line progress bar on a terminal (redrawn at most 10 times a second)."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._drawn_at = 0.0
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        from protocol.client.output import humanize_bytes

        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        rate = done / max(now - self._started, 1e-6)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}% "
                          f"{humanize_bytes(done)} / {humanize_bytes(total)} ({humanize_bytes(int(rate))}/s)")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
