"""Maintenance against real nodes: quota and the NOSPACE alarm, the periodic corruption
check and the CORRUPT alarm, defragmentation under load, auto-compaction."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack

from nodeproc import wait_for
from protocol import errors
from protocol.client import Client, Op


def qkvctl(endpoints: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("qkvctl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from protocol.client.cli import main; main()"]
    return subprocess.run(cmd + ["--endpoints", endpoints, *args], capture_output=True, text=True, timeout=60)


def test_quota_nospace_alarm_then_compact_defrag_disarm(node_factory):
    node = node_factory(args=["--quota-backend-bytes", "300000"])
    value = b"v" * 10_000
    with Client([node.client_url], timeout=5) as c:
        mid = c.put("keep", "me").header.member_id
        written = 0
        refused = None
        while refused is None:
            assert written < 500, "the quota was never enforced"
            try:
                c.put(f"big/{written:04d}", value)
                written += 1
            except errors.NoSpace as exc:
                refused = exc
        assert refused.message == "etcdserver: mvcc: database space exceeded"
        wait_for(lambda: c.alarm_list().alarms, 10, "the NOSPACE alarm")
        assert [(a.member_id, a.alarm) for a in c.alarm_list().alarms] == [(mid, "NOSPACE")]
        listed = qkvctl(node.client_url, "alarm", "list")
        assert listed.stdout == f"memberID:{mid} alarm:NOSPACE \n", listed
        listed = qkvctl(node.client_url, "alarm", "list", "-w", "json")  # etcd 3.4's: the enum number
        assert json.loads(listed.stdout) == {"alarms": [{"memberID": mid, "alarm": 1}]}, listed
        status = json.loads(qkvctl(node.client_url, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
        assert f"memberID:{mid} alarm:NOSPACE" in status["errors"]
        assert status["dbSizeQuota"] == 300000 and status["dbSize"] > 300000
        table = qkvctl(node.client_url, "endpoint", "status", "-w", "table").stdout
        assert "DB SIZE IN USE" in table and "alarm:NOSPACE" in table, table

        # Writes that add data are refused (by the applier too, whatever the size says)...
        for attempt in (lambda: c.put("small", "x"), lambda: c.lease_grant(10),
                        lambda: c.txn([], [Op.put("t", "x")], [])):
            try:
                attempt()
                raise AssertionError("a write that adds data went through under NOSPACE")
            except errors.NoSpace:
                pass
        # ...reads, deletes and compaction are not.
        assert c.get("keep").kvs[0].value == b"me"
        assert c.delete("big/", prefix=True).deleted == written
        c.compact(c.get("keep").header.revision)
        defrag = qkvctl(node.client_url, "defrag")
        assert defrag.stdout == f"Finished defragmenting quorumkv member[{node.client_url}]\n", defrag
        assert c.status().db_size < 300000
        disarmed = qkvctl(node.client_url, "alarm", "disarm")
        assert disarmed.stdout == f"memberID:{mid} alarm:NOSPACE \n", disarmed
        assert c.alarm_list().alarms == []
        c.put("small", "x")
        assert c.get("small").kvs[0].value == b"x"
    # The alarm is cluster state: it would have survived a restart (see the CORRUPT test).


def _corrupt_value(data_dir: str, key: bytes, value: bytes) -> None:
    """Change a key's value behind the log's back, in the store and in its history."""
    from actors.storage.backend import RocksBackend
    from actors.storage.mvcc.keys import hist_key
    from actors.storage.mvcc.store import CF_HIST, CF_KEY

    be = RocksBackend(str(Path(data_dir) / "storage"))
    try:
        rec = msgpack.unpackb(be.get(CF_KEY, key), raw=False)
        rec[0] = value
        packed = msgpack.packb(rec, use_bin_type=True)
        be.write([(CF_KEY, key, packed), (CF_HIST, hist_key(key, rec[2], 0), packed)], sync=True)
    finally:
        be.close()


def test_corruption_check_raises_corrupt_naming_the_member(cluster_factory):
    cluster = cluster_factory(3, args=["--corrupt-check-time", "500ms"])
    leader = cluster.leader()
    victim = next(n for n in cluster.nodes if n is not leader)
    endpoints = ",".join(n.client_url for n in cluster.nodes)
    with Client([leader.client_url], timeout=5) as c:
        for i in range(10):
            c.put(f"c/{i}", f"v{i}")
        cluster.converged_hashes()
        assert c.alarm_list().alarms == []  # equal hashes: no alarm
        victim.stop()
        _corrupt_value(victim.data_dir, b"c/3", b"garbage")
        victim.start()
        wait_for(lambda: c.alarm_list().alarms, 30, "the CORRUPT alarm")
        alarms = [(a.member_id, a.alarm) for a in c.alarm_list().alarms]
        assert alarms == [(victim.member_id, "CORRUPT")], alarms
        # etcd 3.4's applierV3Corrupt: every write is refused; reads still work.
        try:
            c.put("after", "x")
            raise AssertionError("a write went through under CORRUPT")
        except errors.Corrupt as exc:
            assert exc.message == "etcdserver: corrupt cluster"
        assert c.get("c/1").kvs[0].value == b"v1"
    # Every member agrees (the alarm came through the log) and shows it.
    line = f"memberID:{victim.member_id} alarm:CORRUPT"
    for node in cluster.nodes:
        wait_for(lambda node=node: line in qkvctl(node.client_url, "alarm", "list").stdout, 10,
                 f"{node.name} to list the alarm")
    # It survives a restart of the whole cluster.
    for node in cluster.nodes:
        node.stop()
    for node in cluster.nodes:
        node.start(wait=False)
    for node in cluster.nodes:
        node.wait_ready()
    out = qkvctl(endpoints, "alarm", "list").stdout
    assert line in out, out


def test_defrag_under_load_keeps_serving(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    endpoints = ",".join(n.client_url for n in cluster.nodes)
    with Client([leader.client_url], timeout=10) as c:
        value = b"d" * 2000
        for t in range(20):  # ~4 MB, then garbage for compaction and defrag to drop
            c.txn([], [Op.put(f"fill/{t:03d}/{i:03d}", value) for i in range(100)], [])
        c.delete("fill/", prefix=True)
        c.compact(c.put("mark", "x").header.revision)

    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []

    def load(url: str) -> None:
        with Client([url], timeout=10) as lc:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    lc.put(f"load/{i % 50}", str(i))
                    lc.get(f"load/{i % 50}")
                except errors.QkvError as exc:
                    failures.append(repr(exc))
                latencies.append(time.perf_counter() - t0)
                i += 1

    threads = [threading.Thread(target=load, args=(n.client_url,)) for n in cluster.nodes]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(latencies) > 100, 20, "the load to run")
        before = len(latencies)
        t0 = time.perf_counter()
        out = qkvctl(endpoints.split(",")[0], "defrag", "--cluster")
        took = time.perf_counter() - t0
        during = len(latencies)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert out.returncode == 0, out
    assert sorted(out.stdout.splitlines()) == sorted(
        f"Finished defragmenting quorumkv member[{n.client_url}]" for n in cluster.nodes), out
    assert failures == []
    print(f"\ndefrag --cluster (qkvctl, 3 members one after another) took {took * 1000:.0f} ms; "
          f"put+get max latency {max(latencies[before:during]) * 1000:.1f} ms during it "
          f"({during - before} pairs), {max(latencies[:before]) * 1000:.1f} ms before ({before} pairs)")


def _compact_revision(c: Client) -> int:
    return c.status().compact_revision


def test_auto_compaction_revision_mode(node_factory):
    node = node_factory(args=["--auto-compaction-mode", "revision", "--auto-compaction-retention", "5"],
                        env={"QKV_AUTO_COMPACTION_REVISION_INTERVAL_S": "0.3"})
    with Client([node.client_url], timeout=5) as c:
        for i in range(20):
            rev = c.put("k", str(i)).header.revision
        wait_for(lambda: _compact_revision(c) == rev - 5, 10, f"compaction at {rev - 5}")
        for i in range(10):
            rev = c.put("k", str(i)).header.revision
        wait_for(lambda: _compact_revision(c) == rev - 5, 10, f"compaction at {rev - 5}")
        assert c.get("k").kvs[0].value == b"9"


def test_auto_compaction_periodic_mode(node_factory):
    node = node_factory(args=["--auto-compaction-retention", "1s"])  # mode periodic is the default
    with Client([node.client_url], timeout=5) as c:
        for i in range(10):
            first = c.put("p", str(i)).header.revision
        wait_for(lambda: _compact_revision(c) >= first, 15, f"a compaction at or past {first}")
        for i in range(10):
            second = c.put("p", str(i)).header.revision
        wait_for(lambda: _compact_revision(c) >= second, 15, f"a compaction at or past {second}")
        # The retention holds: what was written just now is still in the history.
        third = c.put("p", "last").header.revision
        assert _compact_revision(c) < third
