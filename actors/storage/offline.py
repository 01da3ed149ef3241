"""Reading a member's store without the storage actor: the node's start-up check
(nodes/preflight.py) compares the store's applied index with the consensus log before
any actor runs.

Rules:
- read-only: RocksDB opens the store with `AccessType.read_only()`; nothing is written
  (no lock taken, no flush, no new file), so the storage actor opens it afterwards as
  always, and a store that is being refused stays exactly as it was found;
- the store read is the one the storage actor will use: `<data-dir>/storage`, or
  `storage.old` when a snapshot install was cut between its two renames (the actor's
  `_recover_install` renames it back);
- `INSTALLED_INDEX` (user meta, `MVCCStore.put_meta`) is written by the storage actor
  into a snapshot it is about to install: the applied index that snapshot brought. A store
  whose applied index is still that one has applied nothing since the install, so the log
  may legitimately end before it (the leader's log catches up after the install).
"""
from __future__ import annotations

import gc
import os
import struct
from dataclasses import dataclass
from typing import Any

from rocksdict import AccessType, Options, Rdict

from actors.runtime import rocks_log
from actors.storage.mvcc.store import CF_META, META_APPLIED_INDEX

STORAGE_DIR = "storage"  # as the storage actor names it (actors/storage/actor.py)
INSTALLED_INDEX = "installed_index"
INSTALLED_INDEX_KEY = b"x/" + INSTALLED_INDEX.encode()  # MVCCStore's user meta prefix
_U64 = struct.Struct(">Q")


class StoreUnreadable(Exception):
    """RocksDB cannot open or read the store; the message says why in one line."""


@dataclass
class StoreIndexes:
    path: str
    applied_index: int
    installed_index: int  # 0: no snapshot was installed into this store


def store_path(data_dir: str) -> str | None:
    """The store dir the storage actor will open, or None when it has none yet."""
    path = os.path.join(data_dir, STORAGE_DIR)
    if os.path.exists(os.path.join(path, "CURRENT")):
        return path
    old = path + ".old"
    if not os.path.exists(path) and os.path.exists(os.path.join(old, "CURRENT")):
        return old
    return None


def read_indexes(data_dir: str) -> StoreIndexes | None:
    """The applied and installed indexes of the member's store; None without a store."""
    path = store_path(os.fspath(data_dir))
    if path is None:
        return None
    opts = Options(raw_mode=True)
    try:
        rocks_log.scan(path)  # first: damaged framing can make RocksDB's replay hang
    except (rocks_log.DamagedLog, OSError) as exc:
        raise StoreUnreadable(f"the store's write-ahead file is damaged: {_one_line(exc)}") from None
    try:
        names = set(Rdict.list_cf(path, opts))
        if CF_META not in names:
            return StoreIndexes(path, 0, 0)
        db = Rdict(path, options=opts, column_families={CF_META: Options(raw_mode=True)},
                   access_type=AccessType.read_only())
    except Exception as exc:  # rocksdict raises a bare Exception: "Corruption: ...", "IO error: ..."
        raise StoreUnreadable(f"RocksDB cannot open the store {path}: {_one_line(exc)}") from None
    try:
        meta = db.get_column_family(CF_META)
        try:
            applied = _u64(meta.get(META_APPLIED_INDEX))
            installed = _u64(meta.get(INSTALLED_INDEX_KEY))
        finally:
            del meta
    except Exception as exc:  # noqa: BLE001 - a block failing its checksum, a value of the wrong size
        raise StoreUnreadable(f"reading the store {path} failed: {_one_line(exc)}") from None
    finally:
        db.close()
        del db
        gc.collect()
    return StoreIndexes(path, applied, installed)


def mark_installed(store: Any) -> None:
    """Record in a snapshot about to be installed (an `MVCCStore` over it) the applied index
    it brings (`INSTALLED_INDEX`); fsynced, before the install's renames."""
    store.put_meta(INSTALLED_INDEX, _U64.pack(store.applied_index), sync=True)


def _u64(raw: bytes | None) -> int:
    return 0 if raw is None else _U64.unpack(raw)[0]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
