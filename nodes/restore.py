"""`qkvutl snapshot restore` (nodes/utl.py): build, offline, the data dir of one member
of a NEW cluster from a snapshot file (protocol/snapshot_file.py).

What a node needs to boot from it (nodes/supervisor.py, nodes/endpoints.py):
- `<data-dir>/storage`: the RocksDB store, written from the snapshot's checkpoint, with
  its meta rewritten: `applied_index` = 0, so the new cluster's Raft log (which starts
  empty, at index 1) is applied on top of the restored data; revisions go on from the
  snapshot's, leases are kept (as etcd does). The member and cluster ids are recorded in
  the store's user meta (`x/member_id`, `x/cluster_id`) for the record;
- `<data-dir>/member.json`: the identity the supervisor checks at start, written by the
  supervisor's own code from a config built by nodes/config.py (so ids follow however
  that file derives them);
- no consensus WAL: the node boots as a member of a new cluster (`--initial-cluster-state
  new` with the same `--initial-cluster` and `--initial-cluster-token`).

`--skip-hash-check` (etcdctl's flag, "required if copied from data directory"):
- a snapshot file is unpacked without checking its SHA-256 (its layout is still checked:
  magic, metadata, sizes);
- the source may be a store copied from a stopped member's data dir (the `storage`
  directory, or the data dir that holds it), which has no hash at all: it is copied, and
  its revision, compaction and key count are read from it. Without the flag such a source
  is refused with etcdctl's "snapshot missing hash but --skip-hash-check=false".

The file's hash is checked before anything is written; a non-empty data dir is refused
(etcdctl: `data-dir "D" exists`; an empty one is taken, e.g. systemd's StateDirectory=);
on any failure what this wrote is removed again. The data dir is made 0700 and what is
written in it 0600, as a node does with its own.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from typing import Any

from actors.storage.backend import fsync_dir
from actors.storage.snapshot_file import SnapshotFileError, SnapshotMeta, unpack
from nodes.perms import private_umask, secure_data_dir

STORAGE_DIR = "storage"  # as the storage actor names it (actors/storage/actor.py)
_U64 = struct.Struct(">Q")


class RestoreError(Exception):
    """The restore cannot be done; the message says why in one line."""


@dataclass
class RestoreResult:
    meta: SnapshotMeta
    data_dir: str
    name: str
    member_id: int
    cluster_id: int


def restore_config(name: str | None, initial_cluster: str | None, token: str | None,
                   advertise_peer_urls: str | None, data_dir: str | None) -> Any:
    """The new member's `nodes.config.Config`, from etcdctl's restore flags (unset flags
    take `qkv`'s defaults and derivations)."""
    from nodes.config import ConfigError, load_config

    flags = {
        "name": name, "initial-cluster": initial_cluster, "initial-cluster-token": token,
        "initial-advertise-peer-urls": advertise_peer_urls, "data-dir": data_dir,
        "initial-cluster-state": "new",
    }
    try:
        return load_config({k: v for k, v in flags.items() if v is not None}, env={})
    except ConfigError as exc:
        raise RestoreError(str(exc)) from None


def copied_store(path: str) -> str | None:
    """The store dir of a store copied from a data dir (`path` itself or `path/storage`),
    or None when `path` is not a directory."""
    if not os.path.isdir(path):
        return None
    for candidate in (path, os.path.join(path, STORAGE_DIR)):
        if os.path.exists(os.path.join(candidate, "CURRENT")):
            return candidate
    raise RestoreError(f"{path} is a directory but holds no store (no RocksDB CURRENT file in it or in its "
                       f"{STORAGE_DIR}/)")


def _copy_store(store: str, dest_dir: str) -> SnapshotMeta:
    """A copy of a store dir (from a stopped member's data dir), and its metadata read from it."""
    from actors.storage.backend import RocksBackend
    from actors.storage.mvcc import MVCCStore

    shutil.copytree(store, dest_dir, ignore=shutil.ignore_patterns("LOCK"))
    for root, _, files in os.walk(dest_dir):
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)
    try:
        backend = RocksBackend(dest_dir)
    except Exception as exc:  # rocksdict raises a bare Exception
        raise RestoreError(f"cannot open the store copied from {store}: {' '.join(str(exc).split())[:300]}") from None
    try:
        st = MVCCStore(backend)
        return SnapshotMeta(revision=st.current_revision, compact_revision=st.compact_revision,
                            applied_index=st.applied_index, key_count=st.key_count(), cluster_id=0, member_id=0,
                            created=0.0, version="")
    finally:
        backend.close()


