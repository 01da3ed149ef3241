"""etcd's Cluster and Maintenance services on real nodes (issue 18), through grpc stubs
and etcd 3.4's own etcdctl (tests needing it skip when /usr/bin/etcdctl is missing):
members' gRPC URLs as clientURLs, membership changes, endpoint status/health/hashkv,
alarms, defragmentation, hashes, snapshots and leadership transfer.
Every node is stopped by its fixture, pass or fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from protocol.snapshot_file import verify
from tests.nodeproc import Cluster, NodeProcess, free_port, wait_for

ETCDCTL = "/usr/bin/etcdctl"
needs_etcdctl = pytest.mark.skipif(not os.path.exists(ETCDCTL), reason=f"etcd's etcdctl is not installed ({ETCDCTL})")
FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]
U32 = 0xFFFFFFFF


def etcdctl(endpoints: list[NodeProcess], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, "--endpoints", ",".join(n.grpc_endpoint for n in endpoints),
                           "--command-timeout", "20s", *args],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=60)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"etcdctl {proc.args[3:]}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")[1:-1]]


def rpc_error(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=20, **kw)
    return info.value


def heard_from_all(c: Cluster) -> bool:
    """Every member knows every member's URLs (their hellos arrived)."""
    for n in c.nodes:
        reply = n.request({"op": "member_list"})
        if not (reply and reply.get("ok") and all(m["client_urls"] for m in reply["members"])):
            return False
    return True


@pytest.fixture
def mixed(tmp_path):
    """3 members; n1 and n2 serve gRPC, n3 does not."""
    c = Cluster(tmp_path, 3, args=FAST, grpc=True)
    c.nodes[2].grpc = False
    try:
        c.start()
        c.leader()
        wait_for(lambda: heard_from_all(c), 20, "every member's hello")
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 3, args=FAST, grpc=True)
    try:
        c.start()
        c.leader()
        wait_for(lambda: heard_from_all(c), 20, "every member's hello")
        yield c
    finally:
        c.stop()


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(tmp_path, grpc=True, args=["--quota-backend-bytes", "300000"])
    try:
        n.start()
        yield n
    finally:
        n.stop()


def stubs(n: NodeProcess):
    ch = grpc.insecure_channel(n.grpc_endpoint)
    return ch, rpc_pb2_grpc.ClusterStub(ch), rpc_pb2_grpc.MaintenanceStub(ch), rpc_pb2_grpc.KVStub(ch)


# --- members' gRPC URLs ---------------------------------------------------------------------
def test_member_list_gives_grpc_urls_and_status_hashkv_moveleader(mixed):
    n1, n2, n3 = mixed.nodes
    ch, cl, mt, kv = stubs(n1)
    with ch:
        listed = cl.MemberList(rpc_pb2.MemberListRequest(), timeout=20)
        got = {m.ID: (m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner) for m in listed.members}
        assert got == {n.member_id: (n.name, [n.peer_url], [n.grpc_url] if n.grpc else [], False)
                       for n in mixed.nodes}
        assert listed.header.member_id == n1.member_id and listed.header.cluster_id
        native = n3.request({"op": "member_list"})["members"]  # the native op carries them too
        assert {m["id"]: m["grpc_urls"] for m in native} == {n1.member_id: [n1.grpc_url],
                                                             n2.member_id: [n2.grpc_url], n3.member_id: []}

        for i in range(5):
            kv.Put(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v"), timeout=20)
        rev = kv.Range(rpc_pb2.RangeRequest(key=b"k0"), timeout=20).header.revision
        mixed.converged_hashes()
        hashed = mt.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=20)
        native_hash = n3.request({"op": "hash_kv", "revision": rev})
        assert hashed.hash == native_hash["hash"] & U32 and hashed.header.revision == rev
        assert native_hash["compact_revision"] == 0 and hashed.compact_revision == -1  # etcd's: never compacted

        status = mt.Status(rpc_pb2.StatusRequest(), timeout=20)
        assert status.version == "3.4.0" and status.leader and status.raftTerm and status.dbSize > 0
        assert status.raftAppliedIndex > 0 and status.raftIndex >= status.raftAppliedIndex and not status.isLearner
        assert list(status.errors) == [] and status.header.member_id == n1.member_id

        # MoveLeader: the leader hands over; a follower answers "not leader"; a bad target
        lead = mixed.leader()
        if lead is not n1:
            assert lead.request({"op": "move_leader", "target_id": n1.member_id}, timeout=10)["ok"]
            wait_for(lambda: mixed.leader() is n1, 20, "n1 to lead")
        err = rpc_error(mt.MoveLeader, rpc_pb2.MoveLeaderRequest(targetID=12345))
        assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
    with grpc.insecure_channel(n2.grpc_endpoint) as ch2:
        follower = rpc_pb2_grpc.MaintenanceStub(ch2)
        for target in (n3.member_id, 0):
            err = rpc_error(follower.MoveLeader, rpc_pb2.MoveLeaderRequest(targetID=target))
            assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")


