"""File permissions of a node: what it writes is for its own user only.

- Every process of a node runs with umask 0o077 (`PRIVATE_UMASK`), so RocksDB, the WAL,
  member.json, markers, snapshots and ipc sockets are created 0600 / 0700.
- The data dir is 0700; an old data dir with looser modes is fixed at start
  (`secure_data_dir`: the dir 0700, every file below 0600, every dir 0700).
- The run dir (ipc sockets, config.json; nodes/endpoints.py) lives in the shared temp
  dir, where another user could create it first: `make_private_dir` creates it 0700 or
  accepts an existing one only when it is a real directory, ours, and not writable by
  anyone else (`UnsafeDirError` otherwise).
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeDirError(Exception):
    """A directory another user could control; the message names it and says why."""


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """umask 0o077 for the block (for code that runs in someone else's process)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def make_private_dir(path: str, what: str = "run dir") -> None:
    """Create `path` 0700, or accept an existing one only if it is safe.

    Refused: a symlink, anything but a directory, a directory owned by another uid, or
    one that group or others may write to (they could have planted files or sockets in
    it). Ours and only readable by others (e.g. 0755 from an older qkv): made 0700."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    fix = "remove it, or point TMPDIR at a directory only you can write to"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirError(f"{what} {path} is a symlink (someone may have planted it): {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirError(f"{what} {path} exists and is not a directory: {fix}")
    if st.st_uid != os.geteuid():
        raise UnsafeDirError(f"{what} {path} is owned by uid {st.st_uid}, not by this user "
                             f"(uid {os.geteuid()}): {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafeDirError(f"{what} {path} has mode {mode:04o}, writable by group or others "
                             f"(it must be 0700): {fix}")
    if mode & 0o077:
        os.chmod(path, DIR_MODE)


def secure_data_dir(path: str) -> tuple[int | None, int]:
    """Create the data dir 0700, or make an existing one and everything in it private.

    Group and other bits are cleared below it (files end 0600, dirs 0700). Returns (the
    dir's old mode if it had to be changed, else None; how many entries below it were
    changed). Symlinks are left alone (neither followed nor changed)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)  # parents keep the caller's umask
    try:
        os.mkdir(path, DIR_MODE)
        return None, 0
    except FileExistsError:
        pass
    st = os.stat(path)  # the data dir itself may be a symlink to another disk
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirError(f"data dir {path} exists and is not a directory")
    old_mode: int | None = None
    if stat.S_IMODE(st.st_mode) & 0o077:
        old_mode = stat.S_IMODE(st.st_mode)
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    changed = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            try:
                entry = os.lstat(full)
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(entry.st_mode)
            if stat.S_ISLNK(entry.st_mode) or not mode & 0o077:
                continue
            os.chmod(full, mode & 0o700)  # 0644 -> 0600, 0755 -> 0700: the owner's bits stay
            changed += 1
    return old_mode, changed
