"""Runtime membership on real nodes: grow and shrink under load, replace a dead member,
remove the leader, the refusals (strict reconfig check, one change at a time, learners
not in sync, removed members), auto-promotion and --force-new-cluster.
Every node is stopped by the fixture, pass or fail."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from load import Writer, all_kvs

from nodeproc import NodeProcess, promote_when_ready, wait_for
from nodes.config import member_id
from protocol import errors
from protocol.client import Client

FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]
TOKEN = "memb"


class Members:
    """Nodes of one growing/shrinking cluster; all killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: dict[str, NodeProcess] = {}  # by name: the latest node of that name
        self.started: list[NodeProcess] = []

    def new(self, name: str) -> NodeProcess:
        node = NodeProcess(self.tmp_path, name)
        self.nodes[name] = node
        self.started.append(node)
        return node

    def bootstrap(self, names: list[str], extra: list[str] | None = None) -> list[NodeProcess]:
        nodes = [self.new(n) for n in names]
        initial = ",".join(f"{n.name}={n.peer_url}" for n in nodes)
        for n in nodes:
            n.args = ["--initial-cluster", initial, "--initial-cluster-token", TOKEN, *FAST, *(extra or [])]
            n.member_id = member_id(TOKEN, n.name)
            n.start(wait=False)
        for n in nodes:
            n.wait_ready(30)
        return nodes

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]

    def client(self, nodes: list[NodeProcess] | None = None) -> Client:
        return Client([n.client_url for n in (nodes or self.live())], timeout=10)

    def add(self, name: str, learner: bool = False, extra: list[str] | None = None,
            start: bool = True) -> NodeProcess:
        """`member add` through the CLI, then start the node with the settings it printed."""
        node = self.new(name)
        out = qkvctl(self.live(), "member", "add", name, f"--peer-urls={node.peer_url}",
                     *(["--learner"] if learner else []))
        env = dict(line.split("=", 1) for line in out.splitlines()[2:] if "=" in line)
        assert env["QKV_NAME"] == f'"{name}"' and env["QKV_INITIAL_CLUSTER_STATE"] == '"existing"', out
        node.member_id = int(out.split()[1], 16)
        node.args = ["--initial-cluster", env["QKV_INITIAL_CLUSTER"].strip('"'),
                     "--initial-advertise-peer-urls", env["QKV_INITIAL_ADVERTISE_PEER_URLS"].strip('"'),
                     "--initial-cluster-state", "existing", *FAST, *(extra or [])]
        if start:
            node.start()
        return node

    def discard(self) -> None:
        """Kill every node ever started (the fixture's teardown: `NodeProcess.discard`)."""
        for n in self.started:
            n.discard()


@pytest.fixture
def members(tmp_path):
    m = Members(tmp_path)
    yield m
    m.discard()