@needs_etcdctl
def test_etcdctl_member_list_endpoints_defrag_move_leader(mixed):
    n1, n2, n3 = mixed.nodes
    table = ok(etcdctl([n1], "member", "list", "-w", "table"))
    for n in mixed.nodes:
        cells = next(c for c in (table_cells(line) for line in table.splitlines()) if c[2:3] == [n.name])
        assert cells[1] == "started" and cells[4] == (n.grpc_url if n.grpc else ""), table
    as_json = json.loads(ok(etcdctl([n1], "member", "list", "-w", "json")))
    assert {m["name"]: m.get("clientURLs", []) for m in as_json["members"]} == {
        "n1": [n1.grpc_url], "n2": [n2.grpc_url], "n3": []}

    # --cluster: the endpoints are the members' gRPC URLs (n3 has none)
    statuses = json.loads(ok(etcdctl([n1], "endpoint", "status", "--cluster", "-w", "json")))
    assert sorted(s["Endpoint"] for s in statuses) == sorted([n1.grpc_url, n2.grpc_url])
    assert {s["Status"]["version"] for s in statuses} == {"3.4.0"}
    assert len({s["Status"]["leader"] for s in statuses}) == 1
    health = etcdctl([n1], "endpoint", "health", "--cluster")
    assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 2, health
    hashes = json.loads(ok(etcdctl([n1], "endpoint", "hashkv", "--cluster", "-w", "json")))
    assert len(hashes) == 2 and len({h["HashKV"]["hash"] for h in hashes}) == 1
    defrag = ok(etcdctl([n1], "defrag", "--cluster"))
    assert sorted(defrag.splitlines()) == sorted(f"Finished defragmenting etcd member[{n.grpc_url}]" for n in (n1, n2))
    assert ok(etcdctl([n1, n2], "alarm", "list")) == ""

    lead = mixed.leader()
    if lead is n3:  # etcdctl sends MoveLeader to the leader among its endpoints
        assert n3.request({"op": "move_leader", "target_id": n1.member_id}, timeout=10)["ok"]
        lead = wait_for(lambda: mixed.leader() if mixed.leader() is not n3 else None, 20, "n1 or n2 to lead")
    target = n2 if lead is n1 else n1
    moved = ok(etcdctl([n1, n2], "move-leader", f"{target.member_id:x}"))
    assert moved == f"Leadership transferred from {lead.member_id:x} to {target.member_id:x}\n"
    wait_for(lambda: mixed.leader() is target, 20, "the target to lead")
    bad = etcdctl([n1, n2], "move-leader", "12345")
    assert bad.returncode != 0 and "etcdserver: bad leader transferee" in bad.stderr


