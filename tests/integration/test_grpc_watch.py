"""etcd's Watch service over gRPC (issue 18, actors/grpcgw/watch.py): a grpc channel's
bidirectional stream and `etcdctl watch`, each gRPC watch one native watch."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading

import grpc
import pytest

from protocol.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster, NodeProcess, put_burst, wait_for

ETCDCTL = "/usr/bin/etcdctl"
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(tmp_path, grpc=True).start()
    try:
        yield n
    finally:
        n.stop()


class Stream:
    """One Watch stream: requests sent from a queue, responses read by a thread."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch(self._requests())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self):
        while True:
            req = self.requests.get()
            if req is None:
                return
            yield req

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def send(self, **kw) -> None:
        self.requests.put(rpc_pb2.WatchRequest(**kw))

    def create(self, key: bytes, **kw) -> rpc_pb2.WatchResponse:
        self.send(create_request=rpc_pb2.WatchCreateRequest(key=key, **kw))
        resp = self.next()
        assert resp.created, resp
        return resp

    def next(self, timeout: float = 15.0) -> rpc_pb2.WatchResponse:
        resp = self.responses.get(timeout=timeout)
        if isinstance(resp, Exception):
            raise resp
        return resp

    def close(self) -> None:
        self.call.cancel()
        self.requests.put(None)
        self.thread.join(5)


@pytest.fixture
def stream(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        s = Stream(ch)
        try:
            yield s
        finally:
            s.close()


def put(node, key: bytes, value: bytes) -> int:
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10).header.revision


def delete(node, key: bytes, range_end: bytes = b"") -> int:
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).DeleteRange(
            rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end), timeout=10).header.revision


def test_create_events_prev_kv_and_cancel(node, stream):
    created = stream.create(b"a", range_end=b"b", prev_kv=True)
    assert created.watch_id == 0 and not created.canceled
    assert created.header.revision == 1 and created.header.member_id and created.header.cluster_id
    r1 = put(node, b"a1", b"x")
    r2 = put(node, b"a1", b"y")
    put(node, b"zz", b"outside")
    r3 = delete(node, b"a1")
    got = [stream.next() for _ in range(3)]
    assert [g.header.revision for g in got] == [r1, r2, r3]
    assert all(g.watch_id == 0 for g in got)
    e1, e2, e3 = (g.events[0] for g in got)
    assert (e1.type, e1.kv.key, e1.kv.value, e1.kv.version, e1.HasField("prev_kv")) == (PUT, b"a1", b"x", 1, False)
    assert (e2.type, e2.kv.value, e2.prev_kv.value) == (PUT, b"y", b"x")
    assert (e3.type, e3.kv.key, e3.kv.mod_revision, e3.prev_kv.value) == (DELETE, b"a1", r3, b"y")
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0))
    canceled = stream.next()
    assert canceled.canceled and canceled.watch_id == 0 and not canceled.created
    put(node, b"a2", b"after")
    second = stream.create(b"a2")  # ids count on: the next is 1
    assert second.watch_id == 1
    put(node, b"a2", b"later")
    ev = stream.next()  # the put before the create is not seen: the watch starts after it
    assert ev.watch_id == 1 and [e.kv.value for e in ev.events] == [b"later"]


def test_filters_and_start_revision(node, stream):
    r1 = put(node, b"f", b"1")
    r2 = delete(node, b"f")
    r3 = put(node, b"f", b"2")
    no_put = stream.create(b"f", start_revision=r1, filters=[rpc_pb2.WatchCreateRequest.NOPUT])
    assert no_put.header.revision == r3  # the member's revision now
    # History up to the created revision comes grouped, under that revision (etcd's
    # unsynced watcher; checked against etcd 3.4.23).
    got = stream.next()
    assert (got.watch_id, got.header.revision, [(e.type, e.kv.mod_revision) for e in got.events]) == \
        (no_put.watch_id, r3, [(DELETE, r2)])
    no_del = stream.create(b"f", start_revision=r1, filters=[rpc_pb2.WatchCreateRequest.NODELETE])
    got = stream.next()
    assert (got.watch_id, got.header.revision, [(e.type, e.kv.mod_revision) for e in got.events]) == \
        (no_del.watch_id, r3, [(PUT, r1), (PUT, r3)])
    r4 = delete(node, b"f")
    r5 = put(node, b"f", b"3")
    got = [stream.next() for _ in range(2)]
    assert {(g.watch_id, g.header.revision, g.events[0].type) for g in got} == {
        (no_put.watch_id, r4, DELETE), (no_del.watch_id, r5, PUT)}


