"""Issue 12, item 5: a damaged consensus log. A follower of a 3-node cluster is killed
(kill -9) and its consensus log damaged: 512 random bytes over the tail of RocksDB's
write-ahead file (the issue's damage), or its last records cut off at a record boundary
(a log that lost its tail: RocksDB sees nothing wrong, only the store being ahead tells).
Restarted, the node refuses with one line naming the data dir and the fix, changes
nothing, and the rest of the cluster keeps serving an honest client with no failure; the
fix the line names (remove the member, move the data dir aside, add it again) brings the
member back with every acknowledged write. A torn append (the beginning of a record at
the end of the file, as a crash while appending leaves it) and a clean kill -9 restart
still start, and so does a member killed right after a snapshot install (its store is
then ahead of its log, legitimately)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from attacks import damage_random_tail, wal_file
from hostile_support import Honest, refusal

from actors.runtime import rocks_log
from nodeproc import NodeProcess, put_burst, wait_for
from protocol.client import Client

FAST = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def record_offsets(path: str) -> list[int]:
    """Offsets of the physical records of a write-ahead file (headers followed)."""
    data = open(path, "rb").read()
    offsets = []
    for block in range(0, len(data), rocks_log.BLOCK_SIZE):
        pos, end = block, min(block + rocks_log.BLOCK_SIZE, len(data))
        while pos + 7 <= end:
            offsets.append(pos)
            pos += 7 + (data[pos + 4] | data[pos + 5] << 8)
    return offsets


def dir_digest(path: str) -> dict[str, str]:
    """Content hashes of a RocksDB dir, RocksDB's own text log left out."""
    return {f: hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(path)) if not f.startswith("LOG")}


def put(node: NodeProcess, key: bytes, value: bytes) -> None:
    reply = node.request({"op": "put", "key": key, "value": value}, timeout=10)
    assert reply and reply["ok"], reply


def applied_on(node: NodeProcess, key: bytes) -> bool:
    reply = node.request({"op": "range", "key": key, "serializable": True}, timeout=1)
    return bool(reply and reply.get("ok") and reply["kvs"])


def readable_everywhere(nodes: list[NodeProcess], acked: dict[bytes, bytes]) -> None:
    for n in nodes:
        for key, value in acked.items():
            reply = n.request({"op": "range", "key": key}, timeout=10)
            assert reply and reply["ok"] and reply["kvs"] and reply["kvs"][0]["value"] == value, (n.name, key, reply)


def damage_cut_records(path: str) -> str:
    """Cut the file at a record boundary 20 records before its end: a clean, shorter log."""
    offsets = record_offsets(path)
    os.truncate(path, offsets[-20])
    return "the last 20 records cut off"