def qkvctl(nodes: list[NodeProcess], *args: str, check: bool = True) -> str:
    endpoints = ",".join(n.client_url for n in nodes)
    proc = subprocess.run([sys.executable, "-c", "from protocol.client.cli import main; main()",
                           "--endpoints", endpoints, "--command-timeout", "10s", *args],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"qkvctl {args}: {proc.stdout}{proc.stderr}"
        return proc.stdout
    return proc.stdout + proc.stderr


def member_ids(c: Client) -> dict[int, bool]:
    return {m.id: m.is_learner for m in c.member_list().members}


def caught_up(c: Client, nodes: list[NodeProcess]) -> bool:
    """Every node serves and its store has applied the leader's commit index."""
    target = c.status().raft_index
    for n in nodes:
        st = n.request({"op": "status"}, timeout=1)
        if not st or not st.get("ok") or st["raft_applied_index"] < target:
            return False
    return True


def hashes(nodes: list[NodeProcess]) -> set[int]:
    with Client([n.client_url for n in nodes], timeout=10) as c:
        wait_for(lambda: caught_up(c, nodes), 30, "every member to apply everything")
        rev = c.status().header.revision
    wait_for(lambda: all(n.request({"op": "range", "key": b"\0", "serializable": True}, timeout=1)["header"]
                         ["revision"] >= rev for n in nodes), 30, "every member to reach the revision")
    return {n.request({"op": "hash_kv", "revision": rev}, timeout=5)["hash"] for n in nodes}


def test_grow_1_3_5_and_shrink_to_3_under_load(members):
    (n1,) = members.bootstrap(["n1"])
    writer = Writer(n1.client_url)
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 100, 30, "writes before growing")
        with members.client() as c:
            # 1 -> 2 as a voter right away (etcd allows it on a one-member cluster), then a
            # learner promoted once in sync, then two voters (all members are up: allowed).
            members.add("n2")
            node = members.add("n3", learner=True)
            with members.client() as c2:
                promote_when_ready(c2, node.member_id)
            for name in ("n4", "n5"):
                members.add(name, start=False).start(wait=False)
            for name in ("n4", "n5"):
                members.nodes[name].wait_ready(30)
            ids = member_ids(c)
            assert len(ids) == 5 and not any(ids.values()), ids
            before = len(writer.acked)
            wait_for(lambda: len(writer.acked) > before + 100, 30, "the load to go on with 5 members")
            # 5 -> 3: remove two followers (not n1, the writer's endpoint); each stops by
            # itself after its grace period (2 election timeouts), the two waits side by side.
            for name in ("n4", "n5"):
                qkvctl([members.nodes[n] for n in ("n1", "n2", "n3")], "member", "remove",
                       f"{members.nodes[name].member_id:x}")
            for name in ("n4", "n5"):
                wait_for(lambda: members.nodes[name].proc.poll() is not None, 20, f"{name} to stop")
            assert len(member_ids(c)) == 3
            before = len(writer.acked)
            wait_for(lambda: len(writer.acked) > before + 100, 30, "the load to go on with 3 members")
    finally:
        writer.stop()
    survivors = [members.nodes[n] for n in ("n1", "n2", "n3")]
    assert len(hashes(survivors)) == 1
    kvs = {kv["key"] for kv in all_kvs(n1.request, b"load/")}
    lost = [k for k in writer.acked if k not in kvs]
    assert not lost, f"{len(lost)} acknowledged writes lost"
    assert "removed from the cluster" in members.nodes["n4"].log_text()


def raw_member_op(node: NodeProcess, req: dict) -> dict:
    reply = node.request(req, timeout=10)
    assert reply is not None, f"no reply to {req}"
    return reply


def test_replace_a_dead_member_and_the_refusals(members):
    n1, n2, n3 = members.bootstrap(["n1", "n2", "n3"])
    with members.client() as c:
        for i in range(50):
            c.put(f"k{i}", "v")
        # A learner that never started is not in sync: it cannot be promoted.
        ghost = members.add("ghost", learner=True, start=False)
        out = qkvctl(members.live(), "member", "promote", f"{ghost.member_id:x}", check=False)
        assert "can only promote a learner member which is in sync with leader" in out, out
        with pytest.raises(errors.MemberNotLearner):
            c.member_promote(n2.member_id)
        c.member_remove(ghost.member_id)  # a learner: no quorum question
        # Two changes at once: the second is refused while the first is not applied.
        leader_id = c.status().leader
        leader = next(n for n in (n1, n2, n3) if n.member_id == leader_id)
        import zmq
        from protocol.codec import pack, unpack
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(leader.client_url)
        try:
            for i, port in enumerate((1, 2)):
                sock.send(pack({"id": i + 1, "op": "member_add", "name": f"x{port}", "is_learner": True,
                                "peer_urls": [f"tcp://127.0.0.1:{port}"]}))
            replies = []
            for _ in range(2):
                assert sock.poll(10_000)
                replies.append(unpack(sock.recv()))
        finally:
            sock.close()
        codes = sorted(r["error"]["code"] if not r["ok"] else "ok" for r in replies)
        assert codes == ["conf_change_in_progress", "ok"], replies
        added = next(r["member"]["id"] for r in replies if r["ok"])
        c.member_remove(added)

        # n3 dies. Removing a healthy member now would leave 1 of 2 active: refused.
        n3.kill()
        # Give the leader an election timeout to notice (tests never assert on timing: the
        # refusal below only needs the leader to have stopped hearing from n3).
        wait_for(lambda: "unhealthy cluster" in qkvctl([n1, n2], "member", "remove", f"{n2.member_id:x}",
                                                       check=False), 20, "the unsafe removal to be refused")
        assert n2.member_id in member_ids(c)
        # Removing the dead one is fine; its replacement (same name, new data dir) gets a new id.
        n3_id = n3.member_id
        wait_for(lambda: _remove(c, n3_id), 20, "the dead member's removal", interval=0.2)
    shutil.rmtree(n3.data_dir)  # the dead member's disk is gone too
    with members.client() as c:
        new = members.add("n3", learner=True)
        assert new.member_id != n3_id
        promote_when_ready(c, new.member_id)
        assert member_ids(c) == {m: False for m in member_ids(c)} and len(member_ids(c)) == 3
        c.put("after-replace", "yes")
    assert len(hashes([n1, n2, new])) == 1


