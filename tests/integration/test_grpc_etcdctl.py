"""Debian's etcdctl 3.4 against a 3-member quorumkv cluster's gRPC endpoints (issue 18):
(a) every command both support prints what it prints against a 3-member etcd 3.4 cluster
(tests/parity/etcdctl_grpc.py: every -w format, ids, hashes and timings masked; known
differences listed there with their reasons); (b) `etcdctl check perf --load=s` passes;
(c) `etcdctl watch --prefix` with --endpoints listing every member sees every put exactly
once, in order, while each member in turn is killed (kill -9) and restarted.
Each test skips, saying why, where /usr/bin/etcdctl (and for (a) /usr/bin/etcd) is missing.
Every process started here is stopped by its fixture or test, pass or fail."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import grpc
import pytest

from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster, NodeProcess, wait_for
from tests.parity import etcdctl_grpc

ETCD, ETCDCTL = etcdctl_grpc.ETCD, etcdctl_grpc.ETCDCTL
needs_etcdctl = pytest.mark.skipif(not os.access(ETCDCTL, os.X_OK),
                                   reason=f"etcd's etcdctl 3.4 is not installed ({ETCDCTL}; Debian: etcd-client)")
needs_etcd = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason=f"etcd 3.4 is not installed ({ETCD}; Debian: etcd-server): "
                                       "the parity run compares with it")
pytestmark = [pytest.mark.slow, needs_etcdctl]
FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 3, args=FAST, grpc=True)
    try:
        c.start()
        c.leader()
        yield c
    finally:
        c.discard()


def endpoints(c: Cluster) -> str:
    return ",".join(n.grpc_endpoint for n in c.nodes)


@needs_etcd
def test_etcdctl_prints_the_same_against_quorumkv_as_against_etcd(tmp_path):
    lines: list[str] = []
    result = etcdctl_grpc.run_parity(tmp_path, log=lines.append)
    summary = result.summary()
    print(summary)
    assert result.identical > 200, summary  # the run compared what it should
    assert not result.failures, summary
    assert not result.unexplained, summary + "\n\n" + "\n\n".join(result.unexplained)


def test_etcdctl_check_perf_load_s_passes(tmp_path):
    """etcd's own timings (heartbeat 100 ms, election 1 s): what an operator runs it with."""
    c = Cluster(tmp_path, 3, grpc=True)
    try:
        c.start()
        c.leader()
        check_perf(c)
    finally:
        c.discard()


def check_perf(cluster: Cluster) -> None:
    proc = subprocess.run([ETCDCTL, "--endpoints", endpoints(cluster), "check", "perf", "--load=s"],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=240)
    out = proc.stdout.replace("\r", "\n")
    verdicts = [line for line in out.splitlines() if "PASS" in line or "FAIL" in line or "too" in line]
    print("\n".join(verdicts))
    assert proc.returncode == 0, f"{out[-2000:]}\n{proc.stderr[-2000:]}"
    assert any(line.startswith("PASS: Throughput is") for line in verdicts), out[-2000:]
    assert verdicts[-1] == "PASS", verdicts


class Writer:
    """Puts keys w/0000, w/0001, ... once each: a txn "create if absent", retried on the
    next member after an error (a put that took effect is then not repeated)."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        self.channels = [grpc.insecure_channel(n.grpc_endpoint) for n in nodes]
        self.stubs = [rpc_pb2_grpc.KVStub(ch) for ch in self.channels]
        self.keys: list[bytes] = []
        self.turn = 0

    def put(self, key: bytes) -> None:
        txn = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                                     create_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"v"))])
        deadline = time.monotonic() + 60
        while True:
            stub = self.stubs[self.turn % len(self.stubs)]
            try:
                stub.Txn(txn, timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                self.turn += 1
                time.sleep(0.05)
        self.keys.append(key)

    def burst(self, n: int) -> None:
        for _ in range(n):
            self.put(b"w/%04d" % len(self.keys))

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def test_etcdctl_watch_survives_each_member_killed_and_restarted(cluster):
    with grpc.insecure_channel(cluster.nodes[0].grpc_endpoint) as ch:  # the watch starts after this revision
        rev = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"w/"), timeout=20).header.revision
    watch = subprocess.Popen([ETCDCTL, "--endpoints", endpoints(cluster), "watch", "--prefix", "w/",
                              "--rev", str(rev + 1)],
                             env={**os.environ, "ETCDCTL_API": "3"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")), daemon=True)
    reader.start()
    writer = Writer(cluster.nodes)
    try:
        writer.put(b"w/start")
        wait_for(lambda: "w/start\n" in lines, 30, "the watch to see its first put")
        for victim in cluster.nodes:
            writer.burst(5)
            victim.kill()
            writer.burst(10)
            victim.start(timeout=60)
            writer.burst(5)
        writer.put(b"w/end")
        wait_for(lambda: "w/end\n" in lines, 60, "the watch to see the last put")
    finally:
        writer.close()
        if watch.poll() is None:
            os.killpg(watch.pid, 2)
            try:
                watch.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(watch.pid, 9)
                watch.wait()
        reader.join(5)
    events = [lines[i:i + 3] for i in range(0, len(lines), 3)]
    assert all(e[0] == "PUT\n" and e[2] == "v\n" for e in events), lines[:30]
    seen = [e[1].rstrip("\n").encode() for e in events]
    assert seen == writer.keys, f"{len(seen)} events for {len(writer.keys)} puts; stderr: {watch.stderr.read()[-2000:]}"
