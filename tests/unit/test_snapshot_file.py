"""The snapshot file format (actors/storage/snapshot_file.py), the storage actor's saves
in progress, and the offline restore (nodes/restore.py)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from nodes.restore import RestoreError, restore, restore_config
from actors.storage.snapshot_file import (
    HASH_LEN, BadOffset, PackStream, SnapshotFileError, SnapshotMeta, SnapshotSaves, TooManySaves,
    UnknownSave, checkpoint_files, pack_checkpoint, read_meta, short_hash, unpack, verify,
)
from protocol.requests import Limits, normalize_request


def _put(key: bytes, value: bytes, lease: int = 0) -> dict:
    return normalize_request({"op": "put", "key": key, "value": value, "lease": lease}, Limits())


def _meta(store: MVCCStore) -> SnapshotMeta:
    return SnapshotMeta(revision=store.current_revision, compact_revision=store.compact_revision,
                        applied_index=store.applied_index, key_count=store.key_count(), cluster_id=7,
                        member_id=9, created=1700000000.5, version="0.1.0")


@pytest.fixture
def db(tmp_path):
    """A store with 50 keys, one on a lease, compacted at revision 5; its checkpoint dir."""
    backend = RocksBackend(str(tmp_path / "db"))
    store = MVCCStore(backend)
    entries = [(1, normalize_request({"op": "lease_grant", "ttl": 60, "ID": 77}, Limits()))]
    entries += [(i + 2, _put(b"k%03d" % i, b"v%d" % i * 50, lease=77 if i == 0 else 0)) for i in range(50)]
    entries.append((52, normalize_request({"op": "compact", "revision": 5}, Limits())))
    store.apply(entries)
    meta = _meta(store)
    ckpt = str(tmp_path / "ckpt")
    backend.checkpoint(ckpt)
    backend.close()
    return ckpt, meta


def test_pack_verify_roundtrip(tmp_path, db):
    ckpt, meta = db
    path = str(tmp_path / "s.snap")
    size = pack_checkpoint(ckpt, path, meta)
    assert os.path.getsize(path) == size
    got, digest = verify(path)
    assert got.revision == meta.revision == 51 and got.compact_revision == 5 and got.key_count == 50
    assert (got.cluster_id, got.member_id, got.created, got.applied_index) == (7, 9, 1700000000.5, 52)
    assert got.files == checkpoint_files(ckpt)
    raw = open(path, "rb").read()
    assert raw[-HASH_LEN:] == hashlib.sha256(raw[:-HASH_LEN]).digest() == digest
    assert short_hash(digest) == int.from_bytes(digest[:4], "big")
    out = str(tmp_path / "out")
    unpack(path, out)
    for name, fsize in got.files:
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(ckpt, name), "rb").read()
        assert fsize == os.path.getsize(os.path.join(out, name))
    backend = RocksBackend(out)
    try:
        store = MVCCStore(backend)
        assert store.current_revision == 51 and store.key_count() == 50
        assert store.range(normalize_request({"op": "range", "key": b"k049"}, Limits()))["kvs"][0]["value"] == b"v49" * 50
    finally:
        backend.close()


def test_stream_chunks_any_size_give_the_same_file(tmp_path, db):
    ckpt, meta = db
    path = str(tmp_path / "s.snap")
    pack_checkpoint(ckpt, path, meta)
    whole = open(path, "rb").read()
    for n in (1, 7, 4096, 10**7):
        stream = PackStream(ckpt, meta)
        parts = []
        while chunk := stream.read(n):
            assert len(chunk) <= n
            parts.append(chunk)
        assert stream.done and stream.total_size == len(whole)
        assert b"".join(parts) == whole


@pytest.mark.parametrize("cut", [1, 10, HASH_LEN, 1000])
def test_truncated_file_refused(tmp_path, db, cut):
    ckpt, meta = db
    path = str(tmp_path / "s.snap")
    pack_checkpoint(ckpt, path, meta)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - cut)
    with pytest.raises(SnapshotFileError, match="truncated"):
        verify(path)
    with pytest.raises(SnapshotFileError):
        unpack(path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_flipped_byte_and_garbage_refused(tmp_path, db):
    ckpt, meta = db
    path = str(tmp_path / "s.snap")
    pack_checkpoint(ckpt, path, meta)
    good = open(path, "rb").read()
    _, offset = read_meta(path)
    for pos in (offset + 3, len(good) - 1, len(good) // 2):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        open(path, "wb").write(bytes(bad))
        with pytest.raises(SnapshotFileError, match="corrupted"):
            verify(path)
    open(path, "wb").write(good + b"x")
    with pytest.raises(SnapshotFileError, match="trailing"):
        verify(path)
    open(path, "wb").write(b"not a snapshot at all")
    with pytest.raises(SnapshotFileError, match="magic"):
        verify(path)
    open(path, "wb").write(good[:8] + b"\xff\xff\xff\xff" + good[12:])
    with pytest.raises(SnapshotFileError):
        verify(path)


def test_unsafe_file_names_refused():
    wire = _meta_wire(files=[["../evil", 1]])
    with pytest.raises(SnapshotFileError, match="bad file entry"):
        SnapshotMeta.from_wire(wire)
    with pytest.raises(SnapshotFileError, match="format"):
        SnapshotMeta.from_wire({**_meta_wire(), "format": 2})


def _meta_wire(**over):
    m = SnapshotMeta(revision=1, compact_revision=0, applied_index=1, key_count=0, cluster_id=1,
                     member_id=1, created=0.0, version="x")
    return {**m.to_wire(), **over}


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_saves_serve_retry_finish_and_expire(tmp_path, db):
    ckpt, meta = db
    backend = RocksBackend(str(tmp_path / "live"))
    clock = _Clock()
    root = str(tmp_path / "snapsave")
    saves = SnapshotSaves(root, idle_s=5.0, max_saves=2, clock=clock)
    try:
        save = saves.start(backend.checkpoint, _meta(MVCCStore(backend)))
        assert os.path.isdir(save.directory)
        _, off, first, done = saves.chunk(save.snapshot_id, 0, 100)
        assert (off, len(first), done) == (0, 100, False)
        assert saves.chunk(save.snapshot_id, 0, 100)[2] == first  # a lost reply, asked again
        with pytest.raises(BadOffset):
            saves.chunk(save.snapshot_id, 50, 100)
        data, pos = [first], 100
        while True:
            _, off, chunk, done = saves.chunk(save.snapshot_id, pos, 4096)
            data.append(chunk)
            pos += len(chunk)
            if done:
                break
        assert pos == save.stream.total_size and not os.path.exists(save.directory)
        out = tmp_path / "got.snap"
        out.write_bytes(b"".join(data))
        verify(str(out))
        # abandoned saves: dropped with their checkpoint after idle_s without a request
        s2 = saves.start(backend.checkpoint, _meta(MVCCStore(backend)))
        saves.chunk(s2.snapshot_id, 0, 10)
        with pytest.raises(TooManySaves):
            saves.start(backend.checkpoint, _meta(MVCCStore(backend)))
        clock.t += 4.0
        assert saves.expire() == []
        clock.t += 5.0
        assert sorted(saves.expire()) == sorted([save.snapshot_id, s2.snapshot_id])
        assert not os.path.exists(s2.directory)
        with pytest.raises(UnknownSave):
            saves.chunk(s2.snapshot_id, 10, 10)
    finally:
        saves.close()
        backend.close()
    assert not os.path.exists(root)


def test_restore_builds_a_data_dir(tmp_path, db):
    ckpt, meta = db
    path = str(tmp_path / "s.snap")
    pack_checkpoint(ckpt, path, meta)
    initial = "a=tcp://127.0.0.1:1,b=tcp://127.0.0.1:2"
    cfg = restore_config("a", initial, "tok", "tcp://127.0.0.1:1", str(tmp_path / "a.qkv"))
    res = restore(path, cfg)
    assert res.meta.revision == 51 and res.member_id == cfg.member_id
    member = json.load(open(tmp_path / "a.qkv" / "member.json"))
    assert member["name"] == "a" and member["cluster_id"] == cfg.cluster_id
    assert sorted(os.listdir(tmp_path / "a.qkv")) == ["member.json", "storage"]
    backend = RocksBackend(str(tmp_path / "a.qkv" / "storage"))
    try:
        store = MVCCStore(backend)
        assert (store.applied_index, store.current_revision, store.compact_revision) == (0, 51, 5)
        assert store.leases() == [(77, 60, 0)]
        assert int.from_bytes(store.get_meta("cluster_id"), "big") == cfg.cluster_id
    finally:
        backend.close()
    # refusals: non-empty dir, corrupt file (nothing left behind), bad flags
    with pytest.raises(RestoreError, match="exists"):
        restore(path, cfg)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    cfg_b = restore_config("b", initial, "tok", None, str(tmp_path / "b.qkv"))
    with pytest.raises(RestoreError, match="corrupted"):
        restore(path, cfg_b)
    assert not os.path.exists(tmp_path / "b.qkv")
    with pytest.raises(RestoreError, match="no member named"):
        restore_config("c", initial, "tok", None, str(tmp_path / "c.qkv"))


def test_progress_bar():
    import io

    from protocol.client.snapshot import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out, width=10)
    bar(0, 2_000_000)
    bar(1_000_000, 2_000_000)  # within 0.1 s of the last draw: skipped
    bar(2_000_000, 2_000_000)  # the end is always drawn
    lines = out.getvalue().split("\r")
    assert lines[1].startswith("[..........]   0.0% 0 B / 2.0 MB")
    assert lines[2].startswith("[##########] 100.0% 2.0 MB / 2.0 MB") and lines[2].endswith("\n")


def test_snapshot_requests_validated():
    from protocol.errors import InvalidArgument

    start = normalize_request({"op": "snapshot"}, Limits())
    assert start == {"op": "snapshot", "snapshot_id": 0, "offset": 0, "max_bytes": 0, "serializable": False}
    chunk = normalize_request({"op": "snapshot", "snapshot_id": 5, "offset": 10, "max_bytes": 99}, Limits())
    assert chunk["serializable"] is True  # chunks are served locally, never through a read index
    for bad in ({"offset": 3}, {"snapshot_id": -1}, {"max_bytes": "x"}, {"path": "/etc"}, {"serializable": 1}):
        with pytest.raises(InvalidArgument):
            normalize_request({"op": "snapshot", **bad}, Limits())