def test_compacted_start_is_canceled_with_the_compact_revision(node, stream):
    for i in range(4):
        put(node, b"k", b"v%d" % i)  # revisions 2..5
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Compact(rpc_pb2.CompactionRequest(revision=4, physical=True), timeout=10)
    created = stream.create(b"k", start_revision=3)
    assert not created.canceled and created.header.revision == 5
    end = stream.next()  # etcd: header revision 0, no cancel reason
    assert (end.watch_id, end.canceled, end.compact_revision, end.header.revision, end.cancel_reason) == \
        (created.watch_id, True, 4, 0, "")
    at = stream.create(b"k", start_revision=4)  # the compact revision itself is still readable
    got = stream.next()
    assert (got.watch_id, got.header.revision, [(e.kv.mod_revision, e.kv.value) for e in got.events]) == \
        (at.watch_id, 5, [(4, b"v2"), (5, b"v3")])


def test_history_grouped_as_etcds_unsynced_watcher_then_live_one_per_revision(node, stream):
    """A watch from the past: its history up to the created revision R in responses of at
    most 1000 revisions under header R, then one response per live revision (etcd 3.4.23
    answers the same, checked with the same requests)."""
    put_burst(node.client_url, 1100, b"g/")  # revisions 2..1101, one key each
    created = stream.create(b"g/", range_end=b"g0", start_revision=2, prev_kv=True)
    r = created.header.revision
    assert r == 1101
    first, second = stream.next(), stream.next()
    assert (first.header.revision, len(first.events)) == (r, 1000)
    assert (second.header.revision, len(second.events)) == (r, 100)
    assert [e.kv.mod_revision for e in [*first.events, *second.events]] == list(range(2, 1102))
    live = [put(node, b"g/x", b"1"), put(node, b"g/x", b"2")]
    got = [stream.next() for _ in live]
    assert [(g.header.revision, [e.kv.mod_revision for e in g.events]) for g in got] == [(v, [v]) for v in live]
    assert got[1].events[0].prev_kv.value == b"1"


def test_ids_duplicates_empty_range_and_unknown_cancel(node, stream):
    assert stream.create(b"k", watch_id=7).watch_id == 7
    dup = stream.create(b"k", watch_id=7)
    assert (dup.watch_id, dup.canceled, dup.cancel_reason) == \
        (-1, True, "mvcc: duplicate watch ID provided on the WatchStream")
    empty = stream.create(b"b", range_end=b"a")
    assert (empty.watch_id, empty.canceled, empty.cancel_reason) == (-1, True, "mvcc: watcher range is empty")
    assert stream.create(b"k").watch_id == 0  # the counter starts at 0 whatever ids the client chose
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=99))  # unknown: no answer (etcd)
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=7))
    got = stream.next()
    assert (got.watch_id, got.canceled) == (7, True)


def test_progress_request(node, stream):
    stream.send(progress_request=rpc_pb2.WatchProgressRequest())  # no watch yet: the member's revision
    got = stream.next()
    assert (got.watch_id, got.header.revision, len(got.events), got.created) == (-1, 1, 0, False)
    stream.create(b"p", range_end=b"q")
    r = put(node, b"other", b"x")  # not watched: only the progress says the watch is past it
    stream.send(progress_request=rpc_pb2.WatchProgressRequest())
    got = stream.next()
    assert got.watch_id == -1 and not got.events and got.header.revision == r


def test_many_watches_on_one_stream_whole_keyspace_and_stream_end(node, stream):
    ids = [stream.create(b"m%d" % i).watch_id for i in range(20)]
    assert ids == list(range(20))
    everything = stream.create(b"", range_end=b"\x00").watch_id  # etcdctl watch --prefix ""
    revs = {put(node, b"m%d" % i, b"v"): i for i in range(20)}
    got = [stream.next() for _ in range(40)]
    seen = sorted((g.watch_id, g.header.revision) for g in got)
    assert seen == sorted([(i, r) for r, i in revs.items()] + [(everything, r) for r in revs])
    # Each create became one native watch; the stream's end cancels them all.
    stream.close()
    put(node, b"m0", b"after")


