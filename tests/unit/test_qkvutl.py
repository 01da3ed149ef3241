"""qkvutl (nodes/utl.py), the offline tools on a stopped member's files, in-process; and
the pointers qkvctl gives to them. (Restore and status on real snapshot files:
tests/integration/test_snapshot_restore.py.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from nodes.utl import defragment, run
from protocol.client.cli import run as run_ctl
from protocol.requests import Limits, normalize_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def utl(capsys):
    def call(*argv: str, main=run) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


def _member_store(data_dir: str, puts: int = 300) -> None:
    """A member's store (`<data-dir>/storage`) with every key overwritten and deleted, then
    compacted: garbage that only a full compaction drops."""
    backend = RocksBackend(os.path.join(data_dir, "storage"))
    store = MVCCStore(backend)
    req = [(i + 1, normalize_request({"op": "put", "key": f"k{i % 30}", "value": os.urandom(1000).hex()},
                                     Limits())) for i in range(puts)]
    req.append((puts + 1, normalize_request({"op": "delete_range", "key": b"k", "range_end": b"l"}, Limits())))
    req.append((puts + 2, normalize_request({"op": "compact", "revision": puts + 1}, Limits())))
    store.apply(req)
    while store.compaction_pending:  # the physical part, as the storage actor runs it
        store.compact_step(1000)
    backend.sync()
    backend.close()


def test_defrag_data_dir_shrinks_the_store_and_keeps_it_readable(tmp_path, utl):
    data_dir = str(tmp_path / "m.qkv")
    _member_store(data_dir)
    res = defragment(data_dir)
    assert res.after_bytes < res.before_bytes, res  # the deleted values dropped
    rc, out, err = utl("defrag", "--data-dir", data_dir)  # again, through the command
    assert (rc, err) == (0, ""), err
    assert out.startswith(f"Finished defragmenting data dir {data_dir}: store ")
    backend = RocksBackend(os.path.join(data_dir, "storage"))
    try:
        store = MVCCStore(backend)
        assert (store.current_revision, store.compact_revision) == (302, 301)
        assert store.key_count() == 0 and store.applied_index == 302
    finally:
        backend.close()


def test_defrag_refuses_a_store_in_use_and_a_dir_without_one(tmp_path, utl):
    data_dir = str(tmp_path / "m.qkv")
    _member_store(data_dir, puts=5)
    running = RocksBackend(os.path.join(data_dir, "storage"))  # a member holding its store
    try:
        rc, out, err = utl("defrag", "--data-dir", data_dir)
        assert (rc, out) == (1, "") and "is the member still running? stop it first" in err, err
    finally:
        running.close()
    assert defragment(data_dir).store == os.path.join(data_dir, "storage")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert utl("defrag", "--data-dir", str(empty))[2] == f"Error: {empty} holds no member store\n"
    assert utl("defrag")[0] == 128
    assert utl("defrag", "--data-dir", str(tmp_path / "missing"))[0] == 128


def test_qkvctl_points_to_qkvutl(tmp_path, utl):
    # qkvctl snapshot restore runs qkvutl's (etcdctl 3.4 restores itself); its report on stderr
    rc, out, err = utl("snapshot", "restore", str(tmp_path / "f.snap"), "--name", "x", "--data-dir",
                       str(tmp_path / "d"), main=run_ctl)
    assert (rc, out) == (1, "")
    assert err.startswith("Error: cannot read ") and "f.snap" in err, err
    rc, out, err = utl("defrag", "--data-dir", str(tmp_path), main=run_ctl)  # runs qkvutl's defrag
    assert (rc, out) == (1, "") and err == f"Failed to defragment quorumkv data[{tmp_path}] ({tmp_path} holds no member store)\n"
    assert not os.listdir(tmp_path)


def test_usage_errors_and_version(utl):
    assert utl("snapshot", "status")[:3:2] == (128, "Error: snapshot status requires exactly one argument\n")
    assert utl("snapshot", "restore")[:3:2] == (128, "Error: snapshot restore requires exactly one argument\n")
    assert utl("-w", "yaml", "version")[0] == 4
    rc, out, _ = utl("version")
    assert rc == 0 and out.startswith("qkvutl version: ")
    rc, out, _ = utl()
    assert rc == 0 and "snapshot" in out and "defrag" in out


def test_python_m_runs_it():
    """`python -m nodes.utl` (what the tests use: the console script needs a reinstall)."""
    proc = subprocess.run([sys.executable, "-m", "nodes.utl", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == 0 and "Offline tools" in proc.stdout, proc.stderr
