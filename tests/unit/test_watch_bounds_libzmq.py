"""What the watch bounds rely on in libzmq 4.3 / pyzmq, with real sockets in one process:
every connection of an XPUB with a ZAP domain goes through the ZAP handler (NULL too), whose
connection id and libzmq's socket number come with each message; a closing connection's
unsubscribes come without them; shutting a connection's socket down under libzmq closes it
like a peer would (actors/watch/zap.py, actors/watch/actor.py `_origin`, `_kick`)."""
from __future__ import annotations

import zmq
import zmq.auth

from actors.watch import gate as G
from actors.watch.actor import WatchActor, _origin
from actors.watch.zap import ConnAuthenticator


def recv(sock, timeout_ms=3000):
    if not sock.poll(timeout_ms):
        return None
    return sock.recv(copy=False)


def xpub(ctx, **opts):
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_MANUAL, 1)
    for k, v in opts.items():
        pub.setsockopt(getattr(zmq, k.upper()), v)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    return pub, port


def sub(ctx, port, curve=None):
    s = ctx.socket(zmq.SUB)
    s.linger = 0
    if curve:
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = curve
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def test_null_connections_get_a_connection_id_and_closing_ones_none():
    ctx = zmq.Context()
    auth = ConnAuthenticator(ctx, "watch", lambda key: "", allow_null=True)
    auth.start()
    try:
        pub, port = xpub(ctx, zap_domain=b"watch")
        a, b = sub(ctx, port), sub(ctx, port)
        a.subscribe(b"A")
        b.subscribe(b"B")
        origins = {}
        for _ in range(2):
            f = recv(pub)
            origins[f.bytes] = _origin(f)
        oa, ob = origins[b"\x01A"], origins[b"\x01B"]
        assert oa.user == ob.user == "" and oa.peer == "127.0.0.1"
        assert {oa.conn, ob.conn} == {1, 2} and oa.fd != ob.fd and min(oa.fd, ob.fd) > 0
        a.close(0)
        f = recv(pub)
        assert f.bytes == b"\x00A" and _origin(f) is None  # libzmq's own: no origin
        for s in (b, pub):
            s.close(0)
    finally:
        auth.stop()
        ctx.term()


def test_curve_connections_are_named_by_their_key(tmp_path):
    ctx = zmq.Context()
    spub, ssec = zmq.auth.create_certificates(tmp_path, "server")
    server = zmq.auth.load_certificate(ssec)
    alice = zmq.curve_keypair()
    other = zmq.curve_keypair()
    auth = ConnAuthenticator(ctx, "watch", lambda key: {alice[0]: "alice"}.get(key, ""), allow_null=False)
    auth.start()
    try:
        pub, port = xpub(ctx, curve_server=1, curve_publickey=server[0], curve_secretkey=server[1],
                         zap_domain=b"watch")
        sa = sub(ctx, port, (server[0], alice[0], alice[1]))
        so = sub(ctx, port, (server[0], other[0], other[1]))
        plain = sub(ctx, port)  # NULL to a CURVE socket: never connects
        sa.subscribe(b"A")
        so.subscribe(b"O")
        plain.subscribe(b"P")
        got = {}
        for _ in range(2):
            f = recv(pub)
            got[f.bytes] = _origin(f)
        assert got[b"\x01A"].user == "alice" and got[b"\x01O"].user == ""
        assert got[b"\x01A"].conn != got[b"\x01O"].conn
        assert recv(pub, 300) is None
        for s in (sa, so, plain, pub):
            s.close(0)
    finally:
        auth.stop()
        ctx.term()


def test_kick_closes_that_connection_only_and_it_comes_back_as_a_new_one():
    ctx = zmq.Context()
    auth = ConnAuthenticator(ctx, "watch", lambda key: "", allow_null=True)
    auth.start()
    try:
        pub, port = xpub(ctx, zap_domain=b"watch")
        a, b = sub(ctx, port), sub(ctx, port)
        a.setsockopt(zmq.RECONNECT_IVL, 50)
        a.subscribe(b"A")
        b.subscribe(b"B")
        origins = {}
        for _ in range(2):
            f = recv(pub)
            origins[f.bytes] = _origin(f)
        actor = WatchActor.__new__(WatchActor)  # only what _kick uses
        actor._bound_urls = [pub.getsockopt_string(zmq.LAST_ENDPOINT)]
        actor.kicked = actor.kick_failed = 0
        oa = origins[b"\x01A"]
        actor._kick(oa.fd, "10.9.9.9")  # not that peer: left alone
        assert actor.kick_failed == 1 and recv(pub, 300) is None
        actor._kick(oa.fd, oa.peer)
        assert actor.kicked == 1
        f = recv(pub)
        assert f.bytes == b"\x00A" and _origin(f) is None  # closed, as if the peer left
        # The SUB reconnects by itself and subscribes again (once its thread handles
        # libzmq's commands: a consumer polls its socket): a new connection.
        f = None
        for _ in range(100):
            a.poll(10)
            f = recv(pub, 20)
            if f is not None:
                break
        assert f.bytes == b"\x01A" and _origin(f).conn > max(o.conn for o in origins.values())
        assert recv(pub, 300) is None  # b was not touched
        for s in (a, b, pub):
            s.close(0)
    finally:
        auth.stop()
        ctx.term()


def test_gate_counts_what_libzmq_holds_for_real_connections():
    """held_bytes follows libzmq: up with new (connection, topic) pairs, down with a
    connection's unsubscribe and with every topic of a closing connection."""
    ctx = zmq.Context()
    auth = ConnAuthenticator(ctx, "watch", lambda key: "", allow_null=True)
    auth.start()
    try:
        from actors.storage.auth import AuthState
        from actors.watch.channels import Broadcaster, encode_topic

        pub, port = xpub(ctx, zap_domain=b"watch")
        gate, core, st = G.Gate(max_per_conn=2), Broadcaster(), AuthState(False, 1, {}, {})
        s = sub(ctx, port)
        topics = [encode_topic(b"/k/%d" % i) for i in range(4)]
        for t in topics:
            s.subscribe(t)
        s.subscribe(topics[0])  # a repeat: SUB sends it, libzmq holds it once
        decisions = []
        for _ in range(5):
            f = recv(pub)
            d = gate.decide(f.bytes, _origin(f), st, core.admit)
            decisions.append(d.action)
            if d.action == G.SUBSCRIBE:
                pub.setsockopt(zmq.SUBSCRIBE, d.topic)
        assert decisions == [G.SUBSCRIBE, G.SUBSCRIBE, G.REFUSE, G.REFUSE, G.SUBSCRIBE]
        assert gate.held_bytes == sum(map(len, topics))
        s.unsubscribe(topics[1])
        s.unsubscribe(topics[1])  # SUB counts: topics[1] was subscribed once, so one message
        f = recv(pub)
        gate.decide(f.bytes, _origin(f), st, core.admit)
        assert gate.held_bytes == sum(map(len, topics)) - len(topics[1])
        s.close(0)
        for _ in range(3):  # the three it still held
            f = recv(pub)
            assert _origin(f) is None
            gate.decide(f.bytes, None, st, core.admit)
        assert recv(pub, 300) is None
        assert gate.held_bytes == 0 and gate.granted == {} and gate.refused_open == {}
        pub.close(0)
    finally:
        auth.stop()
        ctx.term()
