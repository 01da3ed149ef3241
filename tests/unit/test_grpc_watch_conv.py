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


# --- etcd's unsynced watcher: history grouped (HistoryBatch) ------------------------------
def rev_response(rev: int, keys: tuple[bytes, ...] = (b"a",), term: int = 2) -> rpc_pb2.WatchResponse:
    """A per-revision response as ``response_pb`` makes one (watch 7)."""
    return rpc_pb2.WatchResponse(
        header=watch.header_pb(1, 2, rev, term), watch_id=7,
        events=[kv_pb2.Event(kv=kv_pb2.KeyValue(key=k, mod_revision=rev)) for k in keys])


def test_history_batch_groups_under_the_sync_revision():
    b = watch.HistoryBatch(50)
    assert b.syncing
    for rev in (3, 5, 9):
        wr = rev_response(rev, (b"a", b"b"))
        assert b.takes(wr)
        assert b.add(wr) is None
    out = b.flush()
    assert out is not None
    # one response: every event in order, header = the sync revision (etcd: curRev at sync)
    assert out.watch_id == 7 and out.header.revision == 50
    assert (out.header.cluster_id, out.header.member_id) == (1, 2)
    assert [(e.kv.key, e.kv.mod_revision) for e in out.events] == [
        (b"a", 3), (b"b", 3), (b"a", 5), (b"b", 5), (b"a", 9), (b"b", 9)]
    assert not out.fragment and not out.canceled and not out.created
    assert b.flush() is None  # nothing pending: nothing to send
    assert b.syncing


def test_history_batch_at_most_1000_revisions_as_etcds_watch_batch_max_revs():
    """etcd 3.4.23 with 1,251 history revisions of a key: 1000 events, then 251, both with
    the header revision of the create; a revision's several events count once."""
    assert watch.WATCH_BATCH_MAX_REVS == 1000
    b = watch.HistoryBatch(3000)
    sent = [out for rev in range(2, 2504, 2) if (out := b.add(rev_response(rev))) is not None]
    assert len(sent) == 1 and len(sent[0].events) == 1000
    assert sent[0].events[0].kv.mod_revision == 2 and sent[0].events[-1].kv.mod_revision == 2000
    last = b.end()
    assert last is not None and len(last.events) == 251
    assert last.events[0].kv.mod_revision == 2002 and last.header.revision == 3000
    assert not b.syncing


def test_history_batch_counts_revisions_not_events():
    b = watch.HistoryBatch(100, max_revs=3)
    assert b.add(rev_response(1, (b"a", b"b", b"c", b"d"))) is None
    assert b.add(rev_response(2, (b"a", b"b"))) is None
    out = b.add(rev_response(3))
    assert out is not None and len(out.events) == 7
    assert len({e.kv.mod_revision for e in out.events}) == 3


def test_history_batch_takes_only_history_events():
    b = watch.HistoryBatch(10)
    assert b.takes(rev_response(10))
    assert not b.takes(rev_response(11))  # live: one response per revision
    assert not b.takes(rpc_pb2.WatchResponse(header=watch.header_pb(1, 2, 5, 2), watch_id=7))  # no events
    ended = rev_response(5)
    ended.canceled = True
    assert not b.takes(ended)
    assert not watch.HistoryBatch(0).takes(rev_response(1))  # a watch from now groups nothing
    assert not watch.HistoryBatch(0).syncing


def test_history_batch_end_stops_grouping():
    b = watch.HistoryBatch(10)
    assert b.end() is None and not b.syncing
    assert not b.takes(rev_response(3))


def test_history_batch_keeps_the_highest_term():
    b = watch.HistoryBatch(10)
    b.add(rev_response(1, term=2))
    b.add(rev_response(2, term=4))
    out = b.flush()
    assert out is not None and out.header.raft_term == 4


def test_grouped_history_is_fragmented_like_any_response():
    b = watch.HistoryBatch(10)
    for rev in range(1, 6):
        b.add(rpc_pb2.WatchResponse(header=watch.header_pb(1, 2, rev, 2), watch_id=7, events=[
            kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", value=b"x" * 200, mod_revision=rev))]))
    out = b.flush()
    assert out is not None
    parts = watch.fragments(out, 500)
    assert len(parts) > 1 and [e for p in parts for e in p.events] == list(out.events)
    assert all(p.header.revision == 10 for p in parts)


def test_last_event_revision():
    assert watch.last_event_revision(rev_response(9, (b"a", b"b"))) == 9
    assert watch.last_event_revision(rpc_pb2.WatchResponse(header=watch.header_pb(1, 2, 4, 2))) == 4
