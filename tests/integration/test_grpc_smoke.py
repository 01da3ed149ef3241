"""The gRPC gateway's first contact: etcd's KV service through a grpc channel (issue 18)."""
from __future__ import annotations

import grpc
import pytest

from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import NodeProcess


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(tmp_path, grpc=True).start()
    try:
        yield n
    finally:
        n.stop()


def test_put_range_and_etcds_error_status(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        put = kv.Put(rpc_pb2.PutRequest(key=b"foo", value=b"bar"), timeout=10)
        assert put.header.revision == 2 and put.header.member_id and put.header.cluster_id
        got = kv.Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=10)
        assert [(x.key, x.value, x.version) for x in got.kvs] == [(b"foo", b"bar", 1)]
        with pytest.raises(grpc.RpcError) as info:
            kv.Range(rpc_pb2.RangeRequest(key=b"foo", revision=100), timeout=10)
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert info.value.details() == "etcdserver: mvcc: required revision is a future revision"