def test_damaged_log_refuses_and_the_cluster_keeps_serving(cluster_factory, tmp_path):
    c = cluster_factory(3, args=FAST)
    lead = c.leader()
    a, b = [n for n in c.nodes if n is not lead]
    healthy = [lead, b]
    honest = Honest(lead.client_url, prefix=b"honest/")
    honest.start()
    try:
        for round_no, damage in enumerate((damage_random_tail, damage_cut_records)):
            victim = a
            for i in range(120):
                put(lead, b"pre/%d/%04d" % (round_no, i), b"v" * 40)
            last_key = b"pre/%d/0119" % round_no
            wait_for(lambda: applied_on(victim, last_key), 20, "the victim to apply every write")
            victim.kill()
            path = wal_file(victim)
            what = damage(path)
            before = dir_digest(os.path.dirname(path))
            honest.phase(f"victim_down_{round_no}")
            line = refusal(victim)
            print(f"{what}: {line}")
            assert f"data dir {victim.data_dir} cannot be trusted" in line
            assert f"qkvctl member remove {victim.member_id:x}" in line and "qkvutl snapshot restore" in line
            assert "--initial-cluster-state existing" in line
            if damage is damage_cut_records:
                assert "has applied entry" in line and "ends at entry" in line, line
            assert dir_digest(os.path.dirname(path)) == before, "the refused data dir was changed"
            for i in range(5):  # the 5 writes: served by the others
                put(b, b"during/%d/%d" % (round_no, i), b"x")
            # The fix the line names: remove the member, move its data dir aside, add it again.
            with Client([n.client_url for n in healthy], timeout=10) as client:
                client.member_remove(victim.member_id)
                victim.stop()
                shutil.move(victim.data_dir, f"{victim.data_dir}.damaged{round_no}")
                fresh = NodeProcess(tmp_path, victim.name)
                fresh.log_path = tmp_path / f"{victim.name}.{round_no + 1}.log"
                added = client.member_add(victim.name, [fresh.peer_url])
            initial = ",".join([f"{n.name}={n.peer_url}" for n in healthy] + [f"{fresh.name}={fresh.peer_url}"])
            fresh.args = ["--initial-cluster", initial, "--initial-cluster-token", c.token,
                          "--initial-advertise-peer-urls", fresh.peer_url, "--initial-cluster-state", "existing",
                          *FAST]
            fresh.member_id = added.member.id
            c.nodes[c.nodes.index(victim)] = fresh
            fresh.start(timeout=30)
            a = fresh
        honest.phase("after")
        wait_for(lambda: len(honest.samples["after"]) > 50, 20, "honest requests after the fix")
    finally:
        honest.stop()
    print("honest client:", honest.report())
    assert not honest.failures, honest.failures[:5]
    assert len(c.converged_hashes(timeout=60)) == 1
    during = {b"during/%d/%d" % (r, i): b"x" for r in range(2) for i in range(5)}
    readable_everywhere(c.nodes, during)
    for n in c.nodes:  # the honest keys wrap at 1,000: a later put may overwrite an acked one
        stored = {}
        for key in honest.acked:
            reply = n.request({"op": "range", "key": key}, timeout=10)
            assert reply and reply["ok"] and reply["kvs"], (n.name, key, reply)
            stored[key] = reply["kvs"][0]["value"]
        assert not honest.lost(stored), (n.name, honest.lost(stored)[:5])


def test_torn_append_and_clean_restarts_start(node_factory):
    node = node_factory(args=FAST)
    acked = {}
    for i in range(100):
        put(node, b"k%04d" % i, b"v%d" % i)
        acked[b"k%04d" % i] = b"v%d" % i
    node.kill()  # a clean kill -9: nothing damaged
    node.start()
    assert '"data_dir_checked"' in node.log_text()
    for i in range(100, 150):
        put(node, b"k%04d" % i, b"v%d" % i)
        acked[b"k%04d" % i] = b"v%d" % i
    node.kill()
    # A crash in the middle of one more append: only the beginning of a record is there.
    path = wal_file(node)
    data = open(path, "rb").read()
    last = record_offsets(path)[-1]
    with open(path, "ab") as f:
        f.write(data[last:last + 7 + (len(data) - last - 7) // 2])
    node.start()
    readable_everywhere([node], acked)
    put(node, b"after", b"torn")
    node.stop()
    node.start()  # and a clean stop and start
    readable_everywhere([node], {**acked, b"after": b"torn"})
    checked = [line for line in node.log_text().splitlines() if '"data_dir_checked"' in line]
    print("start-up checks:", *checked[-3:], sep="\n")
    assert len(checked) == 4  # the first start, the kill -9 restart, the torn append, the clean restart


def test_restart_right_after_a_snapshot_install_starts(cluster_factory):
    """After a snapshot install the store is ahead of the log until the leader's entries
    arrive; a crash then is no damage: the install's mark lets the node start."""
    c = cluster_factory(3, args=[*FAST, "--snapshot-count", "1000"])
    lead = c.leader()
    lagging = next(n for n in c.nodes if n is not lead)
    lagging.stop()
    put_burst(lead.client_url, 4000, b"load/")  # compacts the leader's log past what `lagging` has
    wait_for(lambda: '"log_compacted"' in lead.log_text(), 30, "the leader to compact its log")
    seen = len(lagging.log_text())
    lagging.start(wait=False)
    wait_for(lambda: '"snapshot_installed"' in lagging.log_text()[seen:], 60, "the snapshot install",
             interval=0.002)
    lagging.kill()  # at once: usually before the log has caught up with the store
    seen = len(lagging.log_text())
    lagging.start(timeout=30)
    line = next(x for x in lagging.log_text()[seen:].splitlines() if '"data_dir_checked"' in x)
    print("restart after the install:", line)
    checked = json.loads(line)
    if checked["applied_index"] > checked["last_index"]:
        assert checked["installed_index"] == checked["applied_index"]
    assert len(c.converged_hashes(timeout=60)) == 1