def restore(snapshot_path: str, cfg: Any, skip_hash_check: bool = False) -> RestoreResult:
    """Restore `snapshot_path` into `cfg.data_dir` for the member `cfg` describes."""
    store_src = copied_store(snapshot_path)
    if store_src is not None and not skip_hash_check:
        raise RestoreError(f"snapshot missing hash but --skip-hash-check=false ({snapshot_path} is a store "
                           f"copied from a data dir: it has no hash; restore it with --skip-hash-check)")
    data_dir = os.path.abspath(cfg.data_dir)
    if os.path.exists(data_dir):
        if not os.path.isdir(data_dir):
            raise RestoreError(f"--data-dir {data_dir} exists and is not a directory")
        if os.listdir(data_dir):  # etcdctl's words (it refuses an empty one too; we take that)
            raise RestoreError(f'data-dir "{cfg.data_dir}" exists')
        created = False
    else:
        created = True
    store_tmp = os.path.join(data_dir, STORAGE_DIR + ".restoring")
    try:
        # As a node's own: the dir 0700, everything in it 0600 (nodes/perms.py).
        secure_data_dir(data_dir)
        with private_umask():
            try:
                if store_src is not None:
                    meta = _copy_store(store_src, store_tmp)
                else:
                    meta = unpack(snapshot_path, store_tmp, check_hash=not skip_hash_check)
            except SnapshotFileError as exc:
                raise RestoreError(str(exc)) from None
            _rewrite_meta(store_tmp, meta, cfg)
            os.rename(store_tmp, os.path.join(data_dir, STORAGE_DIR))
            fsync_dir(data_dir)
            _write_member_file(cfg)
            fsync_dir(data_dir)
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif os.path.isdir(data_dir):
            for entry in os.listdir(data_dir):
                path = os.path.join(data_dir, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        raise
    return RestoreResult(meta, data_dir, cfg.name, cfg.member_id, cfg.cluster_id)


def _rewrite_meta(store_dir: str, meta: SnapshotMeta, cfg: Any) -> None:
    from actors.storage.backend import RocksBackend
    from actors.storage.mvcc import MVCCStore
    from actors.storage.mvcc.store import CF_META, META_APPLIED_INDEX
    from actors.storage.offline import INSTALLED_INDEX_KEY

    backend = RocksBackend(store_dir)
    try:
        store = MVCCStore(backend)
        if store.current_revision != meta.revision or store.compact_revision != meta.compact_revision:
            raise RestoreError(
                f"the snapshot's store is at revision {store.current_revision} (compacted at "
                f"{store.compact_revision}) but its metadata says {meta.revision} ({meta.compact_revision})")
        # applied_index 0; and no install mark (actors/storage/offline.py) from the old cluster.
        backend.write([(CF_META, META_APPLIED_INDEX, _U64.pack(0)), (CF_META, INSTALLED_INDEX_KEY, None)], sync=True)
        store.put_meta("member_id", _U64.pack(cfg.member_id))
        store.put_meta("cluster_id", _U64.pack(cfg.cluster_id))
        backend.sync()
    finally:
        backend.close()


def _write_member_file(cfg: Any) -> None:
    """member.json, as the supervisor writes it on a node's first start."""
    from nodes.supervisor import StartupError, Supervisor

    try:
        Supervisor(cfg)._check_member_file()
    except StartupError as exc:
        raise RestoreError(str(exc)) from None
