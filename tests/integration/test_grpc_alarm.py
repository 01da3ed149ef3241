"""etcd's Maintenance.Alarm ACTIVATE / GET / DEACTIVATE through the gRPC gateway (issue 18):
an activated alarm goes through the log, so every member has it and refuses what etcd
refuses while it is active; DEACTIVATE disarms exactly that member's alarm (member 0 too,
as python-etcd3's create_alarm/disarm_alarm use it); under auth only root activates;
the AlarmResponse has no header and etcdctl 3.4 prints it as it prints etcd 3.4's
(etcdctl's outputs below were taken from etcd 3.4.23 with the same alarms).
Every node is stopped by its fixture, pass or fail."""
from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster, NodeProcess, wait_for

ETCDCTL = "/usr/bin/etcdctl"
needs_etcdctl = pytest.mark.skipif(not os.path.exists(ETCDCTL), reason=f"etcd's etcdctl is not installed ({ETCDCTL})")
FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]
A = rpc_pb2.AlarmRequest
T = 20  # seconds: every RPC's deadline
SPACE = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")


def status_of(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=T, **kw)
    return info.value.code(), info.value.details()


def pairs(resp: rpc_pb2.AlarmResponse) -> list[tuple[int, int]]:
    return sorted((a.memberID, a.alarm) for a in resp.alarms)


def etcdctl(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, "--endpoints", node.grpc_endpoint, "--command-timeout", "20s", *args],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, timeout=60)


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(tmp_path, grpc=True)
    try:
        n.start()
        yield n
    finally:
        n.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 3, args=FAST, grpc=True)
    try:
        c.start()
        c.leader()
        yield c
    finally:
        c.stop()


