"""Issue 12, item 4: a full disk. A real node whose data dir is on a small tmpfs (mounted
here: needs root; skipped with the reason otherwise) is filled by a writer while an
honest client runs beside it; then space is freed.

Expected (SPEC section 4, `no_space`): no actor restarts; writes refused with `no_space`
and NOSPACE reported; reads served; one `disk_full` line per actor that names the full
path; the service back by itself once the filesystem has room (about the size of the
RocksDB WAL that must be flushed on reopen); every acknowledged write readable after.
Figures (printed): how the writer's requests ended, how long until writes worked again,
the honest client's latency per phase.
"""
from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, os.path.dirname(__file__))
from hostile_support import Honest, RssWatch, ballast, percentiles  # noqa: E402

from nodeproc import log_events, raw_request, wait_for  # noqa: E402

FS_MIB = 24
DATA_ROOM_MIB = 6  # what the ballast leaves for the node's data (RocksDB WALs of both actors)
VALUE = os.urandom(64 * 1024)


def code(reply: dict | None) -> str:
    if reply is None:
        return "no_reply"
    return "ok" if reply.get("ok") else reply["error"]["code"]


class Writer:
    """Puts unique keys (64 KiB values) until the disk refuses; remembers what was
    acknowledged (each must be readable later) and how every request ended."""

    def __init__(self, url: str, prefix: bytes) -> None:
        self.url = url
        self.prefix = prefix
        self.acked: dict[bytes, bytes] = {}
        self.codes: collections.Counter = collections.Counter()
        self.seq = 0

    def put(self) -> str:
        self.seq += 1
        key = self.prefix + b"%06d" % self.seq
        value = VALUE[:-8] + b"%08d" % self.seq
        c = code(raw_request(self.url, {"op": "put", "key": key, "value": value}, timeout=7))
        self.codes[c] += 1
        if c == "ok":
            self.acked[key] = value
        return c

    def until_refused(self, limit: int = 2000) -> int:
        """Write until `no_space`; the number of puts it took."""
        for n in range(1, limit + 1):
            if self.put() == "no_space":
                return n
        raise AssertionError(f"the disk never filled: {dict(self.codes)}")


def assert_readable(url: str, acked: dict[bytes, bytes]) -> None:
    for key, value in acked.items():
        reply = raw_request(url, {"op": "range", "key": key}, timeout=5)
        assert code(reply) == "ok", (key, reply)
        assert reply["kvs"] and reply["kvs"][0]["value"] == value, f"acknowledged {key!r} lost or changed"


def test_one_node_full_disk(tmpfs, node_factory):
    node = node_factory(start=False)
    small_fs = tmpfs(Path(node.data_dir).parent / "small", FS_MIB)
    node.data_dir = str(small_fs / "n1.qkv")
    node.start()
    watch = RssWatch(node)
    watch.start()
    honest = Honest(node.client_url, timeout=10.0)
    honest.start()
    wait_for(lambda: len(honest.samples["before"]) >= 20, 20, "the honest client's first requests")
    room = ballast(small_fs)

    writer = Writer(node.client_url, b"fill/")
    t0 = time.monotonic()
    puts_to_fill = writer.until_refused()
    fill_s = time.monotonic() - t0
    honest.phase("full")
    # Full: writes refused with no_space, reads served (linearizable and serializable),
    # NOSPACE reported for this member.
    for _ in range(3):
        assert writer.put() == "no_space"
    assert code(raw_request(node.client_url, {"op": "delete_range", "key": b"fill/000001"})) == "no_space"
    for serializable in (False, True):
        reply = raw_request(node.client_url, {"op": "range", "key": b"fill/", "range_end": b"fill0",
                                              "count_only": True, "serializable": serializable})
        assert code(reply) == "ok", reply
    status = raw_request(node.client_url, {"op": "status"})
    assert {"member_id": status["header"]["member_id"], "alarm": "NOSPACE"} in status["alarms"], status
    wait_for(lambda: len([s for s in honest.samples["full"]]) >= 40, 30, "the honest client to go on meanwhile")

    # Space back: the node takes writes again by itself.
    room.unlink()
    freed_at = time.monotonic()
    honest.phase("after")

    def writes_again() -> bool:
        return writer.put() == "ok"

    wait_for(writes_again, 30, "writes to work again after space was freed", interval=0.1)
    back_s = time.monotonic() - freed_at

    def clear() -> bool:
        st = raw_request(node.client_url, {"op": "status"})
        return code(st) == "ok" and not st["alarms"]

    wait_for(clear, 20, "NOSPACE to clear")
    wait_for(lambda: len(honest.samples["after"]) >= 20, 20, "the honest client after")
    honest.stop()
    peaks = watch.stop()

    assert_readable(node.client_url, writer.acked)
    log = node.log_text()
    full_lines = log_events(log, "disk_full")
    recovered = log_events(log, "disk_recovered")
    print(f"\nfull disk, one node ({FS_MIB} MiB tmpfs, {DATA_ROOM_MIB} MiB left for data):")
    print(f"  writer: {puts_to_fill} puts of 64 KiB until no_space ({fill_s:.1f} s); outcomes {dict(writer.codes)}; "
          f"{len(writer.acked)} acknowledged, all readable after")
    print(f"  writes back {back_s:.2f} s after space was freed; "
          f"disk_full lines {[(e['actor'], e['path']) for e in full_lines]}; "
          f"recovered {[(e['actor'], e['down_s']) for e in recovered]}")
    print(f"  honest client: {honest.report()}; failures {collections.Counter(str(f) for f in honest.failures)}")
    print(f"  peak RSS MiB: {peaks}")

    assert watch.restarted() == {}, f"actors restarted: {watch.restarted()}"
    assert "actor_crashed" not in log and "actor_died" not in log
    assert full_lines and all(e["path"].startswith(node.data_dir) for e in full_lines), full_lines
    assert len(full_lines) <= 2, "one disk_full line per actor and episode"
    assert all(op == "put" and (err == "no reply" or err.get("code") in ("no_space", "timeout"))
               for op, err in honest.failures if err != "no reply"), honest.failures
    assert not [f for f in honest.failures if f[0] != "put" or f[1] == "no reply"], \
        f"the honest client's reads failed or went unanswered: {honest.failures}"
    assert percentiles(honest.samples["full"])["n"] > 0


