"""What SPEC.md tells a client written in C from it alone, checked on a real node with
bare sockets (no client library): the frame shapes (an optional empty delimiter frame),
the `id` a request must carry and what a missing or bad one gets, and the result shapes a
client parses (`prev_kvs` in key order, a txn's `{"put": {}}`, `count_only`'s `kvs: []`,
`history`'s `limit_revisions` bound and event order). Issue 15, SPEC list."""
from __future__ import annotations

import msgpack
import pytest
import zmq

from nodeproc import NodeProcess
from protocol.codec import pack, unpack

TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("spec_wire"))
    try:
        n.start()
        yield n
    finally:
        n.discard()


@pytest.fixture
def sock(node):
    """A DEALER on the node's client port; frames in, frames out."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(node.client_url)
    yield s
    s.close()


def exchange(sock: zmq.Socket, frames: list[bytes]) -> list[bytes]:
    sock.send_multipart(frames)
    assert sock.poll(TIMEOUT_MS), f"no reply to {frames!r}"
    return sock.recv_multipart()


def call(sock: zmq.Socket, req: dict) -> dict:
    (frame,) = exchange(sock, [pack(req)])
    return unpack(frame)


def ok(reply: dict) -> dict:
    assert reply["ok"] is True, reply
    return reply


# --- section 1: frames ---------------------------------------------------------------
def test_one_frame_in_one_frame_out(sock):
    frames = exchange(sock, [pack({"id": 1, "op": "range", "key": b"nothing"})])
    assert len(frames) == 1 and frames[0][0] == 1
    assert ok(unpack(frames[0]))["id"] == 1


def test_an_empty_delimiter_frame_may_precede_the_payload_and_is_echoed(sock):
    frames = exchange(sock, [b"", pack({"id": 2, "op": "range", "key": b"nothing"})])
    assert len(frames) == 2 and frames[0] == b""
    assert ok(unpack(frames[1]))["id"] == 2
    # errors too come back behind the delimiter
    frames = exchange(sock, [b"", pack({"id": 3, "op": "no_such_op"})])
    assert frames[0] == b"" and unpack(frames[1])["error"]["code"] == "unknown_op"


def test_a_req_socket_works_as_is(node):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(node.client_url)
    try:
        s.send(pack({"id": 4, "op": "status"}))
        assert s.poll(TIMEOUT_MS)
        assert ok(unpack(s.recv()))["id"] == 4
    finally:
        s.close()


@pytest.mark.parametrize("frames", [
    [b"x", pack({"id": 5, "op": "status"})],            # a non-empty frame before the payload
    [b"", b"", pack({"id": 5, "op": "status"})],        # two delimiters
    [pack({"id": 5, "op": "status"}), b""],             # a frame after the payload
])
def test_any_other_shape_is_malformed_without_an_id(sock, frames):
    reply_frames = exchange(sock, frames)
    reply = unpack(reply_frames[-1])
    assert reply["ok"] is False and reply["error"]["code"] == "malformed"
    assert reply["id"] is None


@pytest.mark.parametrize("frame", [b"", b"\x02" + msgpack.packb({"id": 6, "op": "status"}),
                                   b"\x01\xc1", b"\x01" + msgpack.packb([6, "status"])])
def test_a_frame_that_is_not_version_byte_and_map_is_malformed(sock, frame):
    reply = call_raw(sock, frame)
    assert reply["error"]["code"] == "malformed" and reply["id"] is None


def call_raw(sock: zmq.Socket, frame: bytes) -> dict:
    (reply,) = exchange(sock, [frame])
    return unpack(reply)


# --- section 1: the request id ---------------------------------------------------------
def test_a_missing_id_is_invalid_argument_with_a_nil_id(sock):
    reply = call(sock, {"op": "status"})
    assert reply["ok"] is False and reply["id"] is None
    assert reply["error"]["code"] == "invalid_argument"
    assert "id must be an unsigned 64-bit integer" in reply["error"]["message"]


@pytest.mark.parametrize("bad", [None, -1, -(2**63), "7", b"7", 1.0, True, [7], {"id": 7}])
def test_a_bad_id_is_invalid_argument_with_a_nil_id_and_does_nothing(sock, bad):
    reply = call(sock, {"id": bad, "op": "put", "key": b"spec/bad-id", "value": b"x"})
    assert reply["ok"] is False and reply["id"] is None
    assert reply["error"]["code"] == "invalid_argument"
    got = ok(call(sock, {"id": 8, "op": "range", "key": b"spec/bad-id"}))
    assert got["count"] == 0  # the put was not made


def test_the_id_is_checked_before_the_op(sock):
    reply = call(sock, {"op": "no_such_op"})
    assert reply["error"]["code"] == "invalid_argument" and reply["id"] is None


@pytest.mark.parametrize("good", [0, 1, 2**63, 2**64 - 1])
def test_any_uint64_id_is_echoed_on_success_and_on_error(sock, good):
    assert ok(call(sock, {"id": good, "op": "range", "key": b"x"}))["id"] == good
    reply = call(sock, {"id": good, "op": "range"})
    assert reply["error"]["code"] == "key_not_provided" and reply["id"] == good


def test_the_server_does_not_check_that_ids_are_unique(sock):
    # two requests in flight with one id: both are served, both replies carry the id
    sock.send(pack({"id": 9, "op": "range", "key": b"a"}))
    sock.send(pack({"id": 9, "op": "range", "key": b"b"}))
    replies = []
    for _ in range(2):
        assert sock.poll(TIMEOUT_MS)
        replies.append(unpack(sock.recv()))
    assert [r["id"] for r in replies] == [9, 9] and all(r["ok"] for r in replies)


# --- section 3: result shapes ------------------------------------------------------------
def test_prev_kvs_come_in_key_order_and_are_present_when_asked(sock):
    for key in (b"spec/pk/c", b"spec/pk/a", b"spec/pk/b"):  # written out of order
        ok(call(sock, {"id": 10, "op": "put", "key": key, "value": key[-1:]}))
    reply = ok(call(sock, {"id": 11, "op": "delete_range", "key": b"spec/pk/", "range_end": b"spec/pk0",
                           "prev_kv": True}))
    assert reply["deleted"] == 3
    assert [kv["key"] for kv in reply["prev_kvs"]] == [b"spec/pk/a", b"spec/pk/b", b"spec/pk/c"]
    assert [kv["value"] for kv in reply["prev_kvs"]] == [b"a", b"b", b"c"]
    rev = reply["header"]["revision"]
    # the DELETE events of that revision, in history, are in the same (key) order
    hist = ok(call(sock, {"id": 12, "op": "history", "key": b"spec/pk/", "range_end": b"spec/pk0",
                          "start_revision": rev, "end_revision": rev}))
    assert [(e["type"], e["kv"]["key"]) for e in hist["revisions"][0]["events"]] == [
        ("DELETE", b"spec/pk/a"), ("DELETE", b"spec/pk/b"), ("DELETE", b"spec/pk/c")]
    # asked for, nothing deleted: an empty list; not asked for: no field at all
    reply = ok(call(sock, {"id": 13, "op": "delete_range", "key": b"spec/pk/", "range_end": b"spec/pk0",
                           "prev_kv": True}))
    assert reply["deleted"] == 0 and reply["prev_kvs"] == []
    assert reply["header"]["revision"] == rev  # deleting nothing does not move the revision
    reply = ok(call(sock, {"id": 14, "op": "delete_range", "key": b"spec/pk/", "range_end": b"spec/pk0"}))
    assert "prev_kvs" not in reply


def test_a_put_result_is_empty_and_a_txn_put_response_is_an_empty_map(sock):
    reply = ok(call(sock, {"id": 15, "op": "put", "key": b"spec/tx", "value": b"1"}))
    assert set(reply) == {"id", "ok", "header"}
    reply = ok(call(sock, {"id": 16, "op": "txn", "compare": [], "success": [
        {"put": {"key": b"spec/tx", "value": b"2"}},
        {"put": {"key": b"spec/tx2", "value": b"x", "prev_kv": True}},  # no previous value
        {"put": {"key": b"spec/tx3", "value": b"y", "prev_kv": False}},
        {"range": {"key": b"spec/tx", "count_only": True}},
        {"delete_range": {"key": b"spec/nothing"}},
    ]}))
    assert reply["succeeded"] is True
    r = reply["responses"]
    assert r[0] == {"put": {}} and r[1] == {"put": {}} and r[2] == {"put": {}}
    assert r[3] == {"range": {"kvs": [], "more": False, "count": 1}}
    assert r[4] == {"delete_range": {"deleted": 0}}
    # with prev_kv and a previous value: {"put": {"prev_kv": KeyValue}}
    reply = ok(call(sock, {"id": 26, "op": "txn", "success": [
        {"put": {"key": b"spec/tx", "value": b"3", "prev_kv": True}}]}))
    assert reply["responses"][0]["put"]["prev_kv"]["value"] == b"2"
    assert set(reply["responses"][0]["put"]) == {"prev_kv"}


def test_count_only_returns_an_empty_kvs_list_and_more_false(sock):
    for i in range(5):
        ok(call(sock, {"id": 17, "op": "put", "key": b"spec/co/%d" % i, "value": b"v"}))
    reply = ok(call(sock, {"id": 18, "op": "range", "key": b"spec/co/", "range_end": b"spec/co0",
                           "count_only": True, "limit": 2}))
    assert reply["kvs"] == [] and reply["count"] == 5 and reply["more"] is False
    reply = ok(call(sock, {"id": 19, "op": "range", "key": b"spec/co/", "range_end": b"spec/co0", "limit": 2}))
    assert len(reply["kvs"]) == 2 and reply["count"] == 5 and reply["more"] is True


# --- section 3: history ------------------------------------------------------------------
def test_history_limit_revisions_above_10000_is_refused(sock):
    reply = call(sock, {"id": 20, "op": "history", "key": b"a", "limit_revisions": 10_001})
    assert reply["id"] == 20 and reply["error"]["code"] == "invalid_argument"
    assert "limit_revisions must be at most 10000" in reply["error"]["message"]
    ok(call(sock, {"id": 21, "op": "history", "key": b"a", "limit_revisions": 10_000}))


def test_history_pages_by_limit_revisions_exactly(sock):
    first = ok(call(sock, {"id": 22, "op": "put", "key": b"spec/page", "value": b"0"}))["header"]["revision"]
    for i in range(1, 5):
        ok(call(sock, {"id": 23, "op": "put", "key": b"spec/page", "value": b"%d" % i}))
    reply = ok(call(sock, {"id": 24, "op": "history", "key": b"spec/page", "start_revision": first,
                           "limit_revisions": 2}))
    assert reply["last_revision"] == first + 1 and reply["more"] is True
    assert [g["revision"] for g in reply["revisions"]] == [first, first + 1]
    # a start beyond the current revision: nothing, more false, last_revision = current
    current = reply["header"]["revision"]
    reply = ok(call(sock, {"id": 25, "op": "history", "key": b"spec/page", "start_revision": current + 10}))
    assert reply["revisions"] == [] and reply["more"] is False and reply["last_revision"] == current