def test_activate_list_refuse_disarm(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        mt, kv = rpc_pb2_grpc.MaintenanceStub(ch), rpc_pb2_grpc.KVStub(ch)
        mid = kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=T).header.member_id
        # python-etcd3's create_alarm(): member 0, NOSPACE; the answer is the alarm, no header
        got = mt.Alarm(A(action=A.ACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=T)
        assert pairs(got) == [(0, rpc_pb2.NOSPACE)] and not got.HasField("header")
        again = mt.Alarm(A(action=A.ACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=T)
        assert pairs(again) == [(0, rpc_pb2.NOSPACE)]  # etcd: the alarm it already holds
        assert pairs(mt.Alarm(A(action=A.ACTIVATE, memberID=mid, alarm=rpc_pb2.NOSPACE), timeout=T)) == [
            (mid, rpc_pb2.NOSPACE)]
        listed = mt.Alarm(A(action=A.GET), timeout=T)
        assert pairs(listed) == [(0, rpc_pb2.NOSPACE), (mid, rpc_pb2.NOSPACE)]
        assert not listed.HasField("header")
        assert pairs(mt.Alarm(A(action=A.GET, alarm=rpc_pb2.CORRUPT), timeout=T)) == []

        # NOSPACE: what adds data is refused with etcd's error; deletes and reads go on
        assert status_of(kv.Put, rpc_pb2.PutRequest(key=b"k2", value=b"v")) == SPACE
        assert status_of(kv.Txn, rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
            request_put=rpc_pb2.PutRequest(key=b"k3", value=b"v"))])) == SPACE
        assert kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k"), timeout=T).deleted == 1
        assert kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=T).count == 0
        assert list(mt.Status(rpc_pb2.StatusRequest(), timeout=T).errors) == [
            "memberID:0 alarm:NOSPACE ", f"memberID:{mid} alarm:NOSPACE "]

        # DEACTIVATE is exact: member 0's alarm only, then mid's; NONE disarms nothing
        assert pairs(mt.Alarm(A(action=A.DEACTIVATE, memberID=mid, alarm=rpc_pb2.NONE), timeout=T)) == []
        off = mt.Alarm(A(action=A.DEACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=T)
        assert pairs(off) == [(0, rpc_pb2.NOSPACE)] and not off.HasField("header")
        assert pairs(mt.Alarm(A(action=A.GET), timeout=T)) == [(mid, rpc_pb2.NOSPACE)]
        assert status_of(kv.Put, rpc_pb2.PutRequest(key=b"k2", value=b"v")) == SPACE
        assert pairs(mt.Alarm(A(action=A.DEACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=T)) == []
        assert pairs(mt.Alarm(A(action=A.DEACTIVATE, memberID=mid, alarm=rpc_pb2.NOSPACE), timeout=T)) == [
            (mid, rpc_pb2.NOSPACE)]
        assert pairs(mt.Alarm(A(action=A.GET), timeout=T)) == []
        kv.Put(rpc_pb2.PutRequest(key=b"k2", value=b"v"), timeout=T)

        # CORRUPT for an id that is no member (etcd keeps it): every write refused
        bogus = 0xFFFFFFFFFFFFFFFF
        assert pairs(mt.Alarm(A(action=A.ACTIVATE, memberID=bogus, alarm=rpc_pb2.CORRUPT), timeout=T)) == [
            (bogus, rpc_pb2.CORRUPT)]
        assert status_of(kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=b"k2")) == (
            grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
        mt.Alarm(A(action=A.DEACTIVATE, memberID=bogus, alarm=rpc_pb2.CORRUPT), timeout=T)
        assert kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k2"), timeout=T).deleted == 1

        # a type we cannot raise: a clear refusal, and the member goes on
        for bad in (rpc_pb2.NONE, 99):
            code, message = status_of(mt.Alarm, A(action=A.ACTIVATE, memberID=mid, alarm=bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot be activated" in message
        assert pairs(mt.Alarm(A(action=A.GET), timeout=T)) == []


def test_the_native_client_activates_and_disarms_exactly(node):
    from protocol.client import Client
    with Client(node.client_url, timeout=T) as c:
        assert [(a.member_id, a.alarm) for a in c.alarm_activate(0, "nospace").alarms] == [(0, "NOSPACE")]
        c.alarm_activate(7, "NOSPACE")
        assert [(a.member_id, a.alarm) for a in c.alarm_disarm(0, "NOSPACE", exact=True).alarms] == [(0, "NOSPACE")]
        assert [(a.member_id, a.alarm) for a in c.alarm_list().alarms] == [(7, "NOSPACE")]
        with pytest.raises(Exception) as info:
            c.alarm_activate(1, "FIRE")
        assert "alarm must be one of NOSPACE, CORRUPT" in str(info.value)
        c.alarm_disarm()
        assert c.alarm_list().alarms == []


@needs_etcdctl
def test_etcdctl_prints_our_alarms_as_etcds(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        mt = rpc_pb2_grpc.MaintenanceStub(ch)
        mt.Alarm(A(action=A.ACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE), timeout=T)
        mt.Alarm(A(action=A.ACTIVATE, memberID=4660, alarm=rpc_pb2.CORRUPT), timeout=T)
        # etcd 3.4.23 with the same two alarms printed these (no header anywhere); its order is a Go
        # map's, so it varies from run to run (this is one of them): ours is by member id
        expected = {
            "simple": b"alarm:NOSPACE \nmemberID:4660 alarm:CORRUPT \n",
            "json": b'{"alarms":[{"alarm":1},{"memberID":4660,"alarm":2}]}\n',
            "protobuf": bytes([0o22, 0o2, 0o20, 0o1, 0o22, 0o5, 0o10, 0o264, 0o44, 0o20, 0o2]),
        }
        for fmt, want in expected.items():
            out = etcdctl(node, "-w", fmt, "alarm", "list")
            assert (out.returncode, out.stdout) == (0, want), (fmt, out.stderr)
        # etcd's fields printer dereferences the (nil) header: etcdctl crashes on etcd, and on us
        out = etcdctl(node, "-w", "fields", "alarm", "list")
        assert out.returncode != 0 and b"nil pointer dereference" in out.stderr
        out = etcdctl(node, "-w", "json", "alarm", "disarm")
        assert (out.returncode, out.stdout) == (0, b'{"alarms":[{"alarm":1},{"memberID":4660,"alarm":2}]}\n')
        assert etcdctl(node, "-w", "json", "alarm", "list").stdout == b"{}\n"


def test_alarm_reaches_every_member(cluster):
    n1, n2, n3 = cluster.nodes
    chans = [grpc.insecure_channel(n.grpc_endpoint) for n in cluster.nodes]
    try:
        mts = [rpc_pb2_grpc.MaintenanceStub(ch) for ch in chans]
        kvs = [rpc_pb2_grpc.KVStub(ch) for ch in chans]
        kvs[0].Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=T)
        mts[0].Alarm(A(action=A.ACTIVATE, memberID=n3.member_id, alarm=rpc_pb2.NOSPACE), timeout=T)
        for mt in mts:  # GET is a linearizable read on every member
            assert pairs(mt.Alarm(A(action=A.GET), timeout=T)) == [(n3.member_id, rpc_pb2.NOSPACE)]
        for kv in kvs:
            assert status_of(kv.Put, rpc_pb2.PutRequest(key=b"k", value=b"w")) == SPACE
        for n in cluster.nodes:  # every member's store applied it (its status reads its own store)
            wait_for(lambda: n.request({"op": "status"}).get("alarms") == [
                {"member_id": n3.member_id, "alarm": "NOSPACE"}], 20, f"the alarm in {n.name}'s status")
        off = mts[1].Alarm(A(action=A.DEACTIVATE, memberID=n3.member_id, alarm=rpc_pb2.NOSPACE), timeout=T)
        assert pairs(off) == [(n3.member_id, rpc_pb2.NOSPACE)]
        for mt, kv in zip(mts, kvs):
            assert pairs(mt.Alarm(A(action=A.GET), timeout=T)) == []
            kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"x"), timeout=T)
    finally:
        for ch in chans:
            ch.close()


def test_only_root_activates_under_auth(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        a, mt = rpc_pb2_grpc.AuthStub(ch), rpc_pb2_grpc.MaintenanceStub(ch)
        for name in ("root", "bob"):
            a.UserAdd(rpc_pb2.AuthUserAddRequest(name=name, password="pw"), timeout=T)
        a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=T)
        a.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=T)
        root = (("token", a.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="pw"), timeout=T).token),)
        bob = (("token", a.Authenticate(rpc_pb2.AuthenticateRequest(name="bob", password="pw"), timeout=T).token),)
        req = A(action=A.ACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE)
        assert status_of(mt.Alarm, req) == (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        assert status_of(mt.Alarm, req, metadata=bob) == (grpc.StatusCode.PERMISSION_DENIED,
                                                           "etcdserver: permission denied")
        assert pairs(mt.Alarm(A(action=A.GET), metadata=bob, timeout=T)) == []
        assert pairs(mt.Alarm(req, metadata=root, timeout=T)) == [(0, rpc_pb2.NOSPACE)]
        assert pairs(mt.Alarm(A(action=A.GET), metadata=bob, timeout=T)) == [(0, rpc_pb2.NOSPACE)]
        off = A(action=A.DEACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE)
        assert status_of(mt.Alarm, off, metadata=bob) == (grpc.StatusCode.PERMISSION_DENIED,
                                                           "etcdserver: permission denied")
        assert pairs(mt.Alarm(off, metadata=root, timeout=T)) == [(0, rpc_pb2.NOSPACE)]
