"""etcd's Watch service over gRPC (issue 18, actors/grpcgw/watch.py): a grpc channel's
bidirectional stream and `etcdctl watch`, each gRPC watch one native watch."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

import grpc
import pytest

from protocol.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster, NodeProcess, wait_for

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


def kv(node):
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(node.grpc_endpoint))


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
