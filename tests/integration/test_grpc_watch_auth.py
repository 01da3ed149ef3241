"""gRPC Watch under auth (issue 18; SPEC 7.2, 7.9, 8 "Watch"): each create is checked as its
caller (token metadata), and a permitted watch is served by the member's own native watch,
which may read history and every topic. With and without --client-key-file."""
from __future__ import annotations

import queue
import threading

import grpc
import pytest

from protocol.etcdpb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster, NodeProcess, wait_for

DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"  # etcd 3.4.23's


@pytest.fixture(params=["plain", "client-key-file"])
def node(request, tmp_path):
    """One node with gRPC and auth enabled: root, and ``ra`` who may read /a/ only."""
    if request.param == "plain":
        owner = NodeProcess(tmp_path, grpc=True, metrics=True).start()
        n = owner
    else:
        owner = Cluster(tmp_path, 1, grpc=True, secure=True, metrics=True).start()
        n = owner.nodes[0]
    try:
        with grpc.insecure_channel(n.grpc_endpoint) as ch:
            a = rpc_pb2_grpc.AuthStub(ch)
            a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"), timeout=30)
            a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
            a.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=30)
            root = [("token", a.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"),
                                             timeout=30).token)]
            a.UserAdd(rpc_pb2.AuthUserAddRequest(name="ra", password="rapw"), metadata=root, timeout=30)
            a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="reader"), metadata=root, timeout=30)
            a.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(
                name="reader", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"/a/",
                                                        range_end=b"/a0")), metadata=root, timeout=30)
            a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="ra", role="reader"), metadata=root, timeout=30)
            ra = [("token", a.Authenticate(rpc_pb2.AuthenticateRequest(name="ra", password="rapw"),
                                           timeout=30).token)]
        n.root, n.ra, n.secure = root, ra, request.param != "plain"
        yield n
    finally:
        owner.stop()


class Stream:
    """One Watch stream with the caller's metadata; responses read by a thread."""

    def __init__(self, channel: grpc.Channel, metadata) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch(iter(self.requests.get, None), metadata=metadata)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def create(self, key: bytes, range_end: bytes, start_revision: int = 0) -> rpc_pb2.WatchResponse:
        self.requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision)))
        resp = self.next()
        assert resp.created, resp
        return resp

    def next(self, timeout: float = 60.0) -> rpc_pb2.WatchResponse:
        """The next response (60 s: without --client-key-file the member's native watch
        follows from history after each silence of about 7 s)."""
        resp = self.responses.get(timeout=timeout)
        if isinstance(resp, Exception):
            raise resp
        return resp

    def events(self, n: int) -> list[tuple[int, bytes, bytes]]:
        """(watch id, key, value) of the next n events."""
        out: list[tuple[int, bytes, bytes]] = []
        while len(out) < n:
            resp = self.next()
            assert not resp.canceled, resp
            out.extend((resp.watch_id, e.kv.key, e.kv.value) for e in resp.events)
        return out

    def close(self) -> None:
        self.call.cancel()
        self.requests.put(None)
        self.thread.join(5)


def put(ch: grpc.Channel, md, key: bytes, value: bytes) -> int:
    return rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=value), metadata=md,
                                       timeout=30).header.revision


def test_watch_under_auth_is_checked_as_the_caller_and_served_as_the_member(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        r_a1 = put(ch, node.root, b"/a/1", b"a1")
        put(ch, node.root, b"/b/1", b"b1")
        ra, root = Stream(ch, node.ra), Stream(ch, node.root)
        try:
            # ra: history of its permitted range, from revision 1.
            created = ra.create(b"/a/", b"/a0", start_revision=1)
            assert (created.watch_id, created.canceled) == (0, False), created
            assert ra.events(1) == [(0, b"/a/1", b"a1")]
            # ra: a range it may not read is refused, with etcd's reason; the stream lives on.
            refused = ra.create(b"/b/", b"/b0", start_revision=1)
            assert (refused.watch_id, refused.canceled, refused.cancel_reason) == (-1, True, DENIED)
            refused = ra.create(b"/", b"0")  # wider than its permission, from now
            assert (refused.watch_id, refused.canceled, refused.cancel_reason) == (-1, True, DENIED)
            # ra: a watch from now of a key under its prefix.
            now = ra.create(b"/a/2", b"")
            assert (now.watch_id, now.canceled) == (1, False), now
            # root reads everything, history included.
            assert root.create(b"/", b"0", start_revision=1).watch_id == 0
            assert root.events(2) == [(0, b"/a/1", b"a1"), (0, b"/b/1", b"b1")]
            if node.secure:  # the live path: the watch port gave the member its topics
                wait_for(lambda: metric(node, "qkv_watch_channels") >= 1, 30, "the member's subscriptions")
            # New events reach the permitted watches, in order, and nothing else.
            put(ch, node.root, b"/b/2", b"b2")
            r_a2 = put(ch, node.root, b"/a/2", b"a2")
            assert r_a2 > r_a1
            got = ra.events(2)
            assert sorted(got) == [(0, b"/a/2", b"a2"), (1, b"/a/2", b"a2")], got
            assert root.events(2) == [(0, b"/b/2", b"b2"), (0, b"/a/2", b"a2")]
            assert ra.responses.empty()
        finally:
            ra.close()
            root.close()


def metric(node, name: str) -> float:
    import urllib.request

    try:
        text = urllib.request.urlopen(node.metrics_url + "/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))
