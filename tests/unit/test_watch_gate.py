"""Who may subscribe to what on the watch port (actors/watch/gate.py), without sockets;
and the libzmq XPUB_MANUAL behaviour the gate relies on, with real sockets."""
from __future__ import annotations

import pathlib

import pytest
import zmq

from actors.storage.auth import AuthState, Perm, User
from actors.watch import gate as G
from actors.watch.channels import MAX_TOPIC_BYTES, Broadcaster, encode_topic

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALL = encode_topic(b"\x00", b"\x00")
A = encode_topic(b"/a/", b"/a0")
A_KEY = encode_topic(b"/a/x", prev_kv=True)
B = encode_topic(b"/b/", b"/b0")
AB = encode_topic(b"/a/", b"/b0")
KEY = "rq(.u7j4Pv)T^Z:]d+e-xX*(iN6m1[&ZPxUS]4Zf"


def state(enabled=True, revision=5, **extra_users) -> AuthState:
    users = {"root": User(["root"]), "alice": User(["ra"]), "bob": User(["rb"]),
             "nobody": User([]), **extra_users}
    roles = {"root": [], "ra": [Perm("READ", b"/a/", b"/a0")], "rb": [Perm("READWRITE", b"/b/", b"/b0")]}
    return AuthState(enabled, revision, users, roles)


def test_gate_module_is_pure():
    from test_pure_imports import violations  # tests/unit is on sys.path under pytest

    assert violations(ROOT / "actors/watch/gate.py") == []


# --- decisions ----------------------------------------------------------------------------
def test_nothing_before_the_auth_state_is_known():
    assert G.may_subscribe(None, "root", ALL) == G.AUTH_UNKNOWN


def test_auth_disabled_allows_any_topic_to_anyone():
    s = state(enabled=False)
    for topic in (ALL, A, B, b"", b"W1", b"garbage"):
        assert G.may_subscribe(s, "", topic) is None


@pytest.mark.parametrize("user,topic,reason", [
    ("", A, G.ANONYMOUS),
    ("alice", A, None),
    ("alice", A_KEY, None),
    ("alice", encode_topic(b"/a/", b"/a0", no_put=True), None),
    ("alice", B, G.DENIED),
    ("alice", AB, G.DENIED),             # wider than what alice may read
    ("alice", ALL, G.DENIED),            # the whole keyspace
    ("alice", encode_topic(b"/a", b"\x00"), G.DENIED),
    ("alice", b"", G.NOT_A_CHANNEL),     # a raw SUB's "everything"
    ("alice", b"W1", G.NOT_A_CHANNEL),   # a prefix of every channel topic
    ("alice", A[:-1], G.NOT_A_CHANNEL),  # a prefix of an allowed topic
    ("bob", B, None),                    # READWRITE includes READ
    ("nobody", A, G.DENIED),
    ("ghost", A, G.DENIED),              # not a user (deleted)
    ("root", ALL, None),
    ("root", b"", G.NOT_A_CHANNEL),
])
def test_auth_enabled_allows_a_channel_the_user_may_read(user, topic, reason):
    assert G.may_subscribe(state(), user, topic) == reason


class Harness:
    """A gate with a channel table (channels.Broadcaster), as the actor drives it."""

    def __init__(self, auth=None, max_channels=100, **gate):
        self.g = G.Gate(**gate)
        self.core = Broadcaster(max_channels=max_channels, max_channel_bytes=10**9)
        self.state = auth if auth is not None else state()

    def __call__(self, msg, user="", conn=1, fd=7, origin=True):
        o = G.Origin(user, conn, fd) if origin else None
        d = self.g.decide(msg, o, self.state, self.core.admit, self.core.canonical)
        if d.track:
            self.core.subscribe(d.topic)
        if d.untrack:
            self.core.unsubscribe(d.topic)
        return d

    @property
    def chans(self):
        return set(self.core.channels)


