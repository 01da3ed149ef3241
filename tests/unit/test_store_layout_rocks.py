"""RocksDB files besides the data (issue 13's data dir size): info logs do not pile up
with restarts, and the store's and the Raft log's options bound RocksDB's own WAL."""
from __future__ import annotations

import glob
import os

from actors.consensus import wal as raft_wal
from actors.storage import backend as store_backend
from actors.storage.backend import RocksBackend


def _option(path: str, name: str) -> set[str]:
    latest = max(glob.glob(os.path.join(path, "OPTIONS-*")))
    with open(latest) as f:
        return {line.split("=", 1)[1].strip() for line in f if line.strip().startswith(name + "=")}


def test_info_logs_are_capped_across_restarts(tmp_path):
    path = str(tmp_path / "storage")
    for i in range(store_backend.KEEP_INFO_LOGS + 4):
        be = RocksBackend(path)
        be.write([("key", b"k%d" % i, b"v")], sync=True)
        be.close()
    logs = glob.glob(os.path.join(path, "LOG*"))
    assert len(logs) <= store_backend.KEEP_INFO_LOGS, logs
    assert _option(path, "max_total_wal_size") == {str(store_backend.MAX_WAL_BYTES)}


def test_the_raft_logs_rocksdb_is_bounded_too(tmp_path):
    path = str(tmp_path / "consensus")
    for _ in range(raft_wal.KEEP_INFO_LOGS + 4):
        w = raft_wal.WAL(path)
        w.close()
    logs = glob.glob(os.path.join(path, "LOG*"))
    assert len(logs) <= raft_wal.KEEP_INFO_LOGS, logs
    assert _option(path, "max_total_wal_size") == {str(raft_wal.MAX_WAL_BYTES)}


def test_the_stores_last_level_is_zstd(tmp_path):
    path = str(tmp_path / "storage")
    be = RocksBackend(path)
    be.write([("hist", b"h%06d" % i, b"\xc0") for i in range(2000)], sync=True)
    be.defragment()
    be.close()
    assert _option(path, "bottommost_compression") == {"kZSTD"}