# --- etcdctl -----------------------------------------------------------------------------
needs_etcdctl = pytest.mark.skipif(not os.path.exists(ETCDCTL), reason=f"{ETCDCTL} is not installed")


class Etcdctl:
    """`etcdctl watch ...` running, its output lines read as they come."""

    def __init__(self, endpoints: str, *args: str) -> None:
        env = dict(os.environ, ETCDCTL_API="3")
        self.proc = subprocess.Popen([ETCDCTL, "--endpoints", endpoints, "--dial-timeout", "3s", "watch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def wait_lines(self, want: list[str], timeout: float = 30.0) -> None:
        wait_for(lambda: self.lines[:len(want)] == want, timeout, f"etcdctl to print {want}, got {self.lines}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)


def etcdctl_put(endpoint: str, key: str, value: str) -> None:
    subprocess.run([ETCDCTL, "--endpoints", endpoint, "put", key, value], check=True, capture_output=True,
                   env=dict(os.environ, ETCDCTL_API="3"), timeout=30)


@pytest.fixture
def mnode(tmp_path):
    """A node with its metrics URL (to see when etcdctl's watch stream is open)."""
    n = NodeProcess(tmp_path, grpc=True, metrics=True).start()
    try:
        yield n
    finally:
        n.stop()


@needs_etcdctl
def test_etcdctl_watch_prefix_prev_kv_and_rev(mnode):
    node = mnode
    put(node, b"w/a", b"0")
    w = Etcdctl(node.grpc_endpoint, "--prefix", "--prev-kv", "w/")
    h = Etcdctl(node.grpc_endpoint, "--rev", "1", "w/a")  # from the start of history
    try:
        h.wait_lines(["PUT", "w/a", "0"])
        # etcdctl prints nothing when its watch is created: wait until the stream is there.
        wait_for(lambda: metric_streams(node) >= 2, 30, "two watch streams at the node")
        etcdctl_put(node.grpc_endpoint, "w/a", "1")
        etcdctl_put(node.grpc_endpoint, "x", "outside")
        etcdctl_put(node.grpc_endpoint, "w/b", "2")
        w.wait_lines(["PUT", "w/a", "0", "w/a", "1", "PUT", "w/b", "2"])
        h.wait_lines(["PUT", "w/a", "0", "PUT", "w/a", "1"])
    finally:
        w.stop()
        h.stop()


def metric(node, name: str, having: str = "") -> float:
    """The sum of metric `name`'s samples (those whose labels contain `having`) on the
    node's metrics URL; 0 when it does not answer."""
    import urllib.request

    try:
        text = urllib.request.urlopen(node.metrics_url + "/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and having in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_streams(node) -> int:
    """Watch streams the node's gRPC actor has started (its grpc_server_started_total)."""
    return int(metric(node, "grpc_server_started_total", 'grpc_method="Watch"'))


@needs_etcdctl
def test_etcdctl_watch_survives_the_death_of_its_member(tmp_path):
    """etcdctl with every member's endpoint: the member its watch stream is on is killed;
    etcdctl resumes on another from its last revision and nothing is lost."""
    cluster = Cluster(tmp_path, 3, grpc=True, metrics=True).start()
    w = None
    try:
        endpoints = ",".join(n.grpc_endpoint for n in cluster.nodes)
        w = Etcdctl(endpoints, "--prefix", "c/")
        wait_for(lambda: sum(metric_streams(n) for n in cluster.nodes) >= 1, 30, "etcdctl's watch stream")
        first = next(n for n in cluster.nodes if metric_streams(n) >= 1)
        others = [n for n in cluster.nodes if n is not first]
        etcdctl_put(others[0].grpc_endpoint, "c/1", "before")
        w.wait_lines(["PUT", "c/1", "before"])
        first.kill()
        etcdctl_put(others[0].grpc_endpoint, "c/2", "right-after")  # while etcdctl reconnects
        etcdctl_put(others[1].grpc_endpoint, "c/3", "later")
        w.wait_lines(["PUT", "c/1", "before", "PUT", "c/2", "right-after", "PUT", "c/3", "later"], timeout=60)
        assert w.proc.poll() is None
    finally:
        if w is not None:
            w.stop()
        cluster.stop()


# --- under security ----------------------------------------------------------------------
def test_watch_with_client_key_file(tmp_path):
    """--client-key-file: the native watch port is a CURVE server; the gRPC watch's
    native watch connects to it with the node's public key (auth disabled)."""
    cluster = Cluster(tmp_path, 1, grpc=True, secure=True, metrics=True).start()
    try:
        node = cluster.nodes[0]
        with grpc.insecure_channel(node.grpc_endpoint) as ch:
            s = Stream(ch)
            try:
                created = s.create(b"s/", range_end=b"s0")
                # The live path, not only history after each silence: the broadcaster has
                # the subscription (a SUB without the server key never completes its handshake).
                wait_for(lambda: metric(node, "qkv_watch_channels") >= 1, 30, "the broadcaster to have the channel")
                r = put(node, b"s/1", b"v")
                got = s.next()
                assert (got.watch_id, got.header.revision, got.events[0].kv.value) == (created.watch_id, r, b"v")
            finally:
                s.close()
    finally:
        cluster.stop()


def test_auth_check_at_create(node):
    """Auth enabled: a create is checked as the caller (etcd 3.4.23's cancel reasons); one
    the check allows is served (by the member's own native watch)."""
    def call(req, token=None):
        reply = node.request({**req, "token": token} if token else req)
        assert reply and reply.get("ok"), reply
        return reply

    call({"op": "user_add", "name": "root", "password": "r"})
    call({"op": "user_grant_role", "name": "root", "role": "root"})
    call({"op": "auth_enable"})
    root = call({"op": "authenticate", "name": "root", "password": "r"})["token"]
    call({"op": "user_add", "name": "ra", "password": "p"}, root)
    call({"op": "role_add", "name": "reader"}, root)
    call({"op": "role_grant_permission", "name": "reader",
          "perm": {"perm_type": "READ", "key": b"/a/", "range_end": b"/a0"}}, root)
    call({"op": "user_grant_role", "name": "ra", "role": "reader"}, root)
    ra = call({"op": "authenticate", "name": "ra", "password": "p"})["token"]

    def first(token, key, end):
        with grpc.insecure_channel(node.grpc_endpoint) as ch:
            req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=end))
            call_ = rpc_pb2_grpc.WatchStub(ch).Watch(iter([req]), metadata=[("token", token)] if token else [],
                                                     timeout=30)
            try:
                return next(call_)
            finally:
                call_.cancel()

    for token, reason in ((ra, "rpc error: code = PermissionDenied desc = etcdserver: permission denied"),
                          (None, "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"),
                          ("bogus", "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token")):
        got = first(token, b"/b/", b"/b0")
        assert (got.watch_id, got.created, got.canceled, got.cancel_reason) == (-1, True, True, reason)
    got = first(ra, b"/a/", b"/a0")
    assert (got.watch_id, got.created, got.canceled) == (0, True, False), got


def test_a_slow_reader_misses_nothing(mnode):
    """A client that reads nothing while many revisions go by: its stream's queue and its
    native watch's inbox fill, the rest is a hole read back from history once it reads
    again. Every revision comes, once, in order."""
    from concurrent.futures import ThreadPoolExecutor

    node = mnode
    value = b"x" * 4096
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"s/", range_end=b"s0"))
        requests: queue.Queue = queue.Queue()
        requests.put(req)
        call = rpc_pb2_grpc.WatchStub(ch).Watch(iter(requests.get, None))
        try:
            created = next(call)
            assert created.created and not created.canceled
            kvs = rpc_pb2_grpc.KVStub(ch)
            with ThreadPoolExecutor(8) as pool:
                revs = sorted(pool.map(lambda i: kvs.Put(rpc_pb2.PutRequest(key=b"s/%d" % (i % 50), value=value),
                                                         timeout=30).header.revision, range(3000)))
            seen = []
            while len(seen) < len(revs):
                resp = next(call)
                assert not resp.canceled, resp
                seen.extend(e.kv.mod_revision for e in resp.events)
            assert seen == revs
            # The hole was real: besides the create's first read, history was read again.
            wait_for(lambda: metric(node, "qkv_requests_total", 'op="history"') >= 2, 30,
                     "a history read of the hole (besides the create's)")
        finally:
            call.cancel()
            requests.put(None)


