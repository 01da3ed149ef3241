"""The broadcaster's per-subscription and per-connection state (actors/watch/gate.py,
channels.py) stays small and goes away with the subscriptions: equal topics are held
once, a connection without refusals has no refused set, the key indexes hold a channel
(a list only when a key has several), and after unsubscribes and disconnections nothing
of a connection or a channel is left."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.storage.auth import AuthState
from actors.watch import gate as G
from actors.watch.channels import Broadcaster, encode_topic
from protocol.client.types import prefix_end
from tests.lanes import examples

OPEN = AuthState(False, 1, {}, {})


def prefix_topic(i: int) -> bytes:
    p = b"p%03d/" % i
    return encode_topic(p, prefix_end(p))


def key_topic(i: int, **flags) -> bytes:
    return encode_topic(b"k/%04d" % i, **flags)


class Node:
    """A gate and a channel table driven as the actor drives them."""

    def __init__(self) -> None:
        self.g = G.Gate()
        self.core = Broadcaster(max_channel_bytes=10**9)
        self.core.start(0)

    def msg(self, kind: int, topic: bytes, conn: int | None, fd: int = -1) -> G.Decision:
        origin = None if conn is None else G.Origin("", conn, fd if fd >= 0 else conn + 10)
        d = self.g.decide(bytes((kind,)) + bytes(topic), origin, OPEN, self.core.admit, self.core.canonical)
        if d.action == G.SUBSCRIBE and d.track:
            self.core.subscribe(d.topic)
        elif d.action == G.UNSUBSCRIBE and d.untrack:
            self.core.unsubscribe(d.topic)
        return d

    def empty(self) -> bool:
        c = self.core
        return (self.g.granted == {} and self.g.refused_open == {} and self.g.held_bytes == 0
                and c.channels == {} and c.topic_bytes == 0 and c.dirty == {}
                and all(s == {} for s in c.slots) and c._by_key == {} and c._prefix == {}
                and c._prefix_lens == {} and c._from == {} and c._from_keys == [] and c._ranges == [])


def test_connections_sharing_a_topic_hold_the_channel_tables_bytes_object():
    n = Node()
    for conn in range(1, 6):
        for i in range(3):
            d = n.msg(1, prefix_topic(i), conn)  # a new bytes object each time, as from a socket
            assert d.action == G.SUBSCRIBE
    for i in range(3):
        t = prefix_topic(i)
        ch = n.core.channels[t]
        assert n.g.granted[t] == 5
        for conn in range(1, 6):
            held = [x for x in n.g.conns[conn].granted if x == t]
            assert len(held) == 1 and held[0] is ch.topic
        assert next(k for k in n.g.granted if k == t) is ch.topic


def test_a_connection_without_refusals_has_no_refused_set():
    n = Node()
    n.g.max_per_conn = 2
    n.msg(1, key_topic(1), 1)
    n.msg(1, key_topic(2), 2)
    assert n.g.conns[1].refused is n.g.conns[2].refused  # the one shared empty set
    assert not hasattr(n.g.conns[1], "__dict__")
    n.msg(1, key_topic(2), 1)
    assert n.msg(1, key_topic(3), 1).action == G.REFUSE  # a third: over max_per_conn
    assert n.g.conns[1].refused == {key_topic(3)} and n.g.conns[2].refused == frozenset()


def test_unsubscribes_then_disconnect_leave_nothing():
    n = Node()
    for conn in range(1, 21):
        for i in range(10):
            n.msg(1, prefix_topic((conn * 10 + i) % 50), conn)
            n.msg(1, key_topic(conn * 10 + i), conn)
    assert len(n.core.channels) == 50 + 200
    for conn in range(1, 21):
        for i in range(10):
            n.msg(0, prefix_topic((conn * 10 + i) % 50), conn)
            n.msg(0, key_topic(conn * 10 + i), conn)
        assert n.g.conns[conn].granted == set()
    assert n.empty()
    for conn in range(1, 21):
        n.g.closed(conn + 10)
    assert n.g.conns == {}


def test_disconnected_connections_leave_nothing():
    """A closing connection's topics come back as unsubscribes without an origin (one per
    topic it held, refused ones too), its record goes with the monitor's report."""
    n = Node()
    held = []
    n.g.max_per_conn = 5
    for conn in range(1, 11):
        for i in range(7):  # two over the bound: refused, held by libzmq all the same
            t = prefix_topic((conn + i) % 12) if i % 2 else key_topic(conn * 7 + i, prev_kv=True)
            n.msg(1, t, conn)
            held.append(t)
    assert n.g.refused_open and n.g.held_bytes == sum(map(len, held))
    for conn in range(1, 11):
        n.g.closed(conn + 10)
    for t in held:
        assert n.msg(0, t, None).action == G.UNSUBSCRIBE
    assert n.empty() and n.g.conns == {}


def test_key_index_holds_a_channel_or_a_list_of_those_sharing_the_key():
    c = Broadcaster()
    c.start(0)
    plain, prev = key_topic(1), key_topic(1, prev_kv=True)
    c.subscribe(plain)
    assert c._by_key[b"k/0001"] is c.channels[plain]
    c.subscribe(prev)
    assert c._by_key[b"k/0001"] == [c.channels[plain], c.channels[prev]]
    assert {ch.topic for ch in c.matching(b"k/0001")} == {plain, prev}
    c.unsubscribe(plain)
    assert c._by_key[b"k/0001"] is c.channels[prev]
    assert [ch.topic for ch in c.matching(b"k/0001")] == [prev]
    c.unsubscribe(prev)
    assert c._by_key == {} and list(c.matching(b"k/0001")) == []


_keys = st.sampled_from([b"a", b"ab", b"abc", b"b", b"b\xff", b"c"])
_specs = st.tuples(_keys, st.sampled_from(["key", "prefix", "from"]), st.booleans())


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(st.booleans(), _specs), max_size=40))
def test_matching_equals_brute_force_through_adds_and_removes(ops):
    c = Broadcaster()
    c.start(0)
    for add, (key, kind, prev_kv) in ops:
        end = {"key": b"", "prefix": prefix_end(key), "from": b"\x00"}[kind]
        topic = encode_topic(key, end, prev_kv=prev_kv)
        if add:
            c.subscribe(topic)
        else:
            c.unsubscribe(topic)
        for probe in (b"a", b"ab", b"abc", b"abd", b"b", b"b\xff", b"b\xff\x00", b"c", b"d"):
            got = sorted(ch.topic for ch in c.matching(probe))
            want = sorted(t for t, ch in c.channels.items() if ch.spec.contains(probe))
            assert got == want
    for t in list(c.channels):
        c.unsubscribe(t)
    assert c._by_key == {} and c._prefix == {} and c._from == {} and c._from_keys == []