def test_gate_decides_every_subscriber_on_its_own():
    h = Harness()
    assert h(b"\x01" + A, "alice", conn=1) == G.Decision(G.SUBSCRIBE, A, track=True)
    # a second subscriber of the same topic, not allowed: refused although the channel exists
    assert h(b"\x01" + A, "bob", conn=2, fd=8) == G.Decision(G.REFUSE, A, reason=G.DENIED)
    assert h(b"\x01" + A, "", conn=3, fd=9).action == G.REFUSE
    assert h(b"\x01" + A, "root", conn=4, fd=10).action == G.SUBSCRIBE
    assert h.g.granted == {A: 2} and h.g.granted_users == {"alice", "root"}
    assert h.g.refused == {G.DENIED: 1, G.ANONYMOUS: 1}
    assert h.g.held_bytes == 4 * len(A)  # libzmq holds the refused ones too
    # The refused ones' connections close: libzmq sends an unsubscribe (without an
    # origin) for each; they must not end the channel alice and root still have.
    assert h(b"\x00" + A, origin=False) == G.Decision(G.UNSUBSCRIBE, A)
    assert h(b"\x00" + A, origin=False) == G.Decision(G.UNSUBSCRIBE, A)
    assert A in h.chans
    assert h(b"\x00" + A, "alice", conn=1) == G.Decision(G.UNSUBSCRIBE, A)  # alice's own
    assert h(b"\x00" + A, origin=False) == G.Decision(G.UNSUBSCRIBE, A, untrack=True)  # root closes
    assert h.chans == set() and h.g.granted == {} and h.g.held_bytes == 0
    # an unsubscribe of something never subscribed: nothing to end, nothing counted
    assert h(b"\x00" + B, "alice", conn=1) == G.Decision(G.UNSUBSCRIBE, B)
    assert h.g.held_bytes == 0
    assert h(b"", "alice").action == G.IGNORE
    assert h(b"\x02" + A, "alice").action == G.IGNORE


def test_auth_disabled_grants_any_topic_but_only_channels_are_tracked():
    h = Harness(auth=state(enabled=False))
    assert h(b"\x01" + A).track
    assert h(b"\x01" + A).track  # a progress request: granted again, held once
    assert h.g.held_bytes == len(A) and h.g.granted == {A: 1}
    d = h(b"\x01")  # b"": a raw SUB's everything
    assert d.action == G.SUBSCRIBE and not d.track
    assert h(b"\x00" + A).untrack and h.chans == set()


def test_per_connection_bound_refuses_then_closes_the_connection():
    h = Harness(auth=state(enabled=False), max_per_conn=3)
    topics = [encode_topic(b"/k/%d" % i) for i in range(8)]
    for t in topics[:3]:
        assert h(b"\x01" + t, conn=5).action == G.SUBSCRIBE
    d = h(b"\x01" + topics[3], conn=5)
    assert d.action == G.REFUSE and d.reason == G.TOO_MANY and not d.kick
    # other connections are not affected
    assert h(b"\x01" + topics[3], conn=6, fd=8).action == G.SUBSCRIBE
    # repeats of held topics are neither new grants nor new refusals
    assert h(b"\x01" + topics[0], conn=5).action == G.SUBSCRIBE
    assert h(b"\x01" + topics[3], conn=5).reason == G.TOO_MANY
    assert len(h.g.conns[5].refused) == 1
    # an unsubscribe makes room on that connection
    h(b"\x00" + topics[0], conn=5)
    assert h(b"\x01" + topics[3], conn=5).action == G.SUBSCRIBE  # refused before, granted now
    assert h.g.refused_open == {}
    kicks = [h(b"\x01" + t, conn=5).kick for t in topics[4:]]
    assert kicks == [False, False, False, True]  # more refused topics held than the bound
    assert h(b"\x01" + encode_topic(b"/x"), conn=5).kick is False  # once
    assert h.g.kicks == 1