def test_full_follower_raises_nospace_for_the_cluster(tmpfs, cluster_factory):
    cluster = cluster_factory(3, start=False)
    full = cluster.nodes[2]
    small_fs = tmpfs(Path(full.data_dir).parent / "small", FS_MIB)
    full.data_dir = str(small_fs / "n3.qkv")
    cluster.start()
    leader = cluster.leader()
    if leader is full:  # the interesting case is a full follower (a full leader is cut off)
        target = cluster.nodes[0].member_id
        assert code(raw_request(full.client_url, {"op": "move_leader", "target_id": target})) == "ok"
        leader = cluster.leader()
    healthy = [n for n in cluster.nodes if n is not full]
    watch = RssWatch(full)
    watch.start()
    room = ballast(small_fs)

    writer = Writer(leader.client_url, b"fill/")

    def full_reports() -> bool:
        st = raw_request(full.client_url, {"op": "status"}, timeout=2)
        return code(st) == "ok" and any(a["alarm"] == "NOSPACE" for a in st["alarms"])

    t0 = time.monotonic()
    while not full_reports():
        assert writer.put() in ("ok", "no_space", "timeout"), writer.codes
        assert time.monotonic() - t0 < 60, f"n3's disk never filled: {dict(writer.codes)}"
    # Its NOSPACE alarm commits through the leader (n3's gateway proposes it once its status
    # poll shows the full disk): puts refused everywhere, reads work (SPEC "Maintenance
    # and alarms").
    for n in healthy:
        wait_for(lambda n=n: code(raw_request(n.client_url, {"op": "put", "key": b"p", "value": b"v"},
                                              timeout=3)) == "no_space", 20, f"NOSPACE at {n.name}")
        assert code(raw_request(n.client_url, {"op": "range", "key": b"fill/000001"})) == "ok"
    # The full member refuses writes at once; its serializable reads are served.
    assert code(raw_request(full.client_url, {"op": "put", "key": b"x", "value": b"y"})) == "no_space"
    assert code(raw_request(full.client_url, {"op": "range", "key": b"fill/", "range_end": b"fill0",
                                              "count_only": True, "serializable": True})) == "ok"
    assert code(raw_request(leader.client_url, {"op": "delete_range", "key": b"nothing-here"})) == "ok"
    alarms = raw_request(leader.client_url, {"op": "alarm_list"})["alarms"]
    assert {"member_id": full.member_id, "alarm": "NOSPACE"} in alarms, alarms

    room.unlink()
    freed_at = time.monotonic()
    for n in cluster.nodes:
        wait_for(lambda n=n: code(raw_request(n.client_url, {"op": "put", "key": b"back/" + n.name.encode(),
                                                             "value": b"v"}, timeout=3)) == "ok",
                 40, f"writes at {n.name} after space was freed", interval=0.2)
    back_s = time.monotonic() - freed_at
    assert raw_request(leader.client_url, {"op": "alarm_list"})["alarms"] == []
    assert len(cluster.converged_hashes()) == 1
    for n in cluster.nodes:
        assert_readable(n.client_url, writer.acked)
    watch.stop()
    log = full.log_text()
    print(f"\nfull disk, 3 nodes, follower {full.name} full: writer outcomes {dict(writer.codes)}, "
          f"{len(writer.acked)} acknowledged and readable on every member; every member writes again "
          f"{back_s:.2f} s after space was freed; disk_full lines "
          f"{[(e['actor'], e['path']) for e in log_events(log, 'disk_full')]}")
    assert watch.restarted() == {}, f"actors restarted: {watch.restarted()}"
    assert "actor_crashed" not in log and "actor_died" not in log


