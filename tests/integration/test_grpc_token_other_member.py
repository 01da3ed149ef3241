"""A token works on every member at once (issue 18; SPEC 7.5): a client that authenticates
through one member and sends its next request to another, which may not have applied the
token's `authenticate` entry yet, is not refused ("etcdserver: invalid auth token"): the
member that does not know a token waits for a read-index barrier and checks it once more."""
from __future__ import annotations

import grpc

from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import Cluster

ROUNDS = 18  # each of the six ordered pairs of members three times


def test_a_token_from_one_member_works_at_once_on_another(tmp_path):
    cluster = Cluster(tmp_path, 3, grpc=True).start()
    channels = [grpc.insecure_channel(n.grpc_endpoint) for n in cluster.nodes]
    try:
        auth = [rpc_pb2_grpc.AuthStub(ch) for ch in channels]
        kv = [rpc_pb2_grpc.KVStub(ch) for ch in channels]
        auth[0].UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"), timeout=30)
        auth[0].UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
        auth[0].AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=30)
        refused = []
        for i in range(ROUNDS):
            a, b = i % 3, (i + 1 + i // 3) % 3  # every ordered pair of members, leader and followers
            if a == b:
                b = (b + 1) % 3
            token = auth[a].Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"),
                                         timeout=30).token
            try:
                kv[b].Range(rpc_pb2.RangeRequest(key=b"k", serializable=True), metadata=[("token", token)],
                            timeout=30)
            except grpc.RpcError as exc:
                refused.append((i, a, b, exc.code(), exc.details()))
        assert refused == []
        # A token no member granted is still refused, after the barrier, with etcd's status.
        try:
            kv[1].Range(rpc_pb2.RangeRequest(key=b"k"), metadata=[("token", "bogus")], timeout=30)
            raise AssertionError("a bogus token was accepted")
        except grpc.RpcError as exc:
            assert (exc.code(), exc.details()) == (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
    finally:
        for ch in channels:
            ch.close()
        cluster.stop()
