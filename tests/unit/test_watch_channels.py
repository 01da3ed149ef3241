"""Pure tests of the watch: topic encoding, matching, per-channel sequencing
(actors/watch/channels.py) and the storage's `history` op (MVCCStore.history)."""
from __future__ import annotations

import pathlib

import msgpack
import pytest
from hypothesis import given, strategies as st

from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.watch import channels as C
from protocol.client.watch import watch_topic
from protocol.errors import Compacted, InvalidArgument
from protocol.requests import Limits, normalize_request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_channels_module_is_pure():
    from test_pure_imports import violations  # tests/unit is on sys.path under pytest

    assert violations(ROOT / "actors/watch/channels.py") == []


# --- topics -----------------------------------------------------------------------------
def test_topic_layout_is_as_specified():
    t = C.encode_topic(b"ab", b"ac", prev_kv=True, no_delete=True)
    assert t == b"W1" + bytes([1 | 4]) + b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x02ac"
    assert C.decode_topic(t) == C.ChannelSpec(b"ab", b"ac", True, False, True)
    # the client library encodes it the same way
    assert watch_topic(b"ab", b"ac", prev_kv=True, no_delete=True) == t


keys = st.binary(min_size=1, max_size=6)


@given(keys, st.binary(max_size=6), st.booleans(), st.booleans(), st.booleans(),
       keys, st.binary(max_size=6), st.booleans(), st.booleans(), st.booleans())
def test_topics_round_trip_and_are_prefix_free(k1, e1, a1, b1, c1, k2, e2, a2, b2, c2):
    t1 = C.encode_topic(k1, e1, prev_kv=a1, no_put=b1, no_delete=c1)
    t2 = C.encode_topic(k2, e2, prev_kv=a2, no_put=b2, no_delete=c2)
    assert C.decode_topic(t1) == C.ChannelSpec(k1, e1, a1, b1, c1)
    if t1 != t2:
        assert not t2.startswith(t1) and not t1.startswith(t2)


@pytest.mark.parametrize("bad", [b"", b"W1", b"X1\x00\x00\x00\x00\x01a\x00\x00\x00\x00",
                                 b"W1\x08\x00\x00\x00\x01a\x00\x00\x00\x00",  # unknown flag
                                 b"W1\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # empty key
                                 b"W1\x00\x00\x00\x00\x01a\x00\x00\x00\x01",  # short
                                 b"W1\x00\x00\x00\x00\x01a\x00\x00\x00\x00x"])  # trailing
def test_bad_topics_are_not_channels(bad):
    assert C.decode_topic(bad) is None
    assert C.Broadcaster().subscribe(bad) is None


# --- matching ---------------------------------------------------------------------------
def ev(t, key, rev, prev=None):
    kv = {"key": key, "value": b"v", "create_revision": rev, "mod_revision": rev,
          "version": 1, "lease": 0}
    return [t, kv, prev]


def test_spec_contains_key_range_prefix_and_from_key():
    assert C.ChannelSpec(b"a").contains(b"a") and not C.ChannelSpec(b"a").contains(b"ab")
    rng = C.ChannelSpec(b"a/", b"a0")
    assert rng.contains(b"a/") and rng.contains(b"a/x") and not rng.contains(b"a0")
    assert not rng.contains(b"a")
    frm = C.ChannelSpec(b"b", b"\x00")
    assert frm.contains(b"b") and frm.contains(b"\xff\xff") and not frm.contains(b"a")


def body(payload):
    assert payload[:1] == b"\x01"
    return msgpack.unpackb(payload[1:], raw=False)


def test_publish_one_message_per_channel_per_revision_with_filters_and_prev_kv():
    b = C.Broadcaster()
    t_all = C.encode_topic(b"\x00", b"\x00")
    t_key = C.encode_topic(b"k1", prev_kv=True)
    t_noput = C.encode_topic(b"k", b"l", no_put=True)
    for t in (t_all, t_key, t_noput):
        b.subscribe(t)
    b.start(10)
    prev = {"key": b"k1", "value": b"old", "create_revision": 3, "mod_revision": 3,
            "version": 1, "lease": 0}
    out = dict(b.publish(11, [ev("PUT", b"k1", 11, prev), ev("DELETE", b"k2", 11, prev), ev("PUT", b"z", 11)]))
    assert set(out) == {t_all, t_key, t_noput}
    a = body(out[t_all])
    assert a["revision"] == 11 and a["prev_revision"] == 10
    assert [e["kv"]["key"] for e in a["events"]] == [b"k1", b"k2", b"z"]
    assert all("prev_kv" not in e for e in a["events"])
    k = body(out[t_key])
    assert [e["kv"]["key"] for e in k["events"]] == [b"k1"] and k["events"][0]["prev_kv"] == prev
    assert [e["type"] for e in body(out[t_noput])["events"]] == ["DELETE"]
    # next revision touches only z: only the "all" channel speaks, prev_revision chains
    out = dict(b.publish(12, [ev("PUT", b"z", 12)]))
    assert set(out) == {t_all} and body(out[t_all])["prev_revision"] == 11
    out = dict(b.publish(13, [ev("PUT", b"k1", 13)]))
    assert body(out[t_key])["prev_revision"] == 11  # no k1 event in (11, 13)


