"""qkvctl's etcdctl-parity rows of issue 15 that need real members: -w fields of
`member list` and `endpoint hashkv`, `defrag --data-dir` on a stopped member, and
`move-leader` given only followers (it finds the leader, where it failed `not leader`)."""
from __future__ import annotations

import subprocess
import sys

from nodeproc import wait_for
from protocol.client import Client


def qkvctl(endpoints: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from protocol.client.cli import main; main()",
                           "--endpoints", endpoints, "--command-timeout", "10s", *args],
                          capture_output=True, text=True, timeout=120)


def test_fields_output_and_offline_defrag(node_factory):
    node = node_factory()
    with Client([node.client_url], timeout=5) as c:
        for i in range(200):
            c.put(f"k/{i % 20}", "v" * 200)
        st = c.status()
        h = c.hash_kv()
    members = qkvctl(node.client_url, "member", "list", "-w", "fields")
    assert members.returncode == 0, members.stderr
    lines = members.stdout.splitlines()
    assert lines[:2] == [f'"ClusterID" : {st.header.cluster_id}', f'"MemberID" : {st.header.member_id}']
    assert lines[4:] == [f'"ID" : {st.header.member_id}', '"Name" : "n1"', f'"PeerURL" : "{node.peer_url}"',
                         f'"ClientURL" : "{node.client_url}"', '"IsLearner" : false', ""]
    hashes = qkvctl(node.client_url, "endpoint", "hashkv", "-w", "fields")
    assert hashes.returncode == 0, hashes.stderr
    lines = hashes.stdout.splitlines()
    assert lines[0] == f'"ClusterID" : {st.header.cluster_id}' and lines[2] == f'"Revision" : {h.header.revision}'
    assert lines[4:] == [f'"Endpoint" : "{node.client_url}"', f'"Hash" : {h.hash}', ""]

    # defrag --data-dir: refused while the member runs (its store is locked), done once stopped.
    busy = qkvctl(node.client_url, "defrag", "--data-dir", node.data_dir)
    assert busy.returncode == 1 and busy.stdout == ""
    assert busy.stderr.startswith(f"Failed to defragment quorumkv data[{node.data_dir}] (") \
        and "still running" in busy.stderr, busy.stderr
    node.stop()
    done = qkvctl(node.client_url, "defrag", "--data-dir", node.data_dir)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # etcdctl prints nothing either
    node.start()
    with Client([node.client_url], timeout=5) as c:
        assert c.hash_kv(h.header.revision).hash == h.hash
        assert c.get("k/", prefix=True, count_only=True).count == 20


def test_move_leader_given_only_a_follower(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    follower, target = [n for n in cluster.nodes if n is not leader]

    def all_started() -> bool:
        out = qkvctl(follower.client_url, "member", "list").stdout
        return out.count(", started, ") == 3
    wait_for(all_started, 20, "the follower to know every member's client URL")
    moved = qkvctl(follower.client_url, "move-leader", f"{target.member_id:x}")
    assert (moved.returncode, moved.stderr) == (0, ""), moved
    assert moved.stdout == f"Leadership transferred from {leader.member_id:x} to {target.member_id:x}\n"
    assert cluster.leader() is target
    # a follower that names no leader yet, or a dead endpoint only: etcdctl's error
    dead = qkvctl("tcp://127.0.0.1:1", "--command-timeout", "1s", "move-leader", f"{target.member_id:x}")
    assert dead.returncode == 1 and dead.stderr.startswith("Error: "), dead


def test_check_datascale_reads_the_nodes_memory_from_its_metrics(node_factory):
    """etcdctl reads process_resident_memory_bytes before and after its puts; a node exports
    it summed over its processes (actors/metrics/processes.py)."""
    node = node_factory(metrics=True)
    out = subprocess.run([sys.executable, "-m", "protocol.client.cli", "--endpoints", node.client_url, "check",
                          "datascale", "--metrics-url", node.metrics_url + "/metrics"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: Approximate system memory used" in out.stdout, out.stdout