def test_a_newer_connection_on_the_same_socket_replaces_the_old_record():
    h = Harness(auth=state(enabled=False), max_per_conn=2)
    t1, t2, t3 = (encode_topic(b"/k/%d" % i) for i in range(3))
    h(b"\x01" + t1, conn=10, fd=20)
    h(b"\x01" + t2, conn=10, fd=20)
    assert h(b"\x01" + t3, conn=10, fd=20).reason == G.TOO_MANY
    # conn 10 closed (its unsubscribes come without an origin); conn 11 got socket 20
    assert h(b"\x01" + t3, conn=11, fd=20).action == G.SUBSCRIBE
    assert 10 not in h.g.conns
    # a late message of conn 10: held (libzmq reports its close) and refused
    d = h(b"\x01" + encode_topic(b"/late"), conn=10, fd=20)
    assert d.action == G.REFUSE and 10 not in h.g.conns
    held = h.g.held_bytes
    for t in (t1, t2, t3, encode_topic(b"/late")):  # conn 10's close
        h(b"\x00" + t, origin=False)
    assert h.g.held_bytes == held - len(t1) - len(t2) - len(t3) - len(encode_topic(b"/late"))
    assert h.chans == {t3}  # conn 11 still has it


def test_a_disconnected_socket_ends_its_newest_connection_record():
    h = Harness(auth=state(enabled=False))
    t1, t2 = encode_topic(b"/k/1"), encode_topic(b"/k/2")
    h(b"\x01" + t1, conn=3, fd=30)
    h(b"\x00" + t1, conn=3, fd=30)  # it holds nothing now: the record stays while it is open
    assert 3 in h.g.conns
    h.g.closed(30)
    assert 3 not in h.g.conns
    # a late message of that connection is not a new one
    assert h(b"\x01" + t2, conn=3, fd=30).reason == "closed" and 3 not in h.g.conns
    h(b"\x00" + t2, origin=False)  # ... libzmq reports it with the close
    assert h.g.held_bytes == 0 and h.g.refused_open == {}
    assert h(b"\x01" + t2, conn=4, fd=30).action == G.SUBSCRIBE  # the next one on that socket
    h.g.closed(31)  # a socket we never heard of: nothing
    assert set(h.g.conns) == {4}


def test_topic_length_channels_and_budget():
    h = Harness(max_channels=2, budget_bytes=4 * len(A))
    too_long = encode_topic(b"/a/" + b"x" * 300)
    assert len(too_long) < MAX_TOPIC_BYTES
    assert h(b"\x01" + too_long, "root").reason == G.TOO_LONG
    for t in (A, B):
        assert h(b"\x01" + t, "root").track
    assert h(b"\x01" + ALL, "root", conn=2, fd=8).reason == G.FULL
    assert h(b"\x01" + A, "alice", conn=3, fd=9).action == G.SUBSCRIBE  # an existing channel
    assert h.g.over_budget
    h.g.reset()
    assert not h.g.over_budget and h.g.granted == {} and h.g.refused_open == {} and h.g.conns == {}


def test_rebind_when_auth_is_or_was_enabled_and_changed():
    assert G.needs_rebind(None, state(enabled=False))
    assert not G.needs_rebind(state(enabled=False, revision=3), state(enabled=False, revision=4))
    assert G.needs_rebind(state(enabled=False, revision=3), state(enabled=True, revision=4))
    assert G.needs_rebind(state(revision=3), state(revision=4))
    assert G.needs_rebind(state(revision=3), state(enabled=False, revision=4))
    assert not G.needs_rebind(state(revision=4), state(revision=4))


# --- keys ---------------------------------------------------------------------------------------
def grant(user, issued, key=KEY, sha="ab" * 32):
    return [sha, user, issued, key]


def test_token_keys_take_live_grants_only():
    t = G.TokenKeys()
    assert t.add([grant("alice", 1000)], now=1100, ttl=300) == []
    assert t.grants == {KEY.encode(): ("alice", 1300.0)}
    t.add([grant("alice", 500)], now=1100, ttl=300)  # an older grant of the same key
    assert t.grants[KEY.encode()] == ("alice", 1300.0)
    t.add([grant("bob", 100, key=KEY[:-1] + "x")], now=1100, ttl=300)  # expired: a replay
    assert len(t.grants) == 1
    for bad in ([grant("alice", 1000, key="short")], [["zz", "alice", 1000, KEY]],
                [grant("", 1000)], [grant("alice", True)], [[1, 2]], "nope"):
        t.add(bad if isinstance(bad, list) else bad, now=1100, ttl=300)
    assert t.invalid == 6 and len(t.grants) == 1
    t.add([grant("alice", 1000, key=None)], now=1100, ttl=300)  # no key: nothing for the watch
    # the same key, now another user's: reported so subscriptions can be decided again
    assert t.add([grant("bob", 1050)], now=1100, ttl=300) == [(KEY.encode(), "alice")]
    assert t.expire(1349) == [] and t.expire(1350) == [(KEY.encode(), "bob")] and t.grants == {}