def test_one_node_full_log(tmpfs, node_factory):
    """Only the consensus log's directory is small (its own tmpfs): the Raft path, always.
    A Ready the disk refuses is held (nothing acknowledged), writes get no_space, the sole
    voter still answers linearizable reads, and the held Ready is saved once space is back."""
    node = node_factory(start=False)
    log_fs = tmpfs(Path(node.data_dir) / "consensus", 16)
    node.start()
    watch = RssWatch(node)
    watch.start()
    honest = Honest(node.client_url, timeout=10.0)
    honest.start()
    wait_for(lambda: len(honest.samples["before"]) >= 20, 20, "the honest client's first requests")
    room = ballast(log_fs, 3)
    writer = Writer(node.client_url, b"fill/")
    puts_to_fill = writer.until_refused()
    honest.phase("full")
    assert writer.put() == "no_space"
    reply = raw_request(node.client_url, {"op": "range", "key": b"fill/000001"})  # linearizable
    assert code(reply) == "ok" and reply["kvs"], reply
    wait_for(lambda: len(honest.samples["full"]) >= 40, 30, "the honest client to go on meanwhile")
    room.unlink()
    freed_at = time.monotonic()
    honest.phase("after")
    wait_for(lambda: writer.put() == "ok", 30, "writes to work again after space was freed", interval=0.1)
    back_s = time.monotonic() - freed_at
    wait_for(lambda: len(honest.samples["after"]) >= 20, 20, "the honest client after")
    honest.stop()
    watch.stop()
    assert_readable(node.client_url, writer.acked)
    log = node.log_text()
    full_lines = log_events(log, "disk_full")
    print(f"\nfull log only (16 MiB tmpfs under consensus/, 3 MiB left): {puts_to_fill} puts until no_space; "
          f"outcomes {dict(writer.codes)}; writes back {back_s:.2f} s after space was freed; "
          f"disk_full {[(e['actor'], e['during'], e['path']) for e in full_lines]}; "
          f"recovered {[(e['actor'], e['down_s']) for e in log_events(log, 'disk_recovered')]}; "
          f"honest {honest.report()}; failures {collections.Counter(str(f) for f in honest.failures)}")
    assert watch.restarted() == {}, f"actors restarted: {watch.restarted()}"
    assert "actor_crashed" not in log and "actor_died" not in log
    assert [e["actor"] for e in full_lines] == ["consensus"] and full_lines[0]["path"] == str(log_fs), full_lines
    assert not [f for f in honest.failures if f[0] != "put" or f[1] == "no reply"], honest.failures
    assert all(f[1].get("code") in ("no_space", "timeout") for f in honest.failures), honest.failures


def test_restart_on_a_full_disk(tmpfs, node_factory):
    """The issue's crash loop: actors restarted on a full disk could not open RocksDB
    (its open writes). Now they open read-only: reads are served, writes refused, and
    the node takes writes again once space is freed."""
    node = node_factory(start=False)
    small_fs = tmpfs(Path(node.data_dir).parent / "small", FS_MIB)
    node.data_dir = str(small_fs / "n1.qkv")
    node.start()
    room = ballast(small_fs)
    writer = Writer(node.client_url, b"fill/")
    writer.until_refused()
    node.stop()
    with open(small_fs / "rest", "wb") as f:  # whatever the shutdown left: full to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    t0 = time.monotonic()
    node.start()  # waits until status and a linearizable read are served
    serving_s = time.monotonic() - t0
    assert writer.put() == "no_space"
    status = raw_request(node.client_url, {"op": "status"})
    assert {"member_id": status["header"]["member_id"], "alarm": "NOSPACE"} in status["alarms"], status
    room.unlink()
    (small_fs / "rest").unlink()
    freed_at = time.monotonic()
    wait_for(lambda: writer.put() == "ok", 30, "writes to work again after space was freed", interval=0.1)
    back_s = time.monotonic() - freed_at
    assert_readable(node.client_url, writer.acked)
    log = node.log_text()
    opens = [(e["actor"], e["during"]) for e in log_events(log, "disk_full") if e["during"] == "open"]
    print(f"\nrestart on a full disk: serving reads {serving_s:.2f} s after start (opened read-only: {opens}); "
          f"writes back {back_s:.2f} s after space was freed; {len(writer.acked)} acknowledged writes readable")
    assert sorted(opens) == [("consensus", "open"), ("storage", "open")], opens
    assert "actor_crashed" not in log and "actor_died" not in log
