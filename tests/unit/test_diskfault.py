"""A full disk as one actor sees it (actors/runtime/diskfault.py): which errors are the
disk's, the retry backoff, and which failures are worth a log line."""
import errno

from actors.runtime import diskfault as D
from actors.runtime.diskfault import DiskFault, disk_error_kind

ENOSPC_ROCKS = Exception("IO error: No space left on device: While appending to file: /d/storage/000004.log: "
                         "No space left on device")


def test_rocksdb_no_space_is_no_space():
    assert disk_error_kind(ENOSPC_ROCKS) == D.NO_SPACE
    assert disk_error_kind(Exception("IO error: Disk quota exceeded: While appending")) == D.NO_SPACE


def test_rocksdb_other_io_errors_are_io_errors():
    # What every later write of a handle says after its first failure.
    assert disk_error_kind(Exception("IO error: Writer has previous error.")) == D.IO_ERROR
    assert disk_error_kind(Exception("IO error: Input/output error")) == D.IO_ERROR


def test_os_errors_by_errno():
    assert disk_error_kind(OSError(errno.ENOSPC, "No space left on device")) == D.NO_SPACE
    assert disk_error_kind(OSError(errno.EDQUOT, "Disk quota exceeded")) == D.NO_SPACE
    assert disk_error_kind(OSError(errno.EIO, "Input/output error")) == D.IO_ERROR
    assert disk_error_kind(OSError(errno.ENOENT, "gone")) is None


def test_anything_else_is_not_the_disk():
    assert disk_error_kind(Exception("Corruption: block checksum mismatch")) is None
    assert disk_error_kind(Exception("Not implemented: Not supported operation in read only mode.")) is None
    assert disk_error_kind(AssertionError("IO error: looks like one")) is None  # only rocksdict's plain Exception
    assert disk_error_kind(ValueError("IO error")) is None


def test_episode_logs_once_and_backs_off():
    f = DiskFault("/d/storage")
    assert not f.failed and f.wire(0.0) is None
    info = f.fail(10.0, ENOSPC_ROCKS, D.NO_SPACE)
    assert info is not None and info["path"] == "/d/storage" and info["kind"] == D.NO_SPACE
    assert f.failed and f.wire(11.0) == {"state": D.NO_SPACE, "path": "/d/storage", "error": str(ENOSPC_ROCKS),
                                        "since_s": 1.0}
    assert not f.due(10.0) and f.due(10.0 + D.RETRY_MIN_S)
    delays = []
    now = 10.0
    for _ in range(8):
        assert f.fail(now, Exception("IO error: Writer has previous error."), D.IO_ERROR) is None  # not logged
        delays.append(round(f.next_try - now, 3))
    assert delays == sorted(delays) and delays[-1] == D.RETRY_MAX_S and delays[0] == 2 * D.RETRY_MIN_S
    assert f.kind == D.NO_SPACE  # the episode keeps the kind it started with


def test_no_room_looks_again_without_growing_the_backoff():
    f = DiskFault("/d")
    f.fail(0.0, ENOSPC_ROCKS, D.NO_SPACE)
    f.not_yet(5.0)
    assert f.next_try == 5.0 + D.RETRY_MIN_S and f.attempts == 0


def test_recovery_is_logged_when_the_episode_was():
    f = DiskFault("/d")
    f.fail(0.0, ENOSPC_ROCKS, D.NO_SPACE)
    f.fail(1.0, ENOSPC_ROCKS, D.NO_SPACE)
    info = f.recover(3.5)
    assert info == {"path": "/d", "down_s": 3.5, "retries": 2}
    assert not f.failed and f.wire(4.0) is None


def test_flapping_episodes_are_counted_not_logged():
    f = DiskFault("/d")
    assert f.fail(0.0, ENOSPC_ROCKS, D.NO_SPACE) is not None
    assert f.recover(1.0) is not None
    assert f.fail(2.0, ENOSPC_ROCKS, D.NO_SPACE) is None  # within LOG_EVERY_S of the logged one
    assert f.recover(3.0) is None  # its end is not logged either
    assert f.fail(4.0, ENOSPC_ROCKS, D.NO_SPACE) is None
    f.recover(5.0)
    info = f.fail(D.LOG_EVERY_S + 1.0, ENOSPC_ROCKS, D.NO_SPACE)
    assert info is not None and info["unlogged_before"] == 2
    assert f.episodes == 4


def test_enough_room_counts_the_wal(tmp_path):
    assert D.enough_room(str(tmp_path))  # an empty dir on a normal filesystem
    free = D.free_bytes(str(tmp_path))
    # A WAL file bigger than the free space (sparse: it takes no room itself).
    with open(tmp_path / "000004.log", "wb") as f:
        f.truncate(free + 10 * 1024 * 1024)
    assert D.wal_bytes(str(tmp_path)) == free + 10 * 1024 * 1024
    assert not D.enough_room(str(tmp_path))
    assert not D.enough_room(str(tmp_path / "missing"))
