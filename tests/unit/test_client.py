"""The client library against the in-process fake gateway (tests/fakeserver.py).

Tests that take ``client`` or ``make_client`` run against both clients (the threaded one and
the asyncio one through tests/aioclient.py: tests/conftest.py ``client_kind``); those
marked ``threaded_only`` test the threaded transport itself."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import FakeServer  # noqa: E402
from protocol import errors  # noqa: E402
from protocol.client import Client, Compare, KeyValue, Op, key_range, prefix_end  # noqa: E402


@pytest.fixture
def srv2():
    with FakeServer() as s:
        yield s


def dead_endpoint() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


# -- pure helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize("prefix,end", [
    (b"a", b"b"), (b"abc", b"abd"), (b"a\xff", b"b"), (b"ab\xff\xff", b"ac"),
    (b"\xff", b"\x00"), (b"\xff\xff", b"\x00"), (b"", b"\x00"), (b"\x00", b"\x01"),
])
def test_prefix_end(prefix, end):
    assert prefix_end(prefix) == end


def test_key_range_forms():
    assert key_range("foo") == (b"foo", b"")
    assert key_range("a", "c") == (b"a", b"c")
    assert key_range("foo", prefix=True) == (b"foo", b"fop")
    assert key_range("", prefix=True) == (b"\x00", b"\x00")
    assert key_range("k", from_key=True) == (b"k", b"\x00")
    assert key_range("", from_key=True) == (b"\x00", b"\x00")
    with pytest.raises(ValueError):
        key_range("a", prefix=True, from_key=True)
    with pytest.raises(TypeError):
        key_range(5)


def test_compare_and_op_wire_shapes():
    assert (Compare.value("k") == b"v").to_wire() == {
        "target": "VALUE", "result": "EQUAL", "key": b"k", "value": b"v"}
    assert (Compare.mod_revision("k") < 5).to_wire() == {
        "target": "MOD", "result": "LESS", "key": b"k", "mod_revision": 5}
    assert (Compare.version("k", prefix=True) > 1).to_wire() == {
        "target": "VERSION", "result": "GREATER", "key": b"k", "range_end": b"l", "version": 1}
    assert (Compare.create_revision("k") != 0).to_wire()["result"] == "NOT_EQUAL"
    assert (Compare.lease("k") == 7).to_wire()["lease"] == 7
    with pytest.raises(TypeError):
        Compare.version("k") == "1"
    assert Op.put("k", "v", prev_kv=True).to_wire() == {
        "put": {"key": b"k", "value": b"v", "prev_kv": True}}
    assert Op.get("k", prefix=True, sort_target="MODIFY", sort_order="descend").to_wire() == {
        "range": {"key": b"k", "range_end": b"l", "sort_order": "DESCEND", "sort_target": "MOD"}}
    assert Op.delete("a", "c").to_wire() == {"delete_range": {"key": b"a", "range_end": b"c"}}
    assert Op.txn([Compare.version("k") == 0], [Op.put("k", "1")]).to_wire() == {"txn": {
        "compare": [{"target": "VERSION", "result": "EQUAL", "key": b"k", "version": 0}],
        "success": [{"put": {"key": b"k", "value": b"1"}}], "failure": []}}
    assert Op.put("k").is_write and not Op.get("k").is_write
    assert Op.txn([], [Op.get("a")]).is_write is False


def test_endpoint_forms(make_client):
    c = make_client(["127.0.0.1:7379", "tcp://h:1", "http://h:2"])
    assert c.endpoints == ["tcp://127.0.0.1:7379", "tcp://h:1", "tcp://h:2"]
    c.close()
    assert make_client("a:1,b:2").endpoints == ["tcp://a:1", "tcp://b:2"]
    with pytest.raises(ValueError):
        make_client([])


# -- KV round trips -------------------------------------------------------------------------
def test_put_get_delete(client, srv):
    r = client.put("foo", "bar")
    assert r.header.revision == 2 and r.prev_kv is None
    assert r.header.cluster_id and r.header.member_id and r.header.raft_term == 2
    r = client.put(b"foo", b"baz", prev_kv=True)
    assert r.prev_kv == KeyValue(b"foo", b"bar", 2, 2, 1, 0)
    g = client.get("foo")
    assert g.count == 1 and g.kvs == [KeyValue(b"foo", b"baz", 2, 3, 2, 0)]
    client.put("fop", "x")
    client.put("fo", "y")
    assert [kv.key for kv in client.get("foo", prefix=True).kvs] == [b"foo"]
    assert [kv.key for kv in client.get("fo", prefix=True).kvs] == [b"fo", b"foo", b"fop"]
    assert [kv.key for kv in client.get("foo", from_key=True).kvs] == [b"foo", b"fop"]
    g = client.get("", prefix=True, limit=2, sort_order="DESCEND")
    assert [kv.key for kv in g.kvs] == [b"fop", b"foo"] and g.more and g.count == 3
    g = client.get("fo", prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in g.kvs)
    assert client.get("fo", prefix=True, count_only=True).kvs == []
    assert client.get("foo", revision=2).kvs[0].value == b"bar"
    d = client.delete("fo", prefix=True, prev_kv=True)
    assert d.deleted == 3 and sorted(kv.key for kv in d.prev_kvs) == [b"fo", b"foo", b"fop"]
    assert client.get("foo").kvs == []
    assert client.delete("nothing").deleted == 0
    sent = [r for r in srv.requests if r["op"] == "range"]
    assert sent[1] == {"id": sent[1]["id"], "op": "range", "key": b"foo", "range_end": b"fop"}


def test_txn_call_and_builder(client, srv):
    client.put("k", "v")
    r = client.txn(compare=[Compare.value("k") == b"v"], success=[Op.put("k", "x"), Op.get("k")],
                   failure=[Op.get("k")])
    assert r.succeeded is True
    assert r.responses[0].header.revision == r.header.revision == 3
    assert r.responses[1].kvs[0].value == b"x"
    wire = srv.requests[-1]
    assert wire["op"] == "txn" and wire["compare"] == [
        {"target": "VALUE", "result": "EQUAL", "key": b"k", "value": b"v"}]
    assert wire["success"] == [{"put": {"key": b"k", "value": b"x"}}, {"range": {"key": b"k"}}]
    r = (client.txn().if_(Compare.mod_revision("k") < 2)
         .then(Op.delete("k")).else_(Op.get("k"), Op.put("z", "1", prev_kv=True)).commit())
    assert r.succeeded is False and r.responses[0].kvs[0].value == b"x"
    assert r.responses[1].prev_kv is None
    nested = client.txn([], [Op.txn([Compare.version("k") > 0], [Op.delete("k", prev_kv=True)])])
    inner = nested.responses[0]
    assert inner.succeeded and inner.responses[0].deleted == 1


def test_compact_status_request(client, srv):
    for i in range(3):
        client.put("a", str(i))
    assert client.compact(3, physical=True).header.revision == 4
    assert srv.requests[-1] == {"id": srv.requests[-1]["id"], "op": "compact", "revision": 3,
                                "physical": True}
    with pytest.raises(errors.Compacted) as exc:
        client.get("a", revision=2)
    assert exc.value.details["compact_revision"] == 3
    with pytest.raises(errors.FutureRevision):
        client.get("a", revision=99)
    st = client.status()
    assert st.version and st.leader == st.header.member_id and st.raft_term == 2
    assert st.compact_revision == 3
    reply = client.request({"op": "range", "key": b"a", "id": 12345})
    assert reply["ok"] is True and reply["kvs"][0]["value"] == b"2" and reply["id"] != 12345
    with pytest.raises(errors.UnknownOp):
        client.request({"op": "nope"})


@pytest.mark.parametrize("code,cls", [
    ("key_not_provided", errors.KeyNotProvided), ("duplicate_key", errors.DuplicateKey),
    ("too_many_ops", errors.TooManyOps), ("request_too_large", errors.RequestTooLarge),
    ("lease_not_found", errors.LeaseNotFound), ("timeout", errors.Timeout),
    ("unknown_outcome", errors.UnknownOutcome), ("internal", errors.Internal),
    ("invalid_argument", errors.InvalidArgument), ("something_new", errors.Internal),
])
def test_error_replies_map_to_classes(client, srv, code, cls):
    srv.error_code = code
    with pytest.raises(cls) as exc:
        client.put("k", "v")
    assert exc.value.message == f"fake: {code}"
    assert srv.ops_received("put") == 1  # non-retryable errors are never retried


def test_server_side_validation_errors(client):
    with pytest.raises(errors.KeyNotProvided):
        client.put("", "v")
    with pytest.raises(errors.KeyNotFound):
        client.put("missing", ignore_value=True)
    with pytest.raises(errors.LeaseNotFound):
        client.put("k", "v", lease=0x694D)
    with pytest.raises(errors.DuplicateKey):
        client.txn([], [Op.put("a", "1"), Op.put("a", "2")])


# -- failover, timeouts, retries -------------------------------------------------------------
def test_read_fails_over_when_a_member_does_not_answer(srv, srv2, make_client):
    srv.drop_replies = True
    srv2.store.put(b"k", b"v")
    with make_client([srv.endpoint, srv2.endpoint], timeout=2.0) as c:
        assert c.get("k").kvs[0].value == b"v"
        assert srv.ops_received("range") == 1 and srv2.ops_received("range") == 1
        # the client now prefers the member that answered
        c.get("k")
        assert srv.ops_received("range") == 1 and srv2.ops_received("range") == 2


def test_read_fails_over_on_retryable_error(srv, srv2, make_client):
    srv.error_code = "no_leader"
    with make_client([srv.endpoint, srv2.endpoint], timeout=2.0) as c:
        assert c.status().header.member_id
        assert c.get("k").count == 0


def test_retryable_error_everywhere_raises_it(srv, srv2, make_client):
    # Refused by every endpoint: retried after the client's backoff (core.py) until the
    # deadline, then the refusal is raised; the backoff keeps the sends bounded.
    srv.error_code = srv2.error_code = "no_leader"
    with make_client([srv.endpoint, srv2.endpoint], timeout=1.0) as c:
        with pytest.raises(errors.NoLeader):
            c.get("k")
        assert 2 < c.requests_sent < 200
        with pytest.raises(errors.Stopping):
            srv.error_code = srv2.error_code = "stopping"
            c.put("k", "v")


def test_write_is_never_resent_after_a_timeout(srv, srv2, make_client):
    srv.drop_replies = True  # applies the write, never answers
    with make_client([srv.endpoint, srv2.endpoint], timeout=0.6) as c:
        with pytest.raises(errors.Timeout) as exc:
            c.put("k", "v")
        assert "unknown" in exc.value.message
        assert srv.ops_received("put") == 1
        assert srv2.ops_received("put") == 0
        assert srv.store.kv[b"k"]["value"] == b"v"  # it did happen
        # the next request goes to the other member
        c.put("k2", "v2")
        assert srv2.ops_received("put") == 1


def test_write_refused_with_retryable_error_goes_to_next_member(srv, srv2, make_client):
    srv.error_code = "no_leader"
    with make_client([srv.endpoint, srv2.endpoint], timeout=2.0) as c:
        r = c.put("k", "v")
        assert r.header.revision == 2
        assert srv.ops_received("put") == 1 and srv2.ops_received("put") == 1
        assert b"k" not in srv.store.kv and srv2.store.kv[b"k"]["value"] == b"v"


def test_write_fails_over_when_nothing_could_be_sent(srv, make_client):
    with make_client([dead_endpoint(), srv.endpoint], timeout=2.0) as c:
        assert c.put("k", "v").header.revision == 2
        assert c.txn([], [Op.put("k", "w")]).succeeded


def test_unreachable_endpoint_raises_unavailable(make_client):
    with make_client([dead_endpoint()], timeout=0.3) as c:
        with pytest.raises(errors.Unavailable):
            c.put("k", "v")
        with pytest.raises(errors.Unavailable):
            c.get("k")


def test_read_timeout_then_stale_reply_is_not_seen(srv, make_client):
    srv.delay_s = 0.8
    with make_client([srv.endpoint], timeout=0.3) as c:
        srv.store.put(b"k", b"old")
        with pytest.raises(errors.Timeout) as exc:
            c.get("k")
        assert "unknown" not in exc.value.message
        srv.delay_s = 0.0
        srv.store.put(b"k", b"new")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # replies arrive; none may be the stale one
            assert c.get("k").kvs[0].value == b"new"
            if len(srv._delayed) == 0:
                break
        assert c.get("k").kvs[0].value == b"new"


def test_late_reply_with_unknown_id_is_ignored(srv, make_client):
    """A reply whose id is not the request's is dropped (same socket, no timeout)."""
    import zmq

    from protocol.codec import pack, unpack

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    done = threading.Event()

    def serve() -> None:
        if router.poll(3000):
            ident, frame = router.recv_multipart()
            req = unpack(frame)
            router.send_multipart([ident, pack({"id": req["id"] + 1, "ok": True, "header": {},
                                                "kvs": [{"key": b"wrong"}], "count": 1})])
            router.send_multipart([ident, pack({"id": req["id"], "ok": True, "header": {},
                                                "kvs": [], "count": 0})])
        done.set()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with make_client([f"tcp://127.0.0.1:{port}"], timeout=3.0) as c:
            assert c.get("k").count == 0
    finally:
        t.join()
        router.close()
        ctx.term()
    assert done.is_set()


def test_eight_threads_share_one_client(srv, make_client):
    n_threads, n_ops = 8, 40
    failures: list[BaseException] = []
    with make_client([srv.endpoint], timeout=5.0) as c:
        def work(t: int) -> None:
            try:
                for i in range(n_ops):
                    key = f"t{t}/{i}"
                    c.put(key, f"{t}:{i}")
                    assert c.get(key).kvs[0].value == f"{t}:{i}".encode()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not failures, failures
        assert c.get("t", prefix=True, count_only=True).count == n_threads * n_ops
    assert srv.store.revision == 1 + n_threads * n_ops


def test_closed_client_refuses_calls(srv, make_client):
    c = make_client([srv.endpoint], timeout=1.0)
    c.put("k", "v")
    c.close()
    c.close()
    with pytest.raises(errors.Unavailable):
        c.get("k")


@pytest.mark.threaded_only  # the threaded transport's per-process context after fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_client_works_in_a_forked_child(srv):
    with Client([srv.endpoint], timeout=3.0) as c:
        c.put("k", "parent")
        pid = os.fork()
        if pid == 0:  # child: must build its own context and socket
            code = 1
            try:
                code = 0 if c.get("k").kvs[0].value == b"parent" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c.get("k").kvs[0].value == b"parent"
