"""NetnsCluster: members in network namespaces, peer links cut by the kernel, not by the
transport's fault layer. Skipped where namespaces cannot be made (no CAP_NET_ADMIN)."""
from __future__ import annotations

import os
import subprocess

import pytest
from netns import PREFIX, NetnsCluster, cleanup_stale, make_cluster, netns_available

from nodeproc import Cluster, wait_for

AVAILABLE, REASON = netns_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"network namespaces need CAP_NET_ADMIN: {REASON}")


@pytest.fixture
def netns_cluster(tmp_path):
    made: list[NetnsCluster] = []

    def make(size: int = 3) -> NetnsCluster:
        cluster = NetnsCluster(tmp_path, size)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.discard()  # kill -9, then the namespaces go as with stop()


def put(node, key: bytes, value: bytes = b"v", timeout: float = 5.0):
    return node.request({"op": "put", "key": key, "value": value}, timeout=timeout)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def test_members_run_in_their_own_namespaces_and_serve_then_leave_nothing(netns_cluster):
    cluster = netns_cluster(3)
    mine = os.readlink("/proc/self/ns/net")
    seen = {os.readlink(f"/proc/{n.proc.pid}/ns/net") for n in cluster.nodes}
    assert len(seen) == 3 and mine not in seen
    for n in cluster.nodes:
        assert n.client_url.startswith(f"tcp://{n.ip}:") and n.peer_url.startswith(f"tcp://{n.ip}:")
        assert n.serves()
    assert put(cluster.leader(), b"k")["ok"]
    names = {n.netns for n in cluster.nodes}
    assert names <= namespaces()
    cluster.stop()
    assert not names & namespaces()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert cluster.tag not in links


def test_isolated_leader_for_real_then_heal(netns_cluster):
    cluster = netns_cluster(3)
    old = cluster.leader()
    rest = [n for n in cluster.nodes if n is not old]
    assert put(old, b"before", b"1")["ok"]
    cluster.partition([old], rest)
    assert cluster.cuts() == {(a.name, b.name) for a in [old] for b in rest} | {
        (b.name, old.name) for b in rest}
    new = cluster.leader(rest, timeout=20)
    assert new is not old
    wait_for(lambda: (put(new, b"majority", b"y", timeout=2) or {}).get("ok"), 20, "a write on the majority")
    # The old leader cannot confirm a read with a quorum it cannot reach: error or timeout.
    read = old.request({"op": "range", "key": b"majority"}, timeout=5)
    assert read is None or read["ok"] is False, read
    assert old.request({"op": "status"}, timeout=5)["ok"]  # its client port is still reachable
    cluster.heal()
    assert cluster.cuts() == set()
    assert len(cluster.converged_hashes()) == 1
    wait_for(lambda: ((old.request({"op": "range", "key": b"majority"}, timeout=2) or {}).get("kvs") or
                      [{}])[0].get("value") == b"y", 20, "the old leader to read the majority write")


def test_one_way_cut_keeps_the_cluster_serving(netns_cluster):
    cluster = netns_cluster(3)
    a, b, c = cluster.nodes
    cluster.cut_one_way(a, b)
    assert cluster.cuts() == {(a.name, b.name)}
    rule = subprocess.run(["ip", "-n", a.netns, "rule"], capture_output=True, text=True).stdout
    assert f"to {b.ip}" in rule
    assert "to " not in subprocess.run(["ip", "-n", b.netns, "rule"], capture_output=True, text=True).stdout
    # c keeps both of its links: whoever leads, writes and linearizable reads through c work
    # (b may not: if a leads, a's answers to b's forwards are lost, as they would be for real).
    for i in range(3):
        wait_for(lambda i=i: (put(c, b"k%d" % i, timeout=3) or {}).get("ok"), 30, f"write {i} through c")
    read = c.request({"op": "range", "key": b"k2"}, timeout=10)
    assert read is not None and read["ok"] and read["kvs"][0]["value"] == b"v", read
    cluster.heal()
    assert len(cluster.converged_hashes()) == 1


def test_cleanup_stale_removes_only_leftovers_of_dead_runs(tmp_path):
    dead = next(p for p in range(0x3FFFF0, 0x3F0000, -1) if not os.path.exists(f"/proc/{p}"))
    stale, alive = f"{PREFIX}{dead:06x}zzn1", f"{PREFIX}{os.getpid():06x}zzn1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", alive], check=True)
    try:
        removed = cleanup_stale()
        assert stale in removed and alive not in removed
        assert stale not in namespaces() and alive in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        subprocess.run(["ip", "netns", "del", alive], capture_output=True)


def test_make_cluster_picks_the_network(tmp_path):
    assert type(make_cluster(tmp_path, 3, None, "faults")) is Cluster
    assert isinstance(make_cluster(tmp_path, 3, ["--snapshot-count", "500"], "netns"), NetnsCluster)
    with pytest.raises(ValueError, match="unknown network"):
        make_cluster(tmp_path, 3, None, "carrier-pigeon")