def test_new_channel_starts_at_position_and_progress_reports_last():
    b = C.Broadcaster()
    b.start(5)
    b.publish(6, [ev("PUT", b"a", 6)])
    t = C.encode_topic(b"a")
    ch = b.subscribe(t)
    assert ch.last == 6  # no a-event published to this channel in (6, position]
    (topic, payload), = b.progress([ch])
    assert topic == t and body(payload) == {"progress_revision": 6, "last_event_revision": 6}
    b.publish(7, [ev("PUT", b"b", 7)])
    assert b.take_dirty() == []  # nothing published on it: its heartbeat brings progress
    assert ch in b.heartbeat_slot(ch.slot)
    assert body(b.progress([ch])[0][1]) == {"progress_revision": 7, "last_event_revision": 6}
    b.publish(8, [ev("PUT", b"a", 8)])
    assert b.take_dirty() == [ch] and b.take_dirty() == []  # published: progress at the next tick


def test_skip_to_makes_the_hole_visible():
    b = C.Broadcaster()
    t = C.encode_topic(b"a")
    b.subscribe(t)
    b.start(1)
    b.publish(2, [ev("PUT", b"a", 2)])
    b.skip_to(9)
    out = dict(b.publish(10, [ev("PUT", b"a", 10)]))
    assert body(out[t])["prev_revision"] == 9  # a consumer at 2 sees (2, 9] may hold events


def test_unsubscribe_forgets_the_channel():
    b = C.Broadcaster()
    t1, t2 = C.encode_topic(b"a"), C.encode_topic(b"a", b"b")
    b.subscribe(t1), b.subscribe(t2)
    b.start(0)
    b.unsubscribe(t1)
    b.unsubscribe(t2)
    b.unsubscribe(t2)
    assert b.publish(1, [ev("PUT", b"a", 1)]) == [] and b.channels == {}


def test_publish_refuses_out_of_order_revisions():
    b = C.Broadcaster()
    b.start(3)
    with pytest.raises(AssertionError):
        b.publish(5, [])


# --- sequencing -------------------------------------------------------------------------
def test_sequencer_orders_and_reports_gaps():
    s = C.Sequencer()
    s.add(3, ["e3"])
    assert s.pop_ready() == [] and s.gap(10) is None  # not started
    s.start(2)
    assert s.gap(3) == (2, 2)
    s.add(2, ["e2"])
    s.add(2, ["dup"])
    assert s.pop_ready() == [(2, ["e2"]), (3, ["e3"])]
    assert s.gap(3) is None
    assert s.gap(6) == (4, 0)  # tail gap: storage is ahead, nothing pending
    s.add(6, ["e6"])
    assert s.gap(6) == (4, 5)
    s.add(1, ["old"])
    assert 1 not in s.pending
    s.skip_to(5)
    assert s.pop_ready() == [(6, ["e6"])]


# --- history ----------------------------------------------------------------------------
LIMITS = Limits()


def norm(op, **f):
    return normalize_request({"op": op, **f}, LIMITS)


@pytest.fixture
def store():
    s = MVCCStore(MemoryBackend())
    s.idx = 0

    def do(op, **f):
        s.idx += 1
        (res,) = s.apply([(s.idx, norm(op, **f))])
        assert res.error is None, res.error
        return res

    s.do = do
    return s


def hist(store, **f):
    f.setdefault("key", b"\x00")
    f.setdefault("range_end", b"\x00")
    return store.history(norm("history", **f))