def _remove(c: Client, member_id: int) -> bool:
    try:
        c.member_remove(member_id)
        return True
    except (errors.UnhealthyCluster, errors.ConfChangeInProgress):
        return False


def test_remove_the_leader_and_a_removed_member_never_comes_back(members):
    nodes = members.bootstrap(["n1", "n2", "n3"])
    with members.client() as c:
        c.put("before", "1")
        leader_id = c.status().leader
        leader = next(n for n in nodes if n.member_id == leader_id)
        out = qkvctl(nodes, "member", "remove", f"{leader_id:x}")
        assert out.startswith("Member") and "removed from cluster" in out, out
        wait_for(lambda: leader.proc.poll() is not None, 20, "the removed leader to stop")
    rest = [n for n in nodes if n is not leader]
    with members.client(rest) as c:
        c.put("after", "2")
        assert c.get("before").kvs and c.get("after").kvs
        assert leader_id not in member_ids(c) and len(member_ids(c)) == 2
    assert "member_removed" in leader.log_text()
    # Restarting it on its data dir is refused with a clear message.
    leader.stop()
    proc = subprocess.run(leader.command(), capture_output=True, text=True, timeout=30, env=leader.env)
    assert proc.returncode != 0
    assert "was removed from the cluster" in proc.stderr, proc.stderr


def test_auto_promote_learners(members):
    members.bootstrap(["n1"], extra=["--auto-promote-learners"])
    with members.client() as c:
        for i in range(20):
            c.put(f"k{i}", "v")
        node = members.add("n2", learner=True)
        wait_for(lambda: member_ids(c).get(node.member_id) is False, 30, "the learner's automatic promotion")
    assert "learner_auto_promoted" in members.nodes["n1"].log_text()


def test_force_new_cluster_on_the_last_survivor(members):
    n1, n2, n3 = members.bootstrap(["n1", "n2", "n3"])
    with members.client() as c:
        acked = {}
        for i in range(200):
            acked[f"k{i:03d}"] = c.put(f"k{i:03d}", f"v{i}").header.revision
    assert len(hashes([n1, n2, n3])) == 1
    n2.kill()
    n3.kill()
    n1.stop()
    n1.args = [*n1.args, "--force-new-cluster"]
    n1.start()
    with members.client([n1]) as c:
        ids = member_ids(c)
        assert list(ids) == [c.status().header.member_id]
        kvs = {kv.key.decode(): kv.value.decode() for kv in c.get("k", prefix=True).kvs}
        assert kvs == {k: f"v{int(k[1:])}" for k in acked}
        assert c.put("after", "x").header.revision > max(acked.values())
    assert "force_new_cluster" in n1.log_text()


def test_member_update_moves_a_member_to_new_peer_urls(members):
    """`member update` changes a member's peer URLs; restarted on them, it rejoins and
    catches up (its peers reconnect to the new address)."""
    from nodeproc import free_port

    n1, n2, n3 = members.bootstrap(["n1", "n2", "n3"])
    n3.stop()
    new_url = f"tcp://127.0.0.1:{free_port()}"
    out = qkvctl([n1, n2], "member", "update", f"{n3.member_id:x}", f"--peer-urls={new_url}")
    assert out.startswith(f"Member {n3.member_id:x} updated in cluster"), out
    with members.client([n1, n2]) as c:
        wait_for(lambda: next(m for m in c.member_list().members if m.id == n3.member_id).peer_urls == [new_url],
                 10, "member list to show the new peer URL")
        c.put(b"after-update", b"v")
        n3.peer_url = new_url
        # The same --initial-cluster, with n3's new address in it.
        n3.args = [",".join(f"n3={new_url}" if p.startswith("n3=") else p for p in a.split(","))
                   if a.startswith("n1=") else a for a in n3.args]
        n3.start()
        with Client([n3.client_url], timeout=10) as c3:
            wait_for(lambda: c3.get(b"after-update", serializable=True).kvs, 30, "n3 to catch up on its new address")
        assert len(hashes([n1, n2, n3])) == 1
