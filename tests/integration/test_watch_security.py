"""The watch port of a real node with --client-key-file (issue 11): raw SUB sockets as a
consumer in another language would write them from SPEC section 5 "Security".

- auth disabled: a CURVE SUB with the server key gets events; a SUB without it (NULL, or
  CURVE trusting another server key) gets nothing: the handshake never completes;
- auth enabled: a SUB whose user may read /a/ gets /a/ events and nothing for /b/, even
  when it subscribes to /b/ or to the whole keyspace; after its role loses the
  permission it stops receiving (the broadcaster rebinds and decides again)."""
from __future__ import annotations

import itertools
import time

import pytest
import zmq

from actors.runtime import security
from actors.watch.channels import encode_topic, unpack_payload
from nodeproc import wait_for
from protocol.codec import pack, unpack

ALL = encode_topic(b"\x00", b"\x00")
A = encode_topic(b"/a/", b"/a0")
B = encode_topic(b"/b/", b"/b0")
_ids = itertools.count(1)


@pytest.fixture
def keys(tmp_path):
    out = {}
    for name in ("server", "alice", "root", "client", "mallory"):
        _, secret = security.generate(str(tmp_path / "keys"), name)
        out[name] = security.load_keypair(secret)
        out[name + "_file"] = secret
    return out


def request(node, keys, req: dict, timeout: float = 5.0) -> dict | None:
    """One request on a fresh DEALER: CURVE with the server key when the gateway has it."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    security.make_curve_client(sock, *keys["client"], keys["server"][0])
    sock.connect(node.client_url)
    try:
        sock.send(pack({**req, "id": next(_ids)}))
        if not sock.poll(int(timeout * 1000)):
            return None
        return unpack(sock.recv())
    finally:
        sock.close()


def ok(node, keys, req: dict) -> dict:
    reply = request(node, keys, req)
    assert reply is not None and reply.get("ok"), (req.get("op"), reply)
    return reply


def start_node(node_factory, keys, *extra: str):
    node = node_factory(args=["--client-key-file", keys["server_file"], *extra], start=False)
    node.start(wait=False)
    wait_for(lambda: (request(node, keys, {"op": "range", "key": b"x"}, 1.0) or {}).get("ok"), 30,
             "the node to serve")
    return node


def sub(url: str, keys, who: str | None, server_key: bytes | None = None, topics=(ALL,)) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.linger = 0
    s.setsockopt(zmq.RECONNECT_IVL, 50)
    if who is not None:
        security.make_curve_client(s, *keys[who], server_key or keys["server"][0])
    s.connect(url)
    for t in topics:
        s.subscribe(t)
    return s


def drain(s: zmq.Socket, quiet_s: float = 0.1) -> list[tuple[bytes, dict]]:
    out = []
    while s.poll(int(quiet_s * 1000)):
        topic, payload = s.recv_multipart()
        out.append((topic, unpack_payload(payload)))
    return out


def event_keys(msgs, topic: bytes, after: int = 0) -> list[bytes]:
    return [e["kv"]["key"] for t, b in msgs if t == topic and b.get("revision", 0) > after
            for e in b.get("events", [])]


def test_watch_port_is_curve_with_the_server_key(node_factory, keys):
    node = start_node(node_factory, keys)
    good = sub(node.watch_url, keys, "mallory")  # any client key: auth is disabled
    plain = sub(node.watch_url, keys, None, topics=(ALL, b""))
    impostor = sub(node.watch_url, keys, "alice", server_key=keys["mallory"][0])
    got: list = []

    def delivered():
        ok(node, keys, {"op": "put", "key": b"/a/1", "value": b"v"})
        got.extend(drain(good, 0.1))
        return event_keys(got, ALL)

    wait_for(delivered, 20, "a CURVE SUB with the server key to get events")
    assert drain(plain, 0.5) == [] and drain(impostor, 0.1) == []
    for s in (good, plain, impostor):
        s.close(0)


def test_watch_under_auth_only_readable_channels_and_revocation(node_factory, keys):
    node = start_node(node_factory, keys, "--client-cert-auth")
    alice_key = keys["alice"][0].decode()
    for req in ({"op": "user_add", "name": "root", "password": "rootpw"},
                {"op": "user_grant_role", "name": "root", "role": "root"},
                {"op": "user_add", "name": "alice", "no_password": True, "public_key": alice_key},
                {"op": "role_add", "name": "ra"},
                {"op": "role_grant_permission", "name": "ra",
                 "perm": {"perm_type": "READ", "key": b"/a/", "range_end": b"/a0"}},
                {"op": "user_grant_role", "name": "alice", "role": "ra"},
                {"op": "auth_enable"}):
        ok(node, keys, req)
    token = ok(node, keys, {"op": "authenticate", "name": "root", "password": "rootpw"})["token"]

    def put(key: bytes) -> int:
        return ok(node, keys, {"op": "put", "key": key, "value": b"v", "token": token})["header"]["revision"]

    alice = sub(node.watch_url, keys, "alice", topics=(ALL, B, A))
    anon = sub(node.watch_url, keys, "mallory", topics=(ALL, A))
    got: list = []

    def alice_gets_a():
        put(b"/b/1")
        put(b"/a/1")
        got.extend(drain(alice, 0.1))
        return event_keys(got, A)

    wait_for(alice_gets_a, 20, "alice to get /a/ events under auth")
    got.extend(drain(alice, 0.5))
    assert event_keys(got, B) == [] and event_keys(got, ALL) == []
    assert drain(anon, 0.3) == []

    # Revoke: alice's role loses /a/. From then on she gets nothing, though she stays
    # subscribed (her SUB reconnects to the rebound XPUB and is refused).
    ok(node, keys, {"op": "role_revoke_permission", "name": "ra", "key": b"/a/", "range_end": b"/a0",
                    "token": token})
    token = ok(node, keys, {"op": "authenticate", "name": "root", "password": "rootpw"})["token"]
    revoked_at = put(b"/a/2")
    deadline = time.monotonic() + 3
    late: list = []
    while time.monotonic() < deadline:
        put(b"/a/3")
        late.extend(drain(alice, 0.1))
    assert event_keys(late, A, after=revoked_at) == []
    for s in (alice, anon):
        s.close(0)
