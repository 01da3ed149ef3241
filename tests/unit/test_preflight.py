"""The start-up check of a data dir (nodes/preflight.py) and its parts: the framing scan of
RocksDB's write-ahead files (actors/runtime/rocks_log.py), `wal.verify` and the offline
read of the store (actors/storage/offline.py). Damage is made by hand on real RocksDB
files: a log whose writer was killed (its records still in the write-ahead file, as after
a crash; a clean close would flush them into tables)."""
from __future__ import annotations

import glob
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from actors.consensus.raft import Entry, HardState
from actors.consensus.wal import WAL, WALDamaged, index_key, verify
from actors.runtime import rocks_log
from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MVCCStore
from actors.storage.mvcc.store import CF_META, META_APPLIED_INDEX
from actors.storage.offline import INSTALLED_INDEX_KEY, StoreUnreadable, mark_installed, read_indexes
from nodes.preflight import PreflightError, check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
U64 = struct.Struct(">Q")
N = 40  # entries in the crashed log


def _crashed_log(path: str, n: int = N, size: int = 100) -> None:
    """A consensus log of n entries (one synced batch each, as the actor writes them) whose
    writer died with kill -9: everything is still in RocksDB's write-ahead file."""
    code = textwrap.dedent(f"""
        import os, signal
        from actors.consensus.wal import WAL
        from actors.consensus.raft import Entry, HardState
        w = WAL({path!r})
        for i in range(1, {n} + 1):
            w.save(HardState(1, 1, i - 1), [Entry(1, i, 0, bytes([i % 251]) * {size})], sync=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == -9


@pytest.fixture(scope="module")
def crashed_base(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base") / "consensus")
    _crashed_log(path)
    return path


@pytest.fixture
def log_dir(crashed_base, tmp_path):
    """A fresh copy of the crashed log: <tmp>/node/consensus."""
    path = str(tmp_path / "node" / "consensus")
    shutil.copytree(crashed_base, path)
    return path


def wal_file(db_dir: str) -> str:
    files = rocks_log.log_files(db_dir)
    assert files and os.path.getsize(files[-1]) > 0
    return files[-1]


def records(path: str) -> list[int]:
    """Offsets of the physical records of a write-ahead file of one block."""
    data = open(path, "rb").read()
    assert len(data) < rocks_log.BLOCK_SIZE
    offsets, pos = [], 0
    while pos + 7 <= len(data):
        offsets.append(pos)
        pos += 7 + (data[pos + 4] | data[pos + 5] << 8)
    return offsets


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def make_store(data_dir: str, applied: int, installed: int | None = None, name: str = "storage") -> None:
    backend = RocksBackend(os.path.join(data_dir, name))
    try:
        backend.write([(CF_META, META_APPLIED_INDEX, U64.pack(applied))], sync=True)
        if installed is not None:
            backend.write([(CF_META, INSTALLED_INDEX_KEY, U64.pack(installed))], sync=True)
    finally:
        backend.close()


def make_wal(data_dir: str, last: int, commit: int | None = None, compact_at: int = 0) -> None:
    w = WAL(os.path.join(data_dir, "consensus"))
    try:
        w.save(HardState(2, 1, last if commit is None else commit), [Entry(2, i, 0, b"e") for i in range(1, last + 1)],
               sync=True)
        if compact_at:
            w.compact(compact_at, 2)
    finally:
        w.close()


# --- wal.verify on a crashed log ------------------------------------------------------------
def test_crashed_log_verifies(log_dir):
    summary = verify(log_dir)
    assert summary.last_index == N and summary.entries == N and summary.hard_state == HardState(1, 1, N - 1)


def test_no_log_is_none(tmp_path):
    assert verify(str(tmp_path / "consensus")) is None


@pytest.mark.parametrize("cut", [1, 3, 50])
def test_torn_last_record_is_dropped_not_refused(log_dir, cut):
    """A crash in the middle of an append leaves the last record cut short: dropped."""
    path = wal_file(log_dir)
    last = records(path)[-1]
    os.truncate(path, min(last + cut, os.path.getsize(path) - 1))
    assert verify(log_dir).last_index == N - 1


def test_torn_append_after_the_last_record_is_dropped(log_dir):
    """A crash while appending one more record: only its beginning is in the file."""
    path = wal_file(log_dir)
    data = open(path, "rb").read()
    last = records(path)[-1]
    with open(path, "ab") as f:
        f.write(data[last:last + 40])
    assert verify(log_dir).last_index == N


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_over_the_tail_are_refused(log_dir, seed):
    """The issue's damage: 512 random bytes over the end of the write-ahead file."""
    path = wal_file(log_dir)
    patch(path, os.path.getsize(path) - 512, random.Random(seed).randbytes(512))
    with pytest.raises(WALDamaged):
        verify(log_dir)


def test_checksum_failure_before_the_end_is_refused(log_dir):
    """Point-in-time recovery would silently stop here and drop the 20 entries after it."""
    path = wal_file(log_dir)
    offset = records(path)[N // 2] + 20  # inside a record's payload, about half-way
    patch(path, offset, bytes([open(path, "rb").read()[offset] ^ 0xFF]))
    with pytest.raises(WALDamaged, match="checksum mismatch"):
        verify(log_dir)


def test_zeroed_header_before_the_end_is_refused(log_dir):
    """RocksDB takes a zeroed header for preallocated space and silently skips the rest
    of the block."""
    path = wal_file(log_dir)
    patch(path, records(path)[N // 2], b"\0" * 7)
    with pytest.raises(WALDamaged, match="zeroed record header"):
        verify(log_dir)


def _verify_in_child(path, queue):
    try:
        verify(path)
        queue.put("ok")
    except WALDamaged as exc:
        queue.put(f"damaged: {exc}")


@pytest.mark.parametrize("which", ["first", "middle"])
def test_recycled_record_type_is_refused_without_hanging(log_dir, which):
    """A recycled-log type makes RocksDB 9.8 spin forever in the middle of a file (and drop
    the whole file as the first record): the scan refuses it before RocksDB reads it. Run
    in a child so that a regression fails the test instead of hanging it."""
    path = wal_file(log_dir)
    offset = records(path)[0 if which == "first" else N // 2]
    patch(path, offset + 6, bytes([7]))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_verify_in_child, args=(log_dir, queue))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("verify hung on a recycled-log record type")
    assert queue.get(timeout=5).startswith("damaged: ") and child.exitcode == 0


def test_damaged_table_file_is_refused(tmp_path):
    """Entries that reached a table file: a damaged block fails its checksum on reading."""
    make_wal(str(tmp_path), 200)  # a clean close flushes them into a table file
    db = os.path.join(str(tmp_path), "consensus")
    tables = sorted(glob.glob(os.path.join(db, "*.sst")), key=os.path.getsize)
    patch(tables[-1], 100, b"\xff" * 16)
    with pytest.raises(WALDamaged):
        verify(db)


def test_hole_in_the_log_is_refused(tmp_path):
    make_wal(str(tmp_path), 10)
    w = WAL(os.path.join(str(tmp_path), "consensus"))
    w._log.delete(index_key(5))
    w.close()
    with pytest.raises(WALDamaged, match="entry 5 is missing"):
        verify(os.path.join(str(tmp_path), "consensus"))


def test_commit_beyond_the_log_is_refused(tmp_path):
    make_wal(str(tmp_path), 10, commit=12)
    with pytest.raises(WALDamaged, match="entry 12 is committed but the log ends at 10"):
        verify(os.path.join(str(tmp_path), "consensus"))


# --- rocks_log framing rules on synthetic files -------------------------------------------
def _record(rtype: int, payload: bytes) -> bytes:
    return b"\x01\x02\x03\x04" + struct.pack("<H", len(payload)) + bytes([rtype]) + payload


def _file(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "000001.log")
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_scan_multi_block_file_with_padding(tmp_path):
    first = _record(2, b"a" * (rocks_log.BLOCK_SIZE - 7 - 3))  # 3 bytes of padding follow
    data = first + b"\0\0\0" + _record(4, b"b" * 100) + _record(1, b"c" * 10)
    assert rocks_log.scan_file(_file(tmp_path, data)) == len(data)


def test_scan_zero_tail_is_the_end(tmp_path):
    data = _record(1, b"x" * 50) + b"\0" * 4000  # preallocated space after the data
    rocks_log.scan_file(_file(tmp_path, data))


def test_scan_zero_header_then_data_is_damage(tmp_path):
    data = _record(1, b"x" * 50) + b"\0" * 7 + _record(1, b"y" * 50)
    with pytest.raises(rocks_log.DamagedLog, match="zeroed record header at offset 57"):
        rocks_log.scan_file(_file(tmp_path, data))


def test_scan_zero_block_then_data_in_a_later_block_is_damage(tmp_path):
    data = _record(1, b"x" * 50) + b"\0" * (rocks_log.BLOCK_SIZE - 57) + _record(1, b"y" * 50)
    with pytest.raises(rocks_log.DamagedLog):
        rocks_log.scan_file(_file(tmp_path, data))


@pytest.mark.parametrize("rtype", [5, 6, 7, 8, 11, 12, 200])
def test_scan_refuses_types_we_never_write(tmp_path, rtype):
    data = _record(1, b"x" * 50) + _record(rtype, b"y" * 50)
    with pytest.raises(rocks_log.DamagedLog, match=f"\\({rtype}\\) at offset 57"):
        rocks_log.scan_file(_file(tmp_path, data))


def test_scan_record_past_its_block_is_damage_unless_at_the_end(tmp_path):
    long = _record(1, b"x" * 100)[:7] + b"x" * 30  # says 100 bytes, 30 follow
    rocks_log.scan_file(_file(tmp_path, _record(1, b"a" * 10) + long))  # the end: a torn append
    data = _record(2, b"a" * (rocks_log.BLOCK_SIZE - 7 - 20)) + _record(3, b"b" * 40) + _record(1, b"c")
    with pytest.raises(rocks_log.DamagedLog, match="runs past the end of its block"):
        rocks_log.scan_file(_file(tmp_path, data))


# --- the store read offline ------------------------------------------------------------
def test_store_indexes(tmp_path):
    assert read_indexes(str(tmp_path)) is None
    make_store(str(tmp_path), 17)
    ix = read_indexes(str(tmp_path))
    assert (ix.applied_index, ix.installed_index) == (17, 0)


def test_store_read_is_the_old_one_when_an_install_was_cut(tmp_path):
    """Cut between the install's renames: the actor renames storage.old back; so do we."""
    make_store(str(tmp_path), 9, name="storage.old")
    assert read_indexes(str(tmp_path)).applied_index == 9


def test_mark_installed_records_the_snapshot_index(tmp_path):
    make_store(str(tmp_path), 25)
    backend = RocksBackend(os.path.join(str(tmp_path), "storage"))
    try:
        mark_installed(MVCCStore(backend))
    finally:
        backend.close()
    assert read_indexes(str(tmp_path)).installed_index == 25


def test_unreadable_store(tmp_path):
    os.makedirs(tmp_path / "storage")
    (tmp_path / "storage" / "CURRENT").write_text("MANIFEST-000099\n")
    with pytest.raises(StoreUnreadable):
        read_indexes(str(tmp_path))


# --- preflight.check --------------------------------------------------------------------------
def refused(data_dir: str, match: str) -> str:
    with pytest.raises(PreflightError) as info:
        check(data_dir, 0xABC)
    text = str(info.value)
    assert match in text, text
    assert "\n" not in text
    assert f"data dir {data_dir} cannot be trusted" in text
    assert "qkvctl member remove abc" in text and "--initial-cluster-state existing" in text
    assert "qkvutl snapshot restore" in text
    return text


def test_new_data_dir_passes(tmp_path):
    found = check(str(tmp_path))
    assert (found.last_index, found.applied_index) == (0, 0)


def test_consistent_data_dir_passes(tmp_path):
    make_wal(str(tmp_path), 10, commit=9)
    make_store(str(tmp_path), 9)
    found = check(str(tmp_path))
    assert (found.last_index, found.commit, found.applied_index) == (10, 9, 9)


def test_store_restored_from_a_snapshot_file_passes(tmp_path):
    """`qkvutl snapshot restore`: a store at applied index 0 and no log yet."""
    make_store(str(tmp_path), 0)
    check(str(tmp_path))


def test_store_ahead_of_the_log_is_refused(tmp_path):
    make_wal(str(tmp_path), 7)
    make_store(str(tmp_path), 10)
    refused(str(tmp_path), "the store (storage/) has applied entry 10 but the consensus log (consensus/) ends at entry 7")


def test_store_without_a_log_is_refused(tmp_path):
    make_store(str(tmp_path), 10)
    refused(str(tmp_path), "has applied entry 10 but there is no consensus log")


def test_store_at_its_installed_snapshot_may_be_ahead_of_the_log(tmp_path):
    """After a snapshot install the log catches up from the leader; applying past the
    snapshot needs the log, so one more applied entry is damage again."""
    make_wal(str(tmp_path), 5)
    make_store(str(tmp_path), 10, installed=10)
    assert check(str(tmp_path)).installed_index == 10
    make_store(str(tmp_path), 11)
    refused(str(tmp_path), "has applied entry 11")


def test_store_behind_the_compaction_point_is_refused(tmp_path):
    make_wal(str(tmp_path), 10, compact_at=8)
    make_store(str(tmp_path), 5)
    refused(str(tmp_path), "was compacted at entry 8")


def test_empty_store_with_a_compacted_log_is_refused(tmp_path):
    make_wal(str(tmp_path), 10, compact_at=8)
    refused(str(tmp_path), "the store has applied nothing but the consensus log (consensus/) was compacted at entry 8")


def test_damaged_log_is_refused_and_left_as_it_was(log_dir):
    data_dir = os.path.dirname(log_dir)
    path = wal_file(log_dir)
    patch(path, os.path.getsize(path) - 512, random.Random(1).randbytes(512))
    before = {f: open(os.path.join(log_dir, f), "rb").read() for f in os.listdir(log_dir) if f != "LOG"}
    refused(data_dir, "the consensus log (consensus/) is damaged: consensus/0")
    after = {f: open(os.path.join(log_dir, f), "rb").read() for f in os.listdir(log_dir) if f != "LOG"}
    assert before == after