def test_history_request_validation():
    op = norm("history", key=b"a", start_revision=3)
    assert op["serializable"] is True and op["end_revision"] == 0 and op["prev_kv"] is False
    with pytest.raises(InvalidArgument):
        norm("history", key=b"a", start_revision=5, end_revision=4)
    with pytest.raises(InvalidArgument):
        norm("history", key=b"a", bogus=1)


def test_history_groups_by_revision_filters_and_pages(store):
    store.do("put", key=b"a", value=b"1")                         # 2
    store.do("txn", success=[{"put": {"key": b"a", "value": b"2"}},
                             {"put": {"key": b"b", "value": b"1"}}])  # 3
    store.do("delete_range", key=b"a")                          # 4
    store.do("put", key=b"c", value=b"1")                         # 5
    r = hist(store, start_revision=1)
    assert [g["revision"] for g in r["revisions"]] == [2, 3, 4, 5]
    assert [len(g["events"]) for g in r["revisions"]] == [1, 2, 1, 1]
    assert r["more"] is False and r["last_revision"] == 5
    r = hist(store, key=b"a", start_revision=2, prev_kv=True, no_put=True)
    (g,) = r["revisions"]
    assert g["revision"] == 4 and g["events"][0]["type"] == "DELETE"
    assert g["events"][0]["prev_kv"]["value"] == b"2"
    r = hist(store, start_revision=2, limit_revisions=2)
    assert [g["revision"] for g in r["revisions"]] == [2, 3] and r["more"] and r["last_revision"] == 3
    r = hist(store, start_revision=2, end_revision=4)
    assert [g["revision"] for g in r["revisions"]] == [2, 3, 4] and not r["more"]
    r = hist(store, start_revision=9)
    assert r == {"revisions": [], "more": False, "last_revision": 5}


def test_history_at_and_below_the_compact_revision(store):
    for i in range(5):
        store.do("put", key=b"k%d" % (i % 2), value=b"%d" % i)   # 2..6
    store.do("delete_range", key=b"k0")                         # 7
    store.do("put", key=b"k1", value=b"x")                        # 8
    store.do("compact", revision=7)
    with pytest.raises(Compacted) as exc:
        hist(store, start_revision=6)
    assert exc.value.details == {"compact_revision": 7}
    r = hist(store, start_revision=7)  # etcd allows watching from the compact revision
    assert [(g["revision"], [e["type"] for e in g["events"]]) for g in r["revisions"]] == \
        [(7, ["DELETE"]), (8, ["PUT"])]
    r = hist(store, start_revision=0)  # 0 = the oldest there is
    assert [g["revision"] for g in r["revisions"]] == [7, 8]


# --- the consumer's rules (protocol/client/watch.py, SPEC section 5 step 4) ---------------
def bare_watcher(delivered: int, progress_notify: bool = False):
    from protocol.client.watchcore import WatchState, watch_topic

    w = WatchState(b"k", b"", progress_notify=progress_notify)  # no sockets: only the rules
    w.topic = b"T"
    w.delivered, w.need_catchup = delivered, False
    assert w.topic != watch_topic(b"k")  # (a made-up topic, as the messages below carry)
    return w


def msg(body):
    return [b"T", C.pack_payload(body)]


def events_msg(rev, prev):
    return msg({"revision": rev, "prev_revision": prev,
                "events": [{"type": "PUT", "kv": {"key": b"k", "mod_revision": rev}}]})


def test_consumer_delivers_in_order_drops_duplicates_and_sees_holes():
    w = bare_watcher(10)
    w.on_message(events_msg(10, 7), 0.0)  # duplicate
    w.on_message(events_msg(12, 10), 0.0)  # nothing in (10, 12): deliver
    assert [r.revision for r in w.ready] == [12] and w.delivered == 12
    w.on_message(events_msg(15, 13), 0.0)  # (12, 13] may hold an event: a hole
    assert w.need_catchup and w.delivered == 12 and len(w.ready) == 1
    w.need_catchup = False
    w.on_message([b"other", b"\x01"], 0.0)  # another topic: ignored
    assert len(w.ready) == 1 and not w.need_catchup


def test_consumer_progress_is_a_bookmark_or_a_hole():
    w = bare_watcher(12, progress_notify=True)
    w.on_message(msg({"progress_revision": 20, "last_event_revision": 12}), 1.0)
    assert w.delivered == 20 and w.ready[-1].progress_notify and w.ready[-1].revision == 20
    w.on_message(msg({"progress_revision": 30, "last_event_revision": 25}), 2.0)  # lost message at 25
    assert w.need_catchup and w.delivered == 20