def test_the_streams_end_cancels_its_native_watches(mnode):
    """Each gRPC watch is one native subscription; when the client goes away (its stream
    is canceled), every one of them is taken back from the broadcaster."""
    node = mnode
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        s = Stream(ch)
        try:
            for i in range(3):
                s.create(b"gone/%d" % i)
            wait_for(lambda: metric(node, "qkv_watch_channels") >= 3, 30, "three channels at the broadcaster")
        finally:
            s.close()
    wait_for(lambda: metric(node, "qkv_watch_channels") == 0, 30, "the broadcaster to drop the channels")


def test_require_leader_streams_end_when_the_member_has_no_leader(tmp_path):
    """clientv3's WithRequireLeader (etcdctl watch sends it): a member without a leader
    refuses such a stream, and ends an open one after three polls without a leader, with
    Unavailable "etcdserver: no leader" (etcd's monitorLeader), so the client moves on."""
    cluster = Cluster(tmp_path, 3, grpc=True).start()
    try:
        leader = cluster.leader()
        node = next(n for n in cluster.nodes if n is not leader)
        md = [("hasleader", "true")]
        with grpc.insecure_channel(node.grpc_endpoint) as ch:
            requests: queue.Queue = queue.Queue()
            requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"x")))
            call = rpc_pb2_grpc.WatchStub(ch).Watch(iter(requests.get, None), metadata=md)
            try:
                assert next(call).created
                for n in cluster.nodes:
                    if n is not node:
                        n.kill()
                with pytest.raises(grpc.RpcError) as info:
                    next(call)  # nothing comes until the stream ends
                assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                                     "etcdserver: no leader")
            finally:
                call.cancel()
                requests.put(None)
            later = rpc_pb2_grpc.WatchStub(ch).Watch(iter([]), metadata=md)
            with pytest.raises(grpc.RpcError) as info:
                next(later)
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    finally:
        cluster.stop()