# --- membership changes ---------------------------------------------------------------------
def test_member_add_update_start_promote_remove(cluster, tmp_path):
    n1 = cluster.nodes[0]
    n4 = NodeProcess(tmp_path, "n4", grpc=True)
    try:
        ch, cl, _, _ = stubs(n1)
        with ch:
            # etcd's refusals, before and from the native ops
            err = rpc_error(cl.MemberAdd, rpc_pb2.MemberAddRequest(peerURLs=["https://127.0.0.1:1"]))
            assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "etcdserver: given member URLs are invalid")
            err = rpc_error(cl.MemberAdd, rpc_pb2.MemberAddRequest(peerURLs=[n1.peer_url]))
            assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                   "etcdserver: Peer URLs already exists")
            for call, req in ((cl.MemberRemove, rpc_pb2.MemberRemoveRequest(ID=12345)),
                              (cl.MemberRemove, rpc_pb2.MemberRemoveRequest(ID=0)),
                              (cl.MemberPromote, rpc_pb2.MemberPromoteRequest(ID=12345))):
                err = rpc_error(call, req)
                assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
            err = rpc_error(cl.MemberPromote, rpc_pb2.MemberPromoteRequest(ID=n1.member_id))
            assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                   "etcdserver: can only promote a learner member")

            # add a learner at a placeholder URL, then move it to n4's
            placeholder = f"http://127.0.0.1:{free_port()}"
            added = cl.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[placeholder], isLearner=True), timeout=20)
            new_id = added.member.ID
            assert added.member.isLearner and added.member.name == "" and list(added.member.clientURLs) == []
            assert list(added.member.peerURLs) == ["tcp://" + placeholder.split("://")[1]]
            assert len(added.members) == 4
            real = "http://" + n4.peer_url.split("://")[1]
            updated = cl.MemberUpdate(rpc_pb2.MemberUpdateRequest(ID=new_id, peerURLs=[real]), timeout=20)
            assert [list(m.peerURLs) for m in updated.members if m.ID == new_id] == [[n4.peer_url]]

            initial = ",".join(f"{n.name}={n.peer_url}" for n in cluster.nodes) + f",n4={n4.peer_url}"
            n4.args = ["--initial-cluster", initial, "--initial-advertise-peer-urls", n4.peer_url,
                       "--initial-cluster-state", "existing", *FAST]
            n4.start(timeout=30)

            def n4_listed() -> rpc_pb2.Member | None:
                m = next(m for m in cl.MemberList(rpc_pb2.MemberListRequest(), timeout=20).members
                         if m.ID == new_id)
                return m if list(m.clientURLs) == [n4.grpc_url] else None
            m = wait_for(n4_listed, 30, "n4's gRPC URL in the member list")
            # named after its peer URL at add time (actors/grpcgw/cluster.py), whatever its --name
            assert m.name == placeholder.split("://")[1] and m.isLearner
            with grpc.insecure_channel(n4.grpc_endpoint) as ch4:
                st = rpc_pb2_grpc.MaintenanceStub(ch4).Status(rpc_pb2.StatusRequest(), timeout=20)
                assert st.isLearner and st.header.member_id == new_id

            def promoted() -> rpc_pb2.MemberPromoteResponse | None:
                try:
                    return cl.MemberPromote(rpc_pb2.MemberPromoteRequest(ID=new_id), timeout=20)
                except grpc.RpcError as exc:
                    assert exc.details() == ("etcdserver: can only promote a learner member which is in sync "
                                             "with leader"), exc
                    return None
            resp = wait_for(promoted, 30, "the learner to be promoted", interval=0.2)
            assert [m.isLearner for m in resp.members if m.ID == new_id] == [False]

            removed = cl.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=new_id), timeout=20)
            assert sorted(m.ID for m in removed.members) == sorted(n.member_id for n in cluster.nodes)
    finally:
        n4.stop()


@needs_etcdctl
def test_etcdctl_member_add_update_promote_remove(cluster):
    n1, n2, n3 = cluster.nodes
    url = f"http://127.0.0.1:{free_port()}"
    out = ok(etcdctl(cluster.nodes, "member", "add", "n4", f"--peer-urls={url}", "--learner"))
    new_id = int(out.split()[1], 16)
    assert out.startswith(f"Member {new_id:16x} added to cluster ")  # etcdctl's %16x
    assert 'ETCD_NAME="n4"' in out and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out

    def listed_row() -> list[str] | None:  # a follower may list members before it applied the add
        table = ok(etcdctl(cluster.nodes, "member", "list", "-w", "table"))
        return next((c for c in (table_cells(line) for line in table.splitlines()) if c[:1] == [f"{new_id:x}"]), None)
    cells = wait_for(listed_row, 20, "the new member listed everywhere")
    assert cells[1:] == ["unstarted", "", "tcp://" + url.split("://")[1], "", "true"], cells
    promote = etcdctl(cluster.nodes, "member", "promote", f"{new_id:x}")
    assert promote.returncode != 0 and "can only promote a learner member which is in sync with leader" in \
        promote.stderr, promote
    url2 = f"http://127.0.0.1:{free_port()}"
    assert ok(etcdctl(cluster.nodes, "member", "update", f"{new_id:x}", f"--peer-urls={url2}")).startswith(
        f"Member {new_id:16x} updated in cluster ")
    assert ok(etcdctl(cluster.nodes, "member", "remove", f"{new_id:x}")).startswith(
        f"Member {new_id:16x} removed from cluster ")
    wait_for(lambda: sorted(m["ID"] for m in json.loads(ok(etcdctl(cluster.nodes, "member", "list", "-w", "json")))[
        "members"]) == sorted(n.member_id for n in cluster.nodes), 20, "the removal applied everywhere")
    gone = etcdctl(cluster.nodes, "member", "remove", f"{new_id:x}")
    assert gone.returncode != 0 and "etcdserver: member not found" in gone.stderr, gone


