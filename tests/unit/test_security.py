"""CURVE + ZAP as actors/runtime/security.py sets them up: the server learns each
connection's key and names its User-Id; an unknown key is refused; a client that
expects another server key never completes the handshake."""
from __future__ import annotations

import os
import time

import pytest
import zmq

from actors.runtime import security


def _wait_recv(sock: zmq.Socket, timeout_s: float = 5.0):
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return sock.recv_multipart(copy=False)


@pytest.fixture
def keys(tmp_path):
    out = {}
    for name in ("server", "alice", "mallory"):
        _, secret_path = security.generate(str(tmp_path), name)
        out[name] = security.load_keypair(secret_path)
    return out


def test_generate_writes_private_secret_and_refuses_overwrite(tmp_path):
    pub, sec = security.generate(str(tmp_path), "n1")
    assert os.stat(sec).st_mode & 0o777 == 0o600
    assert security.valid_z85_key(security.load_public(pub))
    with pytest.raises(security.KeyFileError):
        security.generate(str(tmp_path), "n1")
    os.chmod(sec, 0o644)
    with pytest.raises(security.KeyFileError, match="readable by others"):
        security.load_keypair(sec)


def test_valid_z85_key():
    public, _ = zmq.curve_keypair()
    assert security.valid_z85_key(public)
    assert security.valid_z85_key(public.decode())
    assert not security.valid_z85_key(public[:-1])
    assert not security.valid_z85_key(b"\x00" * 40)
    assert not security.valid_z85_key(12)


def test_router_learns_user_and_refuses_unknown_key(keys):
    ctx = zmq.Context()
    known = {keys["alice"][0]: "alice"}
    auth = security.KeyAuthenticator(ctx, "client", known.get)
    auth.start()
    try:
        server = ctx.socket(zmq.ROUTER)
        server.linger = 0
        security.make_curve_server(server, *keys["server"], "client")
        port = server.bind_to_random_port("tcp://127.0.0.1")
        url = f"tcp://127.0.0.1:{port}"

        def client(who: str, server_public: bytes) -> zmq.Socket:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            security.make_curve_client(sock, *keys[who], server_public)
            sock.connect(url)
            return sock

        alice = client("alice", keys["server"][0])
        alice.send(b"hi")
        frames = _wait_recv(server)
        assert frames is not None and frames[-1].bytes == b"hi"
        assert security.frame_user(frames[-1]) == "alice"

        mallory = client("mallory", keys["server"][0])
        mallory.send(b"let me in")
        assert _wait_recv(server, 1.0) is None
        assert auth.refused >= 1

        # A client that trusts another server key: the handshake never completes.
        impostor_trust = client("alice", keys["mallory"][0])
        impostor_trust.send(b"hello?")
        assert _wait_recv(server, 1.0) is None

        # NULL to a CURVE server: never delivered.
        plain = ctx.socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(url)
        plain.send(b"plain")
        assert _wait_recv(server, 1.0) is None
        for s in (alice, mallory, impostor_trust, plain, server):
            s.close(0)
    finally:
        auth.stop()
        ctx.term()


def test_xpub_subscription_carries_user(keys):
    """The watch broadcaster decides subscriptions by the subscriber's ZAP user."""
    ctx = zmq.Context()
    known = {keys["alice"][0]: "alice"}
    auth = security.KeyAuthenticator(ctx, "watch", known.get)
    auth.start()
    try:
        pub = ctx.socket(zmq.XPUB)
        pub.linger = 0
        pub.setsockopt(zmq.XPUB_MANUAL, 1)
        security.make_curve_server(pub, *keys["server"], "watch")
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        security.make_curve_client(sub, *keys["alice"], keys["server"][0])
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"topic")
        frames = _wait_recv(pub)
        assert frames is not None and frames[0].bytes == b"\x01topic"
        assert security.frame_user(frames[0]) == "alice"
        pub.setsockopt(zmq.SUBSCRIBE, b"topic")  # XPUB_MANUAL: this pipe may have it
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            pub.send(b"topic:event")
            if sub.poll(100):
                got = sub.recv()
        assert got == b"topic:event"
        sub.close(0)
        pub.close(0)
    finally:
        auth.stop()
        ctx.term()