def test_long_keys_and_a_huge_key(node, stream):
    """A key longer than a channel topic allows (256 bytes) is watched through its covering
    channel, filtered to the key; a key beyond the limits gets etcd's error as the cancel
    reason, and the stream goes on."""
    long_key = b"L" * 300
    w = stream.create(long_key)
    put(node, long_key[:299] + b"M", b"neighbour")  # same covering channel, not the key
    r = put(node, long_key, b"mine")
    got = stream.next()
    assert (got.watch_id, got.header.revision, [e.kv.key for e in got.events]) == (w.watch_id, r, [long_key])
    huge = stream.create(b"h" * (1536 * 1024 + 1))
    assert huge.canceled and huge.watch_id == -1 and huge.cancel_reason.startswith("etcdserver: ")
    assert stream.create(b"after").watch_id == w.watch_id + 1


@needs_etcdctl
def test_etcdctl_watch_on_an_isolated_member_ends_with_no_leader(tmp_path):
    """etcdctl watch requires a leader (clientv3.WithRequireLeader): cut off from the
    others, its member ends the stream with "etcdserver: no leader", and etcdctl, as with
    etcd, reports the watch canceled and exits."""
    cluster = Cluster(tmp_path, 3, grpc=True, metrics=True).start()
    w = None
    try:
        endpoints = ",".join(n.grpc_endpoint for n in cluster.nodes)
        w = Etcdctl(endpoints, "i")
        wait_for(lambda: sum(metric_streams(n) for n in cluster.nodes) >= 1, 30, "etcdctl's watch stream")
        held = next(n for n in cluster.nodes if metric_streams(n) >= 1)
        cluster.partition([held], [n for n in cluster.nodes if n is not held])
        wait_for(lambda: w.proc.poll() is not None, 60, f"etcdctl to end, printed {w.lines}")
        w.thread.join(5)
        assert "watch was canceled (etcdserver: no leader)" in w.lines
    finally:
        if w is not None:
            w.stop()
        cluster.heal()
        cluster.stop()
