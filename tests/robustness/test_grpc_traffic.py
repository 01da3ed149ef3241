"""grpc_traffic.py: its conversions, and the recorders through it against etcd 3.4 itself
(so the gRPC scenario's clients follow etcd's semantics before they judge ours)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_traffic import (GrpcKV, GrpcWatchClient, Refused, error_of, is_progress_notify, prefix_end, txn_request,
                          txn_result, watch_result)
from linearizability import check_history, describe
from traffic import RecordingClient
from watch_check import check_watches, summary
from watch_traffic import RecordingWatcher

from protocol import errors
from protocol.client import Compare, Op as TxnOp
from protocol.client.txn import txn_fields
from protocol.etcdpb import kv_pb2, rpc_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

SC = grpc.StatusCode


def test_refusals_are_definite_and_the_rest_unknown_outcomes():
    lease = error_of(SC.NOT_FOUND, "etcdserver: requested lease not found")
    assert isinstance(lease, Refused) and lease.code == "lease_not_found"
    assert error_of(SC.UNAVAILABLE, "etcdserver: no leader").code == "no_leader"
    assert error_of(SC.UNIMPLEMENTED, "").code == "grpc_unimplemented"
    for code, details in ((SC.UNAVAILABLE, "etcdserver: request timed out"), (SC.UNAVAILABLE, "connection refused"),
                          (SC.DEADLINE_EXCEEDED, "Deadline Exceeded"), (SC.UNKNOWN, "boom"),
                          (SC.CANCELLED, None)):
        assert isinstance(error_of(code, details), errors.Timeout), (code, details)


def test_txn_request_from_the_native_fields():
    t = txn_request(txn_fields([Compare.mod_revision(b"k") == 7],
                               [TxnOp.put(b"k", b"v"), TxnOp.delete(b"d")], [TxnOp.get(b"k")]))
    assert t == rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, key=b"k", mod_revision=7)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k", value=b"v")),
                 rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"d"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))])
    value = txn_request(txn_fields([Compare.value(b"k") != b"x"], [], []))
    assert value.compare[0].value == b"x" and value.compare[0].result == rpc_pb2.Compare.NOT_EQUAL


def test_txn_result_flattens_the_responses():
    resp = rpc_pb2.TxnResponse(header=rpc_pb2.ResponseHeader(revision=5), succeeded=True, responses=[
        rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse()),
        rpc_pb2.ResponseOp(response_delete_range=rpc_pb2.DeleteRangeResponse(deleted=1))])
    out = txn_result(resp)
    assert out.succeeded and out.header.revision == 5 and out.responses[1].deleted == 1


def test_watch_responses():
    h = rpc_pb2.ResponseHeader(revision=9)
    assert is_progress_notify(rpc_pb2.WatchResponse(header=h, watch_id=0))
    assert not is_progress_notify(rpc_pb2.WatchResponse(header=h, created=True))
    assert not is_progress_notify(rpc_pb2.WatchResponse(header=h, canceled=True, compact_revision=3))
    put = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(key=b"a", value=b"1", mod_revision=9))
    gone = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"a", mod_revision=10),
                        prev_kv=kv_pb2.KeyValue(key=b"a", value=b"1", mod_revision=9))
    out = watch_result(rpc_pb2.WatchResponse(header=h, events=[put, gone]))
    assert not out.progress_notify and [e.type for e in out.events] == ["PUT", "DELETE"]
    assert out.events[0].prev_kv is None and out.events[1].prev_kv.value == b"1"
    assert prefix_end(b"key/") == b"key0" and prefix_end(b"\xff") == b"\x00"


def test_the_grpc_recorders_find_etcd_linearizable(tmp_path):
    """A few seconds of the gRPC scenario's traffic and watchers against one etcd member:
    the same checks, no violation (the recorders read etcd's API as etcd means it)."""
    import etcd_driver

    if not etcd_driver.available():
        pytest.skip(f"{etcd_driver.ETCD} is not installed (apt-get install etcd-server)")
    etcd = etcd_driver.EtcdProcess(tmp_path).start()
    stop = threading.Event()
    history: list = []
    lock = threading.Lock()
    workers = [RecordingClient(i, [etcd.target], i, history, lock, stop, connect=GrpcKV) for i in range(3)]
    watchers = [RecordingWatcher(i, [etcd.target], 50 + i, stop, restart_s=(1.0, 2.0), connect=GrpcWatchClient)
                for i in range(2)]
    try:
        for w in [*workers, *watchers]:
            w.start()
        stop.wait(4.0)
        stop.set()
        for w in [*workers, *watchers]:
            w.join(15)
    finally:
        stop.set()
        etcd.stop()
    sessions = [s for w in watchers for s in w.sessions]
    assert not [describe(v) for v in check_history(history)]
    assert not check_watches(sessions, history, [r for w in workers for r in w.compactions])
    counts = {k: sum(w.counts.get(k, 0) for w in workers) for k in ("put", "cas", "lease_put", "revoke", "mtxn")}
    assert counts["put"] and counts["cas"] and counts["lease_put"] and counts["mtxn"], counts
    assert summary(sessions)["events"] > 0 and not any(w.counts.get("harness_error") for w in workers)
