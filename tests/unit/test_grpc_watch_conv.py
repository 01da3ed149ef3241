"""The gRPC Watch service's pure conversions (actors/grpcgw/watch.py): etcd 3.4's rules
for ranges, ids, filters, start revisions, events, compacted ends and fragments."""
from __future__ import annotations

from actors.grpcgw import watch
from protocol import errors
from protocol.client.types import KeyValue, ResponseHeader
from protocol.client.watchcore import Event, WatchResponse
from protocol.etcdpb import kv_pb2, rpc_pb2


def test_normalize_range_and_empty_range():
    assert watch.normalize_range(b"", b"") == (b"\x00", b"")
    assert watch.normalize_range(b"", b"\x00") == (b"\x00", b"\x00")
    assert watch.normalize_range(b"a", b"b") == (b"a", b"b")
    assert watch.range_error(b"a", b"") is None
    assert watch.range_error(b"a", b"\x00") is None
    assert watch.range_error(b"a", b"b") is None
    assert watch.range_error(b"b", b"a") == "mvcc: watcher range is empty"
    assert watch.range_error(b"a", b"a") == "mvcc: watcher range is empty"


def test_filters():
    c = rpc_pb2.WatchCreateRequest(filters=[rpc_pb2.WatchCreateRequest.NOPUT])
    assert watch.filters_of(c) == ("NOPUT",)
    c = rpc_pb2.WatchCreateRequest(filters=[1, 0, 1, 7])  # unknown values ignored, as etcd
    assert watch.filters_of(c) == ("NODELETE", "NOPUT")
    assert watch.filters_of(rpc_pb2.WatchCreateRequest()) == ()


def test_start_revision():
    assert watch.start_of(0, 41) == 42  # from now: the created header's revision + 1
    assert watch.start_of(7, 41) == 7
    assert watch.start_of(100, 41) == 100  # a future revision waits for it
    assert watch.start_of(-5, 41) == 1


def test_assign_id_as_etcds_watch_stream():
    used: dict[int, object] = {}
    wid, nxt, err = watch.assign_id(0, used, 0)
    assert (wid, nxt, err) == (0, 1, None)
    used[0] = used[2] = object()
    wid, nxt, err = watch.assign_id(0, used, 1)
    assert (wid, nxt, err) == (1, 2, None)
    used[1] = object()
    wid, nxt, err = watch.assign_id(-1, used, 2)  # skips the used 2
    assert (wid, nxt, err) == (3, 4, None)
    assert watch.assign_id(2, used, 4) == (-1, 4, "mvcc: duplicate watch ID provided on the WatchStream")
    assert watch.assign_id(9, used, 4) == (9, 4, None)  # a client's id leaves the counter alone


def test_cancel_reasons():
    """etcd 3.4.23's cancel reason for a refused create is the gRPC error's text (checked
    against /usr/bin/etcd: a user without READ, an invalid token, no token)."""
    assert watch.cancel_reason(errors.PermissionDenied("x")) == \
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert watch.cancel_reason(errors.QkvError.from_wire({"code": "invalid_auth_token", "message": "m"})) == \
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
    assert watch.cancel_reason(errors.QkvError.from_wire({"code": "auth_old_revision", "message": "m"})) == \
        "rpc error: code = InvalidArgument desc = etcdserver: revision of auth store is old"
    assert watch.cancel_reason(errors.QkvError.from_wire({"code": "user_empty", "message": "m"})) == \
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
    assert watch.cancel_reason(errors.QkvError.from_wire({"code": "too_many_requests", "message": "m"})) \
        .startswith("etcdserver: ")


def kvs(key: bytes, value: bytes, rev: int) -> KeyValue:
    return KeyValue(key, value, create_revision=2, mod_revision=rev, version=rev - 1, lease=5)


def test_events_and_responses():
    header = watch.header_pb(1, 2, 0, 3)
    resp = WatchResponse(ResponseHeader(1, 2, 9, 3), [
        Event("PUT", kvs(b"k", b"new", 9), kvs(b"k", b"old", 8)),
        Event("DELETE", KeyValue(b"j", mod_revision=9)),
    ])
    pb = watch.response_pb(resp, 4, header)
    assert (pb.watch_id, pb.header.revision, pb.header.raft_term, pb.canceled) == (4, 9, 3, False)
    put, dele = pb.events
    assert put.type == kv_pb2.Event.PUT and put.kv.value == b"new" and put.prev_kv.value == b"old"
    assert (put.kv.create_revision, put.kv.mod_revision, put.kv.version, put.kv.lease) == (2, 9, 8, 5)
    assert dele.type == kv_pb2.Event.DELETE and dele.kv.key == b"j" and not dele.HasField("prev_kv")


def test_compacted_end_as_etcd():
    resp = WatchResponse(ResponseHeader(1, 2, 3, 3), canceled=True, compact_revision=4,
                         cancel_reason="mvcc: required revision has been compacted")
    pb = watch.response_pb(resp, 0, watch.header_pb(1, 2, 0, 3))
    # etcd: header revision 0, canceled, compact_revision, no cancel reason
    assert (pb.canceled, pb.compact_revision, pb.header.revision, pb.cancel_reason) == (True, 4, 0, "")


def test_fragments_as_etcds_send_fragments():
    events = [kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * 100)) for i in range(10)]
    wr = rpc_pb2.WatchResponse(watch_id=1, header=rpc_pb2.ResponseHeader(revision=5), events=events)
    assert watch.fragments(wr, wr.ByteSize() + 1) == [wr]  # under the limit: as is
    one = rpc_pb2.WatchResponse(watch_id=1, events=events[:1])
    assert watch.fragments(one, 10) == [one]  # a single event is never split
    parts = watch.fragments(wr, 400)
    assert len(parts) > 1
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    assert [e for p in parts for e in p.events] == events
    assert all(p.watch_id == 1 and p.header.revision == 5 for p in parts)
    assert all(len(p.events) == 1 or p.ByteSize() < 400 for p in parts)
    tiny = watch.fragments(wr, 1)  # every piece holds at least one event
    assert [len(p.events) for p in tiny] == [1] * 10


def test_requires_leader():
    assert watch.requires_leader([("hasleader", "true"), ("token", "t")])
    assert watch.requires_leader([("hasleader", b"true")])
    assert not watch.requires_leader([("hasleader", "false")])
    assert not watch.requires_leader(None)
