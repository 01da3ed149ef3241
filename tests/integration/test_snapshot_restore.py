"""Disaster recovery: `qkvctl snapshot save` from a live 3-node cluster under a write
load, then `qkvutl snapshot restore` into a brand-new 3-node cluster (`snapshot status` and the
refusal of a corrupted file on the way). Every node is stopped, pass or fail."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from load import Writer, all_kvs

from nodeproc import Cluster, wait_for
from protocol.client import Client

ROOT = str(Path(__file__).resolve().parents[2])


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protocol.client.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def utl(*args: str) -> subprocess.CompletedProcess:
    """qkvutl (nodes/utl.py), the offline tools, as `python -m` (no reinstall needed)."""
    return subprocess.run([sys.executable, "-m", "nodes.utl", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_save_under_load_restore_new_cluster(tmp_path):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    snap = str(tmp_path / "backup.snap")
    old = Cluster(old_dir, 3)
    for n in old.nodes:
        n.env["QKV_SNAPSHOT_IDLE_S"] = "1"  # abandoned saves go quickly
    new = Cluster(new_dir, 3, token="restored-cluster")
    try:
        old.start()
        leader = old.leader()
        follower = next(n for n in old.nodes if n is not leader)
        with Client([n.client_url for n in old.nodes]) as c:
            lease = c.lease_grant(600)
            c.put("/leased", "kept", lease=lease.id)
            old_cluster_id = c.status().header.cluster_id
        writer = Writer(follower.client_url)  # the member being saved keeps serving
        writer.start()
        try:
            wait_for(lambda: len(writer.acked) > 300, 30, "writes before the save")
            acked_before = dict(writer.acked)  # acknowledged before the save began
            saved = ctl("--endpoints", follower.client_url, "snapshot", "save", snap)
            seen = len(writer.acked)
            wait_for(lambda: len(writer.acked) > seen + 50, 20, "the load to go on after the save")
        finally:
            writer.stop()
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout == f"Snapshot saved at {snap}\n"
        assert saved.stderr == ""  # no progress bar without a terminal
        assert not os.path.exists(snap + ".part")

        # A save whose client goes away: its checkpoint is removed after the idle deadline.
        reply = follower.request({"op": "snapshot", "max_bytes": 4096, "serializable": True})
        assert reply and reply["ok"] and not reply["done"] and len(reply["data"]) == 4096, reply
        saves = Path(follower.data_dir) / "snapsave"
        assert any(saves.iterdir())
        wait_for(lambda: not any(saves.iterdir()), 15, "the abandoned save to be cleaned up")
        gone = follower.request({"op": "snapshot", "snapshot_id": reply["snapshot_id"], "offset": 4096})
        assert gone and gone["error"]["code"] == "invalid_argument", gone

        status = ctl("snapshot", "status", snap, "-w", "json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["revision"] >= max(acked_before.values())
        assert st["totalKey"] >= len(acked_before) + 1 and st["totalSize"] == os.path.getsize(snap)
    finally:
        old.discard()
    shutil.rmtree(old_dir)  # the whole cluster is gone

    initial = ",".join(f"{n.name}={n.peer_url}" for n in new.nodes)
    for n in new.nodes:
        r = utl("snapshot", "restore", snap, "--name", n.name, "--initial-cluster", initial,
                "--initial-cluster-token", "restored-cluster", "--initial-advertise-peer-urls", n.peer_url,
                "--data-dir", n.data_dir)
        assert r.returncode == 0, r.stderr
        assert f"(revision {st['revision']}," in r.stdout and f"member {n.name} ({n.member_id:x})" in r.stdout
    try:
        new.start()
        lead = new.leader()
        kvs = {kv["key"]: kv for kv in all_kvs(lead.request, b"load/")}
        missing = [k for k in acked_before if k not in kvs]
        assert not missing, f"{len(missing)} writes acknowledged before the save are missing"
        wrong = [k for k, rev in acked_before.items() if kvs[k]["mod_revision"] != rev or kvs[k]["value"] != k]
        assert not wrong, f"{len(wrong)} restored keys differ, e.g. {wrong[:3]}"
        assert max(kv["mod_revision"] for kv in kvs.values()) <= st["revision"]
        with Client([n.client_url for n in new.nodes]) as c:
            put = c.put("/after-restore", "new")
            assert put.header.revision > st["revision"]
            assert put.header.cluster_id != old_cluster_id
            assert lease.id in [item.id for item in c.lease_leases().leases]  # leases are kept
            assert c.get("/leased").kvs[0].lease == lease.id
        assert len(new.converged_hashes()) == 1
    finally:
        new.discard()


def test_status_formats_and_corrupted_file_refused(tmp_path, capsys):
    """qkvctl and qkvutl in-process (fast): etcdctl's status shapes (from both); a flipped
    byte, a truncated file and a non-empty data dir refused by `qkvutl snapshot restore`
    with a clear error and exit code 1, also through `qkvctl snapshot restore` (it runs qkvutl's)."""
    from nodes.utl import run as run_utl
    from protocol.client.cli import run

    def in_process(main, args: tuple[str, ...]) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return in_process(run, args)

    def utl(*args: str) -> subprocess.CompletedProcess:
        return in_process(run_utl, args)

    from actors.storage.backend import RocksBackend
    from actors.storage.mvcc import MVCCStore
    from actors.storage.snapshot_file import SnapshotMeta, pack_checkpoint, verify, short_hash
    from protocol.requests import Limits, normalize_request

    backend = RocksBackend(str(tmp_path / "db"))
    store = MVCCStore(backend)
    store.apply([(i + 1, normalize_request({"op": "put", "key": f"k{i}", "value": "v"}, Limits()))
                 for i in range(20)])
    backend.checkpoint(str(tmp_path / "ckpt"))
    meta = SnapshotMeta(revision=store.current_revision, compact_revision=0, applied_index=20,
                        key_count=store.key_count(), cluster_id=1, member_id=2, created=0.0, version="0.1.0")
    backend.close()
    snap = str(tmp_path / "s.snap")
    size = pack_checkpoint(str(tmp_path / "ckpt"), snap, meta)
    h = f"{short_hash(verify(snap)[1]):x}"
    from protocol.client.output import humanize_bytes

    simple = ctl("snapshot", "status", snap)
    assert simple.returncode == 0 and simple.stdout == f"{h}, 21, 20, {humanize_bytes(size)}\n"
    table = ctl("snapshot", "status", snap, "-w", "table").stdout.splitlines()
    # (the hash is etcdctl's %x of 32 bits: 7 digits or fewer one time in 16, so widths vary)
    assert [c.strip() for c in table[1].split("|")[1:-1]] == ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    assert [c.strip() for c in table[3].split("|")[1:-1]] == [h, "21", "20", humanize_bytes(size)]
    assert json.loads(ctl("snapshot", "status", snap, "-w", "json").stdout) == {
        "hash": int(h, 16), "revision": 21, "totalKey": 20, "totalSize": size}
    assert ctl("snapshot", "status", snap, "-w", "fields").stdout.splitlines()[1] == '"Revision" : 21'
    for fmt in ("simple", "table", "json", "fields"):  # qkvutl prints the same
        assert utl("snapshot", "status", snap, "-w", fmt).stdout == ctl("snapshot", "status", snap, "-w", fmt).stdout

    raw = bytearray(open(snap, "rb").read())
    raw[len(raw) // 2] ^= 0x40
    open(snap, "wb").write(bytes(raw))
    bad = ctl("snapshot", "status", snap)
    assert bad.returncode == 1 and "corrupted" in bad.stderr and bad.stdout == ""
    bad = utl("snapshot", "status", snap)
    assert bad.returncode == 1 and "corrupted" in bad.stderr and bad.stdout == ""
    data_dir = tmp_path / "r.qkv"
    moved = ctl("snapshot", "restore", snap, "--name", "r", "--data-dir", str(data_dir))
    assert (moved.returncode, moved.stdout) == (1, "") and "corrupted" in moved.stderr, moved  # qkvutl's refusal
    bad = utl("snapshot", "restore", snap, "--name", "r", "--initial-cluster", "r=tcp://127.0.0.1:7380",
              "--data-dir", str(data_dir))
    assert bad.returncode == 1 and "corrupted" in bad.stderr, bad.stderr
    assert not data_dir.exists()
    open(snap, "wb").write(bytes(raw[:-100]))
    bad = utl("snapshot", "restore", snap, "--name", "r", "--data-dir", str(data_dir))
    assert bad.returncode == 1 and "truncated" in bad.stderr, bad.stderr
    data_dir.mkdir()
    (data_dir / "x").write_text("")
    bad = utl("snapshot", "restore", snap, "--name", "r", "--data-dir", str(data_dir))
    assert bad.returncode == 1 and "exists" in bad.stderr, bad.stderr
    assert ctl("--endpoints", "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "snapshot", "save", snap).returncode == 128