# --- one member: alarms, hashes, snapshots -------------------------------------------------
def test_alarms_hashes_and_snapshot_over_grpc(node, tmp_path):
    ch, _, mt, kv = stubs(node)
    A = rpc_pb2.AlarmRequest
    with ch:
        mid = kv.Put(rpc_pb2.PutRequest(key=b"keep", value=b"me"), timeout=20).header.member_id
        for i in range(500):
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"big/%04d" % i, value=b"v" * 10_000), timeout=20)
            except grpc.RpcError as exc:
                assert (exc.code(), exc.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                       "etcdserver: mvcc: database space exceeded")
                break
        else:
            raise AssertionError("the quota was never enforced")
        wait_for(lambda: mt.Alarm(A(action=A.GET), timeout=20).alarms, 20, "the NOSPACE alarm")
        got = mt.Alarm(A(action=A.GET), timeout=20)
        assert [(a.memberID, a.alarm) for a in got.alarms] == [(mid, rpc_pb2.NOSPACE)]
        assert list(mt.Alarm(A(action=A.GET, alarm=rpc_pb2.CORRUPT), timeout=20).alarms) == []
        assert list(mt.Status(rpc_pb2.StatusRequest(), timeout=20).errors) == [f"memberID:{mid} alarm:NOSPACE "]
        assert list(mt.Alarm(A(action=A.DEACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=20).alarms) == []
        assert list(mt.Alarm(A(action=A.DEACTIVATE, memberID=mid, alarm=rpc_pb2.NONE), timeout=20).alarms) == []
        assert len(mt.Alarm(A(action=A.GET), timeout=20).alarms) == 1  # etcd: those disarm nothing

        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"big/", range_end=b"big0"), timeout=20)
        rev = kv.Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=20).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=rev), timeout=20)
        mt.Defragment(rpc_pb2.DefragmentRequest(), timeout=60)
        assert mt.Status(rpc_pb2.StatusRequest(), timeout=20).dbSize < 300000
        off = mt.Alarm(A(action=A.DEACTIVATE, memberID=mid, alarm=rpc_pb2.NOSPACE), timeout=20)
        assert [(a.memberID, a.alarm) for a in off.alarms] == [(mid, rpc_pb2.NOSPACE)]
        assert list(mt.Alarm(A(action=A.GET), timeout=20).alarms) == []
        kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"x"), timeout=20)

        # hashes: HashKV at a revision, Hash = HashKV of the current one
        rev = kv.Range(rpc_pb2.RangeRequest(key=b"small"), timeout=20).header.revision
        native = node.request({"op": "hash_kv", "revision": rev})
        hkv = mt.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=20)
        assert (hkv.hash, hkv.compact_revision, hkv.header.revision) == (native["hash"] & U32,
                                                                         native["compact_revision"], rev)
        assert mt.HashKV(rpc_pb2.HashKVRequest(revision=-5), timeout=20).hash == hkv.hash  # etcd: the current
        h = mt.Hash(rpc_pb2.HashRequest(), timeout=20)
        assert (h.hash, h.header.revision) == (hkv.hash, rev)
        err = rpc_error(mt.HashKV, rpc_pb2.HashKVRequest(revision=1))
        assert (err.code(), err.details()) == (grpc.StatusCode.OUT_OF_RANGE,
                                               "etcdserver: mvcc: required revision has been compacted")

        # Snapshot: the chunks make our snapshot file
        chunks = list(mt.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60))
        path = tmp_path / "stream.snap"
        path.write_bytes(b"".join(c.blob for c in chunks))
        meta, _ = verify(str(path))
        assert meta.revision == rev and chunks[-1].remaining_bytes == 0
        assert [c.remaining_bytes for c in chunks] == sorted((c.remaining_bytes for c in chunks), reverse=True)

        # a client that goes away mid-stream leaves the member serving
        stream = mt.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)
        next(stream)
        stream.cancel()
        assert mt.Status(rpc_pb2.StatusRequest(), timeout=20).leader == mid

        # odd and hostile requests get etcd's answers, and the member goes on
        cl = rpc_pb2_grpc.ClusterStub(ch)
        err = rpc_error(cl.MemberAdd, rpc_pb2.MemberAddRequest(peerURLs=[f"http://h{i}:1" for i in range(5000)]))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "etcdserver: given member URLs are invalid")
        assert list(mt.Alarm(A(action=7), timeout=20).alarms) == []  # an unknown action does nothing
        assert list(mt.Alarm(A(action=A.GET, alarm=99), timeout=20).alarms) == []
        assert list(mt.Alarm(A(action=A.DEACTIVATE, memberID=mid, alarm=99), timeout=20).alarms) == []
        err = rpc_error(mt.HashKV, rpc_pb2.HashKVRequest(revision=2**63 - 1))
        assert (err.code(), err.details()) == (grpc.StatusCode.OUT_OF_RANGE,
                                               "etcdserver: mvcc: required revision is a future revision")
        err = rpc_error(mt.MoveLeader, rpc_pb2.MoveLeaderRequest(targetID=2**64 - 1))
        assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
        mt.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=mid), timeout=20)  # to itself: nothing to do
        assert mt.Status(rpc_pb2.StatusRequest(), timeout=20).leader == mid