def test_tokens_end_with_their_user_its_password_or_auth():
    old = state(alice=User(["ra"], password={"h": 1}))
    t = G.TokenKeys()
    t.add([grant("alice", 1000), grant("bob", 1000, key=KEY[:-1] + "x")], now=1000, ttl=300)
    assert t.follow(old, state(revision=6, alice=User(["ra"], password={"h": 1}))) == []
    assert t.follow(old, state(revision=6, alice=User(["ra"], password={"h": 2}))) == [(KEY.encode(), "alice")]
    new = state(revision=7)
    del new.users["bob"]
    assert [u for _, u in t.follow(state(revision=6), new)] == ["bob"]
    t.add([grant("alice", 1000)], now=1000, ttl=300)
    assert len(t.follow(new, state(enabled=False, revision=8))) == 1 and t.grants == {}


def test_key_map_cert_auth_keys_win_over_token_keys():
    other = KEY[:-1] + "x"
    s = state(carol=User([], key=KEY))
    tokens = [(KEY.encode(), ("alice", 1.0)), (other.encode(), ("bob", 1.0))]
    assert G.key_map(s, True, tokens) == {KEY.encode(): "carol", other.encode(): "bob"}
    assert G.key_map(s, False, tokens) == {KEY.encode(): "alice", other.encode(): "bob"}
    assert G.key_map(None, True, []) == {}


# --- libzmq: what XPUB_MANUAL does (the gate's assumptions) ----------------------------------
def _recv(sock, timeout_ms=2000):
    if not sock.poll(timeout_ms):
        return None
    return sock.recv(copy=False)


def test_xpub_manual_delivers_every_subscribe_and_an_unsubscribe_per_topic_at_close():
    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.XPUB)
        pub.linger = 0
        pub.setsockopt(zmq.XPUB_MANUAL, 1)
        pub.setsockopt(zmq.MAXMSGSIZE, 64)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        subs = []
        for _ in range(2):
            s = ctx.socket(zmq.SUB)
            s.linger = 0
            s.connect(f"tcp://127.0.0.1:{port}")
            subs.append(s)
        a, b = subs
        a.subscribe(b"T")
        assert _recv(pub).bytes == b"\x01T"
        pub.subscribe(b"T")  # granted to a (the pipe of the message just received)
        b.subscribe(b"T")
        assert _recv(pub).bytes == b"\x01T"  # the second subscriber is seen too: refused
        a.subscribe(b"T")
        assert _recv(pub).bytes == b"\x01T"  # a repeat from the same connection, too
        a.unsubscribe(b"T")                  # SUB counts: nothing sent while one remains
        assert _recv(pub, 300) is None
        got = None
        for _ in range(50):
            pub.send(b"T-event")
            if a.poll(100):
                got = a.recv()
                break
        assert got == b"T-event"
        assert b.poll(300) == 0  # refused: never gets it
        b.close(0)
        f = _recv(pub)
        assert f.bytes == b"\x00T"  # at close, for the refused topic too, and without a user
        with pytest.raises(zmq.ZMQError):
            f.get("Socket-Type")
        # A message over ZMQ_MAXMSGSIZE drops that connection; nothing reaches us.
        x = ctx.socket(zmq.XSUB)
        x.linger = 0
        x.connect(f"tcp://127.0.0.1:{port}")
        x.send(b"\x01" + b"x" * 100)
        assert _recv(pub, 500) is None
        for s in (a, x, pub):
            s.close(0)
    finally:
        ctx.term()
