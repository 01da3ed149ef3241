"""The watch bounds of issue 12, without sockets: covering channels for long keys, the
channel index (matching costs no O(channels) scan), the channel-table bounds, messages too
big for the live path, heartbeat slots, and the consumer's filtering of a covering channel
(actors/watch/channels.py, protocol/client/watch.py)."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings, strategies as st

from actors.watch import channels as C
from protocol.client import watch as W
from tests.lanes import examples

N = C.MAX_TOPIC_KEY


def body(payload):
    assert payload[:1] == b"\x01"
    return msgpack.unpackb(payload[1:], raw=False)


def ev(t, key, rev, value=b"v"):
    return [t, {"key": key, "value": value, "create_revision": rev, "mod_revision": rev,
                "version": 1, "lease": 0}, None]


# --- covering channels ---------------------------------------------------------------------
def in_range(key, start, end):
    return C.ChannelSpec(start, end).contains(key)


def test_covering_range_examples():
    long = b"k" * 300_000
    assert W.covering_range(b"a") == (b"a", b"")
    assert W.covering_range(b"a", b"b") == (b"a", b"b")
    assert W.covering_range(b"x" * N) == (b"x" * N, b"")  # exactly 256: as is
    assert W.covering_range(long) == (b"k" * N, b"k" * (N - 1) + b"l")
    assert W.covering_range(long, b"\x00") == (b"k" * N, b"\x00")
    assert W.covering_range(long, b"m") == (b"k" * N, b"m")
    assert W.covering_range(b"a", b"b" * 300) == (b"a", b"b" * (N - 1) + b"c")
    assert W.covering_range(b"\xff" * 300) == (b"\xff" * N, b"\x00")  # no end: from the key on
    # the topic of a 300 KB key is short
    k, e = W.covering_range(long)
    assert len(W.watch_topic(k, e)) <= C.MAX_TOPIC_BYTES


key_st = st.binary(min_size=1, max_size=N + 40).map(lambda b: b.ljust(N - 2, b"a") if len(b) > 8 else b)
end_st = st.one_of(st.just(b""), st.just(b"\x00"), st.binary(min_size=1, max_size=N + 40))


@settings(max_examples=examples(400))
@given(key_st, end_st, st.lists(st.binary(max_size=N + 40), max_size=8))
def test_covering_range_holds_the_range_and_is_short(key, end, probes):
    if end not in (b"", b"\x00") and end <= key:
        end = key + b"\x00"  # a non-empty range
    ck, ce = W.covering_range(key, end)
    assert (ck, ce) == W.covering_range(key, end)  # the client library agrees
    assert len(ck) <= N and len(ce) <= N
    assert C.decode_topic(C.encode_topic(ck, ce)).short
    if len(key) <= N and len(end) <= N:
        assert (ck, ce) == (key, end)
    for k in probes + [key, key + b"\x00", end]:
        if k and in_range(k, key, end):
            assert in_range(k, ck, ce), (k, key, end, ck, ce)


# --- the channel index ---------------------------------------------------------------------
alphabet = st.binary(min_size=1, max_size=3).map(lambda b: bytes(x % 4 + 0x61 for x in b))
range_st = st.one_of(
    alphabet.map(lambda k: (k, b"")),                                    # one key
    alphabet.map(lambda k: (k, C.prefix_end(k))),                        # a prefix
    alphabet.map(lambda k: (k, b"\x00")),                                # from a key on
    st.tuples(alphabet, alphabet).filter(lambda t: t[0] < t[1]),         # any range
)


@settings(max_examples=examples(300))
@given(st.lists(range_st, min_size=1, max_size=25), st.lists(st.integers(0, 24), max_size=10),
       st.lists(alphabet, min_size=1, max_size=10))
def test_matching_is_exactly_contains(ranges, removed, keys):
    b = C.Broadcaster()
    topics = []
    for i, (k, e) in enumerate(ranges):
        t = C.encode_topic(k, e, prev_kv=bool(i % 2))
        assert b.subscribe(t) is not None
        topics.append(t)
    for i in removed:
        if i < len(topics):
            b.unsubscribe(topics[i])
    for key in keys:
        got = sorted(ch.topic for ch in b.matching(key))
        want = sorted(t for t, ch in b.channels.items() if ch.spec.contains(key))
        assert got == want
    for t in list(b.channels):
        b.unsubscribe(t)
    assert (b._by_key, b._prefix, b._prefix_lens, b._from, b._from_keys, b._ranges) == ({}, {}, {}, {}, [], [])
    assert b.topic_bytes == 0 and all(s == {} for s in b.slots)


def test_channel_kinds():
    assert C.ChannelSpec(b"a").kind == C.KIND_KEY
    assert C.ChannelSpec(b"a/", b"a0").kind == C.KIND_PREFIX
    assert C.ChannelSpec(b"a", b"\x00").kind == C.KIND_FROM
    assert C.ChannelSpec(b"a", b"c").kind == C.KIND_RANGE


def test_admit_bounds_length_count_bytes_and_generic_ranges():
    b = C.Broadcaster(max_channels=3, max_channel_bytes=10**6, max_range_channels=1)
    assert b.admit(C.encode_topic(b"k" * (N + 1))) == C.TOO_LONG
    assert b.admit(C.encode_topic(b"a", b"b" * (N + 1))) == C.TOO_LONG
    assert b.admit(b"x" * (C.MAX_TOPIC_BYTES + 1)) == C.TOO_LONG
    assert b.admit(b"") == C.NOT_A_CHANNEL and b.subscribe(b"") is None
    assert b.subscribe(C.encode_topic(b"k" * N, b"\x00")) is not None  # 256: fine
    assert b.subscribe(C.encode_topic(b"a", b"c")) is not None
    assert b.admit(C.encode_topic(b"d", b"f")) == C.FULL  # one generic range at most
    assert b.subscribe(C.encode_topic(b"d", b"f")) is None
    assert b.subscribe(C.encode_topic(b"x")) is not None
    assert b.admit(C.encode_topic(b"y")) == C.FULL  # three channels at most
    assert b.admit(C.encode_topic(b"x")) is None  # an existing one
    small = C.Broadcaster(max_channel_bytes=40)
    assert small.subscribe(C.encode_topic(b"a" * 20)) is not None  # 31 bytes
    assert small.admit(C.encode_topic(b"b")) == C.FULL  # 12 more would pass 40


# --- messages too big for the live path ------------------------------------------------------
def test_a_message_over_max_message_becomes_a_progress_message_showing_the_hole():
    b = C.Broadcaster(max_message=1000)
    t = C.encode_topic(b"k")
    ch = b.subscribe(t)
    b.start(5)
    out = b.publish(6, [ev("PUT", b"k", 6, b"x" * 2000)])
    assert [body(p) for _, p in out] == [{"progress_revision": 6, "last_event_revision": 6}]
    assert b.oversize == 1 and b.take_dirty() == []  # its progress went out already
    # a consumer at D = 5 sees last_event_revision 6 > 5: a hole, read from history
    (_, p), = b.publish(7, [ev("PUT", b"k", 7)])
    assert body(p)["prev_revision"] == 6 and ch.last == 7
    assert b.take_dirty() == [ch]


def test_progress_payload_is_the_specified_map():
    b = C.Broadcaster()
    ch = b.subscribe(C.encode_topic(b"k"))
    b.start(2**40)
    b.publish(2**40 + 1, [ev("PUT", b"k", 2**40 + 1)])
    b.publish(2**40 + 2, [ev("PUT", b"z", 2**40 + 2)])
    (t, p), = b.progress([ch])
    want = {"progress_revision": 2**40 + 2, "last_event_revision": 2**40 + 1}
    assert t == ch.topic and C.unpack_payload(p) == want and p == C.pack_payload(want)


def test_heartbeat_slots_hold_every_channel_once_and_evenly():
    b = C.Broadcaster()
    topics = [C.encode_topic(b"k%d" % i) for i in range(95)]
    for t in topics:
        b.subscribe(t)
    seen = [ch.topic for i in range(C.HEARTBEAT_SLOTS) for ch in b.heartbeat_slot(i)]
    assert sorted(seen) == sorted(topics)
    assert {len(b.heartbeat_slot(i)) for i in range(C.HEARTBEAT_SLOTS)} <= {9, 10}
    b.unsubscribe(topics[0])
    assert topics[0] not in [ch.topic for i in range(C.HEARTBEAT_SLOTS) for ch in b.heartbeat_slot(i)]


def test_compact_rebuilds_tables_after_most_channels_left():
    b = C.Broadcaster()
    topics = [C.encode_topic(b"k%05d" % i) for i in range(5000)]
    for t in topics:
        b.subscribe(t)
    assert not b.compact()
    for t in topics[:4900]:
        b.unsubscribe(t)
    assert b.compact()
    assert sorted(b.channels) == sorted(topics[4900:])
    b.start(1)
    assert len(b.publish(2, [ev("PUT", b"k04999", 2)])) == 1


# --- the consumer of a covering channel -------------------------------------------------------
def covering_watcher(key, range_end, delivered):
    w = W.WatchState(key, range_end)  # no sockets: only the message rules
    w.delivered, w.need_catchup = delivered, False
    return w


def test_consumer_filters_a_covering_channel_to_its_own_key():
    mine = b"k" * 300
    sibling = b"k" * 299 + b"j"
    w = covering_watcher(mine, b"", 10)
    assert w.covering and len(w.topic) <= C.MAX_TOPIC_BYTES

    def events(rev, prev, *keys):
        return [w.topic, C.pack_payload({"revision": rev, "prev_revision": prev,
                                         "events": [{"type": "PUT", "kv": {"key": k, "mod_revision": rev}}
                                                    for k in keys]})]

    w.on_message(events(11, 10, sibling), 0.0)  # only another key: D moves, nothing delivered
    assert w.delivered == 11 and not w.ready
    w.on_message(events(12, 11, sibling, mine), 0.0)
    assert [[e.kv.key for e in r.events] for r in w.ready] == [[mine]] and w.delivered == 12
    w.on_message(events(14, 13, mine), 0.0)  # a hole is still a hole
    assert w.need_catchup and w.delivered == 12
