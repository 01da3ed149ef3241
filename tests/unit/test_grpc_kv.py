"""The gRPC gateway's KV conversions and error statuses, without a node (actors/grpcgw/)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from actors.grpcgw import errors as gerrors
from actors.grpcgw.backend import code_label
from actors.grpcgw.kv import KVServicer, compare_fields, has_empty_op, range_fields, txn_fields, txn_response
from protocol import errors
from protocol.etcdpb import rpc_pb2


def test_range_request_maps_every_field_and_leaves_defaults_out():
    r = rpc_pb2.RangeRequest(key=b"a", range_end=b"b", limit=3, revision=7, sort_order=2, sort_target=4,
                             serializable=True, keys_only=True, count_only=True, min_mod_revision=1,
                             max_mod_revision=9, min_create_revision=2, max_create_revision=8)
    assert range_fields(r) == {  # no limit with count_only: etcd never says "more" then
        "key": b"a", "range_end": b"b", "revision": 7, "sort_order": "DESCEND", "sort_target": "VALUE",
        "serializable": True, "keys_only": True, "count_only": True, "min_mod_revision": 1, "max_mod_revision": 9,
        "min_create_revision": 2, "max_create_revision": 8}
    assert range_fields(rpc_pb2.RangeRequest(key=b"k")) == {"key": b"k"}
    assert range_fields(rpc_pb2.RangeRequest(key=b"k", limit=3))["limit"] == 3


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


def test_txn_response_nested_headers_carry_only_the_revision_each_op_saw():
    """etcd 3.4 (checked against /usr/bin/etcd): the full header on the txn only; a nested
    op's header has the revision before the txn, plus one once the txn changed a key; a
    nested txn's header is empty."""
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=8, raft_term=4)
    kv = {"key": b"k", "value": b"v", "create_revision": 2, "mod_revision": 3, "version": 1, "lease": 0}
    out = txn_response({"succeeded": True, "responses": [
        {"range": {"kvs": [kv], "more": False, "count": 1}}, {"delete_range": {"deleted": 0}}, {"put": {}},
        {"range": {"kvs": [], "count": 0}},
        {"txn": {"succeeded": False, "responses": [{"delete_range": {"deleted": 1}}, {"txn": {"succeeded": True}}]}}]},
        header)
    assert out.succeeded and out.header == header
    assert out.responses[0].response_range.kvs[0].value == b"v"
    revisions = [out.responses[i].WhichOneof("response") for i in range(4)]
    assert revisions == ["response_range", "response_delete_range", "response_put", "response_range"]
    assert out.responses[0].response_range.header == rpc_pb2.ResponseHeader(revision=7)  # before the put
    assert out.responses[1].response_delete_range.header == rpc_pb2.ResponseHeader(revision=7)  # deleted nothing
    assert out.responses[2].response_put.header == rpc_pb2.ResponseHeader(revision=8)
    assert out.responses[3].response_range.header == rpc_pb2.ResponseHeader(revision=8)
    nested = out.responses[4].response_txn
    assert nested.HasField("header") and nested.header == rpc_pb2.ResponseHeader()
    assert not nested.succeeded and nested.responses[0].response_delete_range.deleted == 1
    assert nested.responses[0].response_delete_range.header.revision == 8
    assert nested.responses[1].response_txn.header == rpc_pb2.ResponseHeader()


def test_txn_response_of_a_txn_that_wrote_nothing_keeps_its_revision():
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=5, raft_term=4)
    out = txn_response({"succeeded": True, "responses": [{"range": {"count": 0}}, {"delete_range": {"deleted": 0}}]},
                       header)
    assert [out.responses[0].response_range.header.revision,
            out.responses[1].response_delete_range.header.revision] == [5, 5]
    first_delete = txn_response({"succeeded": True, "responses": [{"delete_range": {"deleted": 2}},
                                                                  {"range": {"count": 0}}]}, header)
    assert [first_delete.responses[0].response_delete_range.header.revision,
            first_delete.responses[1].response_range.header.revision] == [5, 5]


# --- etcd 3.4's reading of odd values (each checked against /usr/bin/etcd 3.4.23) ------------
ALL = {"key": b"a", "range_end": b"\0"}


@pytest.mark.parametrize("name", ["limit", "revision", "min_mod_revision", "min_create_revision",
                                  "max_mod_revision", "max_create_revision"])
def test_range_zero_and_negative_limits_revisions_and_min_bounds_mean_none(name):
    assert range_fields(rpc_pb2.RangeRequest(key=b"a", range_end=b"\0", **{name: 0})) == ALL
    if not name.startswith("max"):
        assert range_fields(rpc_pb2.RangeRequest(key=b"a", range_end=b"\0", **{name: -1})) == ALL