@needs_etcdctl
def test_etcdctl_alarm_defrag_hashkv_and_snapshot_save(node, tmp_path):
    n = [node]
    ch, _, _, kv = stubs(node)
    with ch:
        mid = kv.Put(rpc_pb2.PutRequest(key=b"keep", value=b"me"), timeout=20).header.member_id
        for i in range(500):
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"big/%04d" % i, value=b"v" * 10_000), timeout=20)
            except grpc.RpcError:
                break
        wait_for(lambda: ok(etcdctl(n, "alarm", "list")), 20, "the NOSPACE alarm")
        assert ok(etcdctl(n, "alarm", "list")) == f"memberID:{mid} alarm:NOSPACE \n"
        status = json.loads(ok(etcdctl(n, "endpoint", "status", "-w", "json")))[0]["Status"]
        assert status["errors"] == [f"memberID:{mid} alarm:NOSPACE "] and status["version"] == "3.4.0"
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"big/", range_end=b"big0"), timeout=20)
        rev = kv.Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=20).header.revision
        ok(etcdctl(n, "compaction", str(rev)))
        assert ok(etcdctl(n, "defrag")) == f"Finished defragmenting etcd member[{node.grpc_endpoint}]\n"
        assert ok(etcdctl(n, "alarm", "disarm")) == f"memberID:{mid} alarm:NOSPACE \n"
        assert ok(etcdctl(n, "alarm", "list")) == ""
        hashed = json.loads(ok(etcdctl(n, "endpoint", "hashkv", "-w", "json")))[0]["HashKV"]
        assert hashed["hash"] == node.request({"op": "hash_kv", "revision": 0})["hash"] & U32

    path = tmp_path / "etcdctl.snap"
    saved = ok(etcdctl(n, "snapshot", "save", str(path)))
    assert saved.strip().endswith(f"Snapshot saved at {path}"), saved
    meta, _ = verify(str(path))  # our snapshot file: qkvutl snapshot restore takes it
    assert meta.revision == rev
    # etcdctl's offline tools read bolt databases only (README: not supported)
    assert etcdctl(n, "snapshot", "status", str(path)).returncode != 0
    assert not Path(str(path) + ".part").exists()

    # qkvutl restores what etcdctl saved: a new one-member cluster with the data
    restored = NodeProcess(tmp_path / "restored", "r1", grpc=True)
    (tmp_path / "restored").mkdir()
    r = subprocess.run([sys.executable, "-m", "nodes.utl", "snapshot", "restore", str(path), "--name", "r1",
                        "--initial-cluster", f"r1={restored.peer_url}", "--initial-cluster-token", "restored",
                        "--initial-advertise-peer-urls", restored.peer_url, "--data-dir", restored.data_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    restored.args = ["--initial-cluster", f"r1={restored.peer_url}", "--initial-cluster-token", "restored"]
    try:
        restored.start()
        with grpc.insecure_channel(restored.grpc_endpoint) as ch:
            got = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=20)
            assert [(kv.key, kv.value) for kv in got.kvs] == [(b"keep", b"me")] and got.header.revision == rev
    finally:
        restored.stop()
