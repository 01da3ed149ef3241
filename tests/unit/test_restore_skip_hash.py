"""`snapshot restore --skip-hash-check` (etcdctl's flag: "required if copied from data
directory"): a file whose hash does not match is restored only with it; a store copied
from a stopped member's data dir (its `storage` dir, or the data dir itself) has no hash
and is refused without it with etcdctl's message, restored with it. Through qkvutl and
through `qkvctl snapshot restore` (which runs qkvutl's, its report on stderr)."""
from __future__ import annotations

import os
import shutil

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from actors.storage.snapshot_file import SnapshotMeta, pack_checkpoint
from nodes.utl import run
from protocol.client.cli import run as run_ctl
from protocol.requests import Limits, normalize_request

CLUSTER = ["--name", "r", "--initial-cluster", "r=tcp://127.0.0.1:7380"]


@pytest.fixture
def call(capsys):
    def do(*args: str, main=run):
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return rc, out.out, out.err
    return do


@pytest.fixture
def store_dir(tmp_path):
    """A stopped member's data dir (`member/storage`) with 20 keys at revision 21, and a
    snapshot file of it."""
    data = tmp_path / "member"
    backend = RocksBackend(str(data / "storage"))
    store = MVCCStore(backend)
    store.apply([(i + 1, normalize_request({"op": "put", "key": f"k{i}", "value": "v"}, Limits()))
                 for i in range(20)])
    backend.checkpoint(str(tmp_path / "ckpt"))
    meta = SnapshotMeta(revision=store.current_revision, compact_revision=0, applied_index=20,
                        key_count=store.key_count(), cluster_id=1, member_id=2, created=0.0, version="0.1.0")
    backend.close()
    pack_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "s.snap"), meta)
    return data


def restored(data_dir) -> tuple[int, int, int]:
    backend = RocksBackend(os.path.join(data_dir, "storage"))
    try:
        st = MVCCStore(backend)
        return st.current_revision, st.key_count(), st.applied_index
    finally:
        backend.close()


def test_a_file_with_a_bad_hash_needs_the_flag(tmp_path, store_dir, call):
    snap = tmp_path / "s.snap"
    raw = bytearray(snap.read_bytes())
    raw[-1] ^= 0x01  # the stored SHA-256 only: the content is intact
    snap.write_bytes(bytes(raw))
    out = tmp_path / "r1"
    rc, _, err = call("snapshot", "restore", str(snap), *CLUSTER, "--data-dir", str(out))
    assert rc == 1 and "corrupted" in err and not out.exists()
    rc, stdout, err = call("snapshot", "restore", str(snap), *CLUSTER, "--data-dir", str(out), "--skip-hash-check")
    assert rc == 0, err
    assert stdout.startswith(f"Restored snapshot {snap} (revision 21, 20 keys)")
    assert restored(out) == (21, 20, 0)
    assert oct(os.stat(out).st_mode & 0o777) == "0o700"


def test_a_store_copied_from_a_data_dir(tmp_path, store_dir, call):
    for source in (store_dir / "storage", store_dir):  # the store dir, or the data dir holding it
        out = tmp_path / f"from-{source.name}"
        rc, stdout, err = call("snapshot", "restore", str(source), *CLUSTER, "--data-dir", str(out))
        assert (rc, stdout) == (1, "")
        assert err.startswith("Error: snapshot missing hash but --skip-hash-check=false"), err
        assert not out.exists()
        rc, stdout, err = call("snapshot", "restore", str(source), *CLUSTER, "--data-dir", str(out),
                               "--skip-hash-check=true")
        assert rc == 0, err
        # (before this test opens the store itself: RocksDB makes its files with our umask)
        modes = {oct(os.stat(os.path.join(r, f)).st_mode & 0o777) for r, _, fs in os.walk(out / "storage") for f in fs}
        assert modes == {"0o600"}, modes
        assert os.path.exists(out / "member.json")
        assert restored(out) == (21, 20, 0)
    assert restored(store_dir) == (21, 20, 20)  # the source is untouched


def test_a_directory_without_a_store_is_refused(tmp_path, call):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = call("snapshot", "restore", str(empty), *CLUSTER, "--data-dir", str(tmp_path / "o"),
                      "--skip-hash-check")
    assert rc == 1 and "holds no store" in err


def test_qkvctl_snapshot_restore_runs_it(tmp_path, store_dir, call):
    """etcdctl 3.4 restores itself and logs on stderr: qkvctl runs qkvutl's restore, its
    report on stderr, nothing on stdout."""
    out = tmp_path / "via-ctl"
    rc, stdout, err = call("snapshot", "restore", str(store_dir), *CLUSTER, "--data-dir", str(out),
                           "--skip-hash-check", main=run_ctl)
    assert (rc, stdout) == (0, ""), err
    assert err.startswith(f"Restored snapshot {store_dir} (revision 21, 20 keys)")
    assert restored(out) == (21, 20, 0)
    rc, stdout, err = call("snapshot", "restore", str(tmp_path / "s.snap"), *CLUSTER, "--data-dir", str(out),
                           main=run_ctl)
    assert (rc, stdout) == (1, "") and f'data-dir "{out}" exists' in err
    shutil.rmtree(out)