@pytest.mark.parametrize("name", ["max_mod_revision", "max_create_revision"])
def test_range_negative_max_bound_leaves_no_key_but_the_count(name):
    """etcd filters every key out (kv.ModRevision > -1) after counting the range."""
    r = rpc_pb2.RangeRequest(key=b"a", range_end=b"\0", limit=1, **{name: -1})
    assert range_fields(r) == {**ALL, "count_only": True}


def test_range_sort_order_and_target_as_etcd_reads_them():
    def sort(order: int, target: int) -> dict:
        f = range_fields(rpc_pb2.RangeRequest(key=b"a", sort_order=order, sort_target=target))
        return {k: v for k, v in f.items() if k.startswith("sort")}
    assert sort(7, 0) == {} and sort(-1, 4) == {} and sort(7, 9) == {}  # an unknown order sorts nothing
    assert sort(0, 1) == {"sort_order": "ASCEND", "sort_target": "VERSION"}  # a target with NONE: ascending
    assert sort(2, 0) == {"sort_order": "DESCEND"} and sort(0, 0) == {}
    # an unknown target etcd would sort by (its nil sorter panics): our validator refuses it
    assert sort(0, 9) == {"sort_order": "ASCEND", "sort_target": 9}
    assert sort(2, 9) == {"sort_order": "DESCEND", "sort_target": 9}


def test_compare_with_unknown_result_or_target_gives_etcds_outcome():
    def cmp(target: int, result: int) -> dict:
        return compare_fields(rpc_pb2.Compare(key=b"k", range_end=b"l", target=target, result=result, version=3))
    keys = {"key": b"k", "range_end": b"l"}
    always = {"target": "CREATE", "result": "LESS", "create_revision": 2**63 - 1, **keys}
    never = {"target": "CREATE", "result": "LESS", "create_revision": 0, **keys}
    any_key = {"target": "CREATE", "result": "GREATER", "create_revision": 0, **keys}
    assert cmp(0, 9) == always and cmp(2, -1) == always and cmp(8, 9) == always
    assert cmp(3, 9) == any_key  # VALUE: false on an empty range, else true
    assert cmp(8, 0) == always  # an unknown target compares 0 with 0
    assert cmp(8, 1) == never and cmp(8, 2) == never and cmp(8, 3) == never
    assert cmp(0, 3) == {"target": "VERSION", "result": "NOT_EQUAL", "version": 3, **keys}


def _op(**kw) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(**kw)


def test_an_empty_request_op_is_found_where_etcds_check_meets_it():
    put = _op(request_put=rpc_pb2.PutRequest(key=b"k"))
    assert has_empty_op(rpc_pb2.TxnRequest(success=[put, _op()]))
    assert has_empty_op(rpc_pb2.TxnRequest(failure=[_op()]))
    assert has_empty_op(rpc_pb2.TxnRequest(success=[_op(request_txn=rpc_pb2.TxnRequest(failure=[_op()]))]))
    assert not has_empty_op(rpc_pb2.TxnRequest(success=[put]))
    # an error etcd's check meets first: ours reports it (not "key not found")
    assert not has_empty_op(rpc_pb2.TxnRequest(success=[_op(request_put=rpc_pb2.PutRequest()), _op()]))
    assert not has_empty_op(rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare()], success=[_op()]))


class FakeBackend:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def call(self, context, req, *, timeout=None):
        self.sent.append(req)
        return {"header": {"cluster_id": 1, "member_id": 2, "revision": 9, "raft_term": 1}}

    def header(self, reply=None):
        return rpc_pb2.ResponseHeader(**(reply or {}).get("header", {}))

    async def abort(self, context, err):
        raise Aborted(gerrors.status_of(err))


class Aborted(Exception):
    pass


class Ctx:
    def time_remaining(self):
        return None


def test_txn_with_an_empty_request_op_is_etcds_key_not_found():
    b = FakeBackend()
    with pytest.raises(Aborted) as info:
        asyncio.run(KVServicer(b).Txn.__wrapped__(KVServicer(b), rpc_pb2.TxnRequest(success=[_op()]), Ctx()))
    assert info.value.args[0] == (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found") and b.sent == []


def test_a_negative_compact_revision_is_sent_as_0_which_is_always_compacted():
    b = FakeBackend()
    s = KVServicer(b)
    for rev in (-5, -1, 0, 7):
        asyncio.run(KVServicer.Compact.__wrapped__(s, rpc_pb2.CompactionRequest(revision=rev), Ctx()))
    assert [r["revision"] for r in b.sent] == [0, 0, 0, 7]


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
