"""The gRPC gateway's KV conversions and error statuses, without a node (actors/grpcgw/)."""
from __future__ import annotations

import grpc
import pytest

from actors.grpcgw import errors as gerrors
from actors.grpcgw.backend import code_label
from actors.grpcgw.kv import range_fields, txn_fields, txn_response
from protocol import errors
from protocol.etcdpb import rpc_pb2


def test_range_request_maps_every_field_and_leaves_defaults_out():
    r = rpc_pb2.RangeRequest(key=b"a", range_end=b"b", limit=3, revision=7, sort_order=2, sort_target=4,
                             serializable=True, keys_only=True, count_only=True, min_mod_revision=1,
                             max_mod_revision=9, min_create_revision=2, max_create_revision=8)
    assert range_fields(r) == {
        "key": b"a", "range_end": b"b", "limit": 3, "revision": 7, "sort_order": "DESCEND", "sort_target": "VALUE",
        "serializable": True, "keys_only": True, "count_only": True, "min_mod_revision": 1, "max_mod_revision": 9,
        "min_create_revision": 2, "max_create_revision": 8}
    assert range_fields(rpc_pb2.RangeRequest(key=b"k")) == {"key": b"k"}


def test_txn_compares_and_nested_ops():
    t = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"k", target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.NOT_EQUAL, value=b"v"),
                 rpc_pb2.Compare(key=b"k", target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.LESS, mod_revision=5)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k", value=b"x", prev_kv=True))],
        failure=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"a", range_end=b"\0"))]))])
    assert txn_fields(t) == {
        "compare": [{"target": "VALUE", "result": "NOT_EQUAL", "key": b"k", "value": b"v"},
                    {"target": "MOD", "result": "LESS", "key": b"k", "mod_revision": 5}],
        "success": [{"put": {"key": b"k", "value": b"x", "prev_kv": True}}],
        "failure": [{"txn": {"compare": [], "success": [{"delete_range": {"key": b"a", "range_end": b"\0"}}],
                             "failure": []}}]}


def test_txn_response_sets_every_nested_header():
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)
    kv = {"key": b"k", "value": b"v", "create_revision": 2, "mod_revision": 3, "version": 1, "lease": 0}
    out = txn_response({"succeeded": True, "responses": [
        {"range": {"kvs": [kv], "more": False, "count": 1}}, {"put": {}},
        {"txn": {"succeeded": False, "responses": [{"delete_range": {"deleted": 1}}]}}]}, header)
    assert out.succeeded and out.header == header
    assert out.responses[0].response_range.kvs[0].value == b"v"
    assert out.responses[0].response_range.header == header
    assert out.responses[1].response_put.header == header
    nested = out.responses[2].response_txn
    assert not nested.succeeded and nested.responses[0].response_delete_range.deleted == 1


@pytest.mark.parametrize("err, code, message", [
    (errors.Compacted(), grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    (errors.LeaseNotFound(), grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (errors.NotLeader(), grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader"),
    (errors.InvalidAuthToken(), grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"),
    (errors.InvalidArgument("key: too long"), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key: too long"),
])
def test_errors_get_etcds_status(err, code, message):
    assert gerrors.status_of(err) == (code, message)


def test_every_error_code_has_a_status():
    missing = [code for code in errors.ERRORS_BY_CODE if code not in gerrors.STATUS]
    assert not missing, missing


def test_code_labels_are_gos():
    assert code_label(None) == "OK" and code_label(grpc.StatusCode.OK) == "OK"
    assert code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert code_label(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidArgument"
    assert code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
