"""The typed decoders of the internal messages (actors/runtime/wire.py): what the real
producers send decodes unchanged; garbage, wrong types, huge ints, bools as ints and
nesting bombs are refused with Malformed (never another exception)."""
from __future__ import annotations

import copy
import random

import msgpack
import pytest

from actors.runtime import entry
from actors.runtime import messages as M
from actors.runtime import wire
from actors.storage.actor import _event_wire
from actors.storage.mvcc import MemoryBackend, MVCCStore
from protocol import errors
from protocol.codec import pack, pack_msg
from protocol.requests import Limits, normalize_request

LIMITS = Limits()
PUT = normalize_request({"op": "put", "key": b"k", "value": b"v"}, LIMITS)
HISTORY = {"op": "history", "key": b"\x00", "range_end": b"\x00", "start_revision": 2, "end_revision": 3,
           "prev_kv": True, "no_put": False, "no_delete": False, "limit_revisions": 2, "serializable": True}


def _store_events() -> tuple[list, dict]:
    store = MVCCStore(MemoryBackend())
    res = store.apply([(1, PUT), (2, normalize_request({"op": "put", "key": b"k", "value": b"w"}, LIMITS)),
                       (3, normalize_request({"op": "delete_range", "key": b"k"}, LIMITS))])
    events = [[r.revision, [_event_wire(e) for e in r.events]] for r in res]
    return events, store.history(HISTORY)


EVENTS, HISTORY_PAGE = _store_events()
ERR = errors.NoLeader().to_wire()
COMPACTED = errors.Compacted(compact_revision=5).to_wire()
NOT_LEADER = errors.NotLeader(leader_id=7, leader_client_urls=["tcp://h:1"]).to_wire()
MEMBER = {"id": 5, "name": "n1", "peer_urls": ["tcp://127.0.0.1:2380"], "client_urls": ["tcp://127.0.0.1:2379"],
          "watch_urls": [], "is_learner": False}
CONSENSUS_STATUS = {"epoch": 2**62 - 1, "member_id": 5, "term": 3, "lead": 5, "state": "leader", "commit": 10,
                    "first_index": 1, "last_index": 10, "members": [MEMBER], "is_learner": False, "faults": None}
STORAGE_STATUS = {"applied_index": 10, "revision": 4, "compact_revision": 0, "db_size": 4096,
                  "db_size_in_use": 100, "raft_term": 3, "alarms": [{"member_id": 5, "alarm": "NOSPACE"}],
                  "defragmenting": False}
DATA = entry.encode(5, 77, 12, None, PUT)
RAFT = [3, 2, 1, 4, 4, 10, [[4, 11, 0, DATA]], 10, 0, 0, b""]

GOOD: dict[int, list] = {
    M.PROPOSE: [[2**62, [[77, DATA], [78, entry.encode(5, 0, None, None, {"op": "alarm_activate", "member_id": 5,
                                                                             "alarm": "NOSPACE"})]]], [0, []]],
    M.PROPOSE_ACK: [[2**62, [77, 78], [[79, ERR]]], [1, [], []]],
    M.READ_INDEX: [[2**60 + 3]],
    M.READ_INDEX_RESP: [[3, 10, None, 7], [3, 0, ERR, 0]],
    M.FETCH: [[10, 9, 4096, True], [10, 9, 4096, False]],
    M.ENTRIES: [[[[11, 4, 0, DATA], [12, 4, 1, b""], [13, 4, 0, b""]], 13, 4], [[], 0, 0]],
    M.STATUS: [[0]],
    M.STATUS_RESP: [[0, CONSENSUS_STATUS], [1, {**CONSENSUS_STATUS, "faults": "drop_to=[2]", "new": [1]}]],
    M.READ: [[[5, HISTORY, 0]]],
    M.READ_RESP: [[[5, HISTORY_PAGE, None, 4, 3]], [[5, None, COMPACTED, 4, 3]]],
    M.STORAGE_STATUS: [[9]],
    M.STORAGE_STATUS_RESP: [[9, STORAGE_STATUS]],
    M.CLIENT_READ: [[[5, normalize_request({"op": "range", "key": b"a", "range_end": b"b"}, LIMITS), 10, 2**64 - 1,
                      None, 0],
                     [6, normalize_request({"op": "lease_keepalive", "ID": 3}, LIMITS), 0, 0, ["alice", 4], 9],
                     [7, normalize_request({"op": "snapshot"}, LIMITS), 3, 1, None, 0]]],
    M.CLIENT_REPLIES: [[[5, pack({"id": 1, "ok": True}), 4]]],
    M.EVENTS: [EVENTS],
    M.READY: [["storage", 4242]],
    M.HEARTBEAT: [["gateway", 4242, {}], ["consensus", 7, {"state": "leader", "term": 3, "leader": 5, "commit": 10}],
                  ["storage", 8, {"applied_index": 10, "revision": 4, "alarms": ["NOSPACE"]}]],
    M.MOVE_LEADER: [[3, 2**64 - 1]],
    M.MOVE_LEADER_RESP: [[3, None], [3, ERR]],
    M.CHECKPOINT: [[4]],
    M.CHECKPOINT_RESP: [[4, "/d/snapshots/out-4-1", 10, None], [4, None, 0, ERR]],
    M.INSTALL: [[4, "/d/snapshots/in-5-1"]],
    M.INSTALL_RESP: [[4, 10, None]],
    M.HASH_KV: [[4, 0]],
    M.HASH_KV_RESP: [[4, {"hash": 2**64 - 1, "revision": 4, "compact_revision": 0}, None], [4, None, ERR]],
    M.LEADERSHIP: [[True, 3, 5, ["tcp://127.0.0.1:2379"], 9, False], [False, 0, 0, [], 0, False],
                   [True, 1, 5, [], 2, True]],
    M.LEASE_PROPOSE: [[3, [entry.encode(0, 0, None, None, {"op": "lease_expire", "id": 9})]]],
    M.DEFRAG: [[4]],
    M.DEFRAG_RESP: [[4, {"took_s": 0.25, "db_size_before": 10, "db_size_after": 5}, None], [4, None, ERR]],
    M.MEMBER: [[4, normalize_request({"op": "member_add", "name": "n4", "peer_urls": ["tcp://h:1"]}, LIMITS)],
               [4, normalize_request({"op": "member_remove", "member_id": 9}, LIMITS)]],
    M.MEMBER_RESP: [[4, {"member": MEMBER, "members": [MEMBER]}, None], [4, None, NOT_LEADER]],
    M.AUTH_STATE: [[{"enabled": False, "revision": 0, "users": {}, "roles": {}}]],
    M.AUTH_TOKEN: [[["ab" * 32, "bob", 1_700_000_000, None]]],
    M.AUTH_STATE_GET: [[1]],
    M.PEER_RAFT: [[5, [RAFT]]],
    M.PEER_FORWARD: [[5, [[77, DATA]]]],
    M.PEER_FORWARD_REJECT: [[5, [77]]],
    M.PEER_HELLO: [[5, {"name": "n1", "client_urls": [], "watch_urls": [], "version": "0.1"}]],
    M.PEER_SNAP_CHUNK: [[5, 1, 0, "storage/CURRENT", 0, b"x", False, None, None],
                        [5, 1, 3, "", 0, b"", True, b"d" * 32, RAFT]],
    M.PEER_SNAP_ACK: [[5, 1, 0, "ok"]],
    M.PEER_MEMBER: [[5, 1, normalize_request({"op": "member_promote", "member_id": 9}, LIMITS)]],
    M.PEER_MEMBER_RESP: [[5, 1, {"members": []}, None]],
    M.PEER_JOIN: [[0]],
    M.PEER_JOIN_RESP: [[5, [[5, "n1", ["tcp://h:1"], False, ""]]]],
    M.PEER_REMOVED: [[5]],
}


def test_every_message_type_has_a_schema_a_class_and_a_test():
    types = {getattr(M, n) for n in dir(M) if n.isupper() and isinstance(getattr(M, n), int)
             and not n.startswith(("MAX_", "INT64", "UINT64"))}
    assert types == set(wire.SCHEMAS) == set(M.CLASSES) == set(GOOD)


def test_every_type_code_has_exactly_one_class():
    classes = [v for v in vars(M).values() if isinstance(v, type) and isinstance(getattr(v, "TYPE", None), int)]
    codes = [cls.TYPE for cls in classes]
    assert sorted(codes) == sorted(set(codes)) == sorted(M.CLASSES)
    for cls in classes:
        assert M.CLASSES[cls.TYPE] is cls and issubclass(cls, tuple)
        if getattr(cls, "BATCH", False):
            assert cls._fields == ("items",)


@pytest.mark.parametrize("msg_type", sorted(GOOD))
def test_good_messages_round_trip(msg_type):
    """decode gives the typed message of the frame's type, and pack gives the same bytes back."""
    for body in GOOD[msg_type]:
        frame = pack_msg(msg_type, body)
        msg = wire.decode(frame)
        assert type(msg) is M.CLASSES[msg_type] and msg.TYPE == msg_type
        assert wire.decode(frame, {msg_type}) == msg
        assert wire.pack(msg) == frame


def test_messages_read_by_name_and_by_position():
    msg = wire.decode(pack_msg(M.CHECKPOINT_RESP, [4, "/d/s", 10, None]))
    assert (msg.ctx_id, msg.path, msg.applied_index, msg.error) == (4, "/d/s", 10, None)
    ctx_id, path, applied, error = msg
    assert (ctx_id, path, applied, error) == (4, "/d/s", 10, None)
    batch = wire.decode(pack_msg(M.CLIENT_READ, GOOD[M.CLIENT_READ][0]))
    assert [type(r) for r in batch.items] == [M.ClientReadItem] * len(batch.items)
    assert batch.items[1].auth == M.Auth("alice", 4) and batch.items[0].auth is None
    entries = wire.decode(pack_msg(M.ENTRIES, GOOD[M.ENTRIES][0]))
    assert entries.entries[1] == M.EntryRow(12, 4, 1, b"") and entries.term == 4


def test_a_join_answer_of_an_older_member_has_no_peer_key():
    msg = wire.decode(pack_msg(M.PEER_JOIN_RESP, [5, [[5, "n1", ["tcp://h:1"], False]]]))
    assert msg.members == [M.JoinMember(5, "n1", ["tcp://h:1"], False, "")]


def test_a_type_the_socket_does_not_take_is_refused():
    with pytest.raises(errors.Malformed):
        wire.decode(pack_msg(M.READY, ["storage", 1]), {M.ENTRIES})


@pytest.mark.parametrize("frame", [
    b"", b"\x01", b"\x02\x32\x90", bytes([1, 200]) + msgpack.packb([1]), bytes([1, M.READY]),
    bytes([1, M.READY]) + b"\xc1", bytes([1, M.READY]) + msgpack.packb(["storage", 1]) + b"\x00",
    bytes([1, M.ENTRIES]) + b"\x91" * 5000 + b"\xc0",  # a nesting bomb
    bytes([1, M.ENTRIES]) + b"\xdd\xff\xff\xff\xff",  # an array that claims 4G elements
    bytes([1, M.READY]) + b"\xc7\x01\x05x",  # ext type
])
def test_garbage_frames_are_malformed(frame):
    with pytest.raises(errors.Malformed):
        wire.decode(frame)


BAD_VALUES = [None, True, False, -1, 2**64 - 1, -(2**63), 1.5, "", "x", b"", b"x", [], [[]], {}, {"a": 1},
              [1, 2, 3]]


def _positions(body, path=()):
    """Every position in a body (nested lists and maps), as a path."""
    if isinstance(body, list):
        for i, v in enumerate(body):
            yield path + (i,)
            yield from _positions(v, path + (i,))
    elif isinstance(body, dict):
        for k, v in body.items():
            yield path + (k,)
            yield from _positions(v, path + (k,))


def _set(body, path, value):
    body = copy.deepcopy(body)
    target = body
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize("msg_type", sorted(GOOD))
def test_every_position_with_a_wrong_value_is_refused_or_still_well_typed(msg_type):
    """Replace each position of each good body by each bad value: the decoder either refuses
    it with Malformed, or accepts a body whose values have the same types where it matters
    (no other exception, ever)."""
    rng = random.Random(msg_type)
    for body in GOOD[msg_type]:
        for path in _positions(body):
            for value in BAD_VALUES:
                mutated = _set(body, path, value)
                try:
                    wire.decode(pack_msg(msg_type, mutated))
                except errors.Malformed:
                    continue
        for _ in range(50):  # drop or add an element of the top-level array
            mutated = copy.deepcopy(body)
            if isinstance(mutated, list) and mutated and rng.random() < 0.5:
                mutated.pop(rng.randrange(len(mutated)))
            elif isinstance(mutated, list):
                mutated.append(rng.choice(BAD_VALUES))
            else:
                continue
            try:
                wire.decode(pack_msg(msg_type, mutated))
            except errors.Malformed:
                continue


@pytest.mark.parametrize("msg_type,body", [
    (M.READY, [True, 1]),
    (M.READY, ["storage", True]),
    (M.READY, ["storage", 0]),
    (M.READY, ["someone", 1]),
    (M.FETCH, [True, 0, 10, True]),
    (M.FETCH, [-1, 0, 10, True]),
    (M.FETCH, [0, 0, 10**9, True]),
    (M.FETCH, [0, 0, 10, 1]),  # an int as the bool
    (M.FETCH, [0, 0, 10]),  # resend missing
    (M.LEADERSHIP, [1, 3, 5, [], 9, False]),  # an int as the bool
    (M.LEADERSHIP, [True, 3, 5, [], 9]),  # sole_voter missing
    (M.LEADERSHIP, [True, 3, 5, "tcp://h:1", 9, False]),
    (M.ENTRIES, [[[1, 1, 256, b""]], 1, 1]),
    (M.ENTRIES, [[[1, 1, 0, "str"]], 1, 1]),
    (M.ENTRIES, [[[1, 1, 0]], 1, 1]),
    (M.PROPOSE, [3, [[77, DATA, 1]]]),
    (M.PROPOSE, [3, [[True, DATA]]]),
    (M.PROPOSE, [[[77, DATA]]]),  # no epoch
    (M.READ, [[5, {"op": "put"}, 0]]),
    (M.READ, [[5, PUT, 0]]),
    (M.CLIENT_READ, [[5, HISTORY, 0, None]]),
    (M.CLIENT_READ, [[5, HISTORY, 0, 1]]),  # no auth element
    (M.CLIENT_READ, [[5, HISTORY, 0, 1, ["alice"], 0]]),  # auth without its revision
    (M.CLIENT_READ, [[5, HISTORY, 0, 1, None]]),  # no read term
    (M.READ_RESP, [[5, None, None, 4, 3]]),  # neither result nor error
    (M.READ_RESP, [[5, HISTORY_PAGE, COMPACTED, 4, 3]]),  # both
    (M.READ_RESP, [[5, None, {"code": "compacted", "message": "m", "compact_revision": "5"}, 4, 3]]),
    (M.READ_RESP, [[5, {"revisions": [{"revision": 3, "events": [{"type": "PUT"}]}], "more": False,
                        "last_revision": 3}, None, 4, 3]]),
    (M.EVENTS, [[2, [["PUT", {"key": b"k"}, None]]]]),
    (M.EVENTS, [[2, [["UPSERT", EVENTS[0][1][0][1], None]]]]),
    (M.STATUS_RESP, [0, {**CONSENSUS_STATUS, "members": [{"id": 1}]}]),
    (M.STATUS_RESP, [0, {k: v for k, v in CONSENSUS_STATUS.items() if k != "term"}]),
    (M.STORAGE_STATUS_RESP, [9, {**STORAGE_STATUS, "revision": 2**63}]),
    (M.STORAGE_STATUS_RESP, [9, {**STORAGE_STATUS, 1: 2}]),
    (M.HASH_KV_RESP, [4, None, None]),
    (M.MEMBER, [4, {"op": "member_remove", "member_id": 0}]),
    (M.MEMBER, [4, {"op": "put"}]),
    (M.DEFRAG_RESP, [4, {"took_s": float("inf"), "db_size_before": 1, "db_size_after": 1}, None]),
    (M.PROPOSE_ACK, [1, [1], [[2, {"message": "no code"}]]]),
    (M.PROPOSE_ACK, [1, list(range(wire.MAX_BATCH + 1)), []]),
    (M.LEASE_PROPOSE, [3, [1, 2]]),
    (M.AUTH_TOKEN, [["ab", "bob", -1, None]]),
    (M.PEER_SNAP_ACK, [5, 1, 0, "maybe"]),
    (M.PEER_JOIN, [5]),
])
def test_wrong_shapes_are_refused(msg_type, body):
    with pytest.raises(errors.Malformed):
        wire.decode(pack_msg(msg_type, body))


def test_a_deep_value_where_a_scalar_belongs_is_refused():
    deep: object = 1
    for _ in range(900):
        deep = [deep]
    for msg_type, body in [(M.READY, ["storage", deep]), (M.READ, [[5, {**HISTORY, "key": deep}, 0]]),
                           (M.PROPOSE_ACK, [1, [], [[2, {"code": "x", "message": "m", "extra": deep}]]])]:
        try:
            wire.decode(pack_msg(msg_type, body))
        except errors.Malformed:
            continue


def test_any_of_takes_the_first_matching_alternative():
    schema = wire.AnyOf(wire.Tup(wire.U64), wire.Tup(wire.U64, wire.AUTH))
    schema.check([1], "x")
    schema.check([1, ["bob", 2]], "x")
    with pytest.raises(errors.Malformed):
        schema.check([1, ["bob", -2]], "x")


def test_dropped_counts_and_rate_limits_its_log():
    lines = []

    class Log:
        def warning(self, event, **kw):
            lines.append((event, kw))

    dropped = wire.Dropped(Log(), interval_s=3600)
    for _ in range(5):
        dropped("x", errors.Malformed("bad"))
    assert dropped.total == 5 and len(lines) == 1 and lines[0][0] == "internal_message_dropped"


@pytest.mark.parametrize("msg_type,body,where", [
    (M.ENTRIES, [[[1, 1, 0, b""], [2, True, 0, b""]], 2, 1], r"type 6\.entries\[1\]\.term: expected an integer"),
    (M.ENTRIES, [[[1, 1, 0, b""]], -1, 1], r"type 6\.commit: integer out of range"),
    (M.CLIENT_REPLIES, [[5, b"f", 1], [6, "f", 1]], r"type 32\[1\]\.frame: expected bytes"),
    (M.HASH_KV_RESP, [4, None, None], r"type 29: a reply must hold a result or an error"),
])
def test_a_refusal_names_the_field(msg_type, body, where):
    with pytest.raises(errors.Malformed, match=where):
        wire.decode(pack_msg(msg_type, body))


def _fast_agrees(msg_type, body):
    """The compiled fast path (schema.py) accepts a body only when the nodes' own checks
    do, and then returns the same value."""
    schema = M.SCHEMAS[msg_type]
    try:  # as it arrives: lists, not tuples
        body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False, strict_map_key=False)
    except OverflowError:
        pass
    try:
        schema.fast_load(copy.deepcopy(body), "t")  # compiles it
    except errors.Malformed:
        pass
    try:
        fast = schema._fast(copy.deepcopy(body))
    except Exception:
        return
    assert fast == schema.load(copy.deepcopy(body), "t")
    assert type(fast) is type(schema.load(copy.deepcopy(body), "t"))


@pytest.mark.parametrize("msg_type", sorted(GOOD))
def test_the_fast_path_never_accepts_what_the_checks_refuse(msg_type):
    rng = random.Random(msg_type)
    for body in GOOD[msg_type]:
        _fast_agrees(msg_type, body)
        for path in _positions(body):
            for value in BAD_VALUES + [2**64, 2**63, float("nan"), float("inf"), "PUT", "DELETE", "x" * 70_000]:
                _fast_agrees(msg_type, _set(body, path, value))
        for _ in range(50):
            mutated = copy.deepcopy(body)
            if isinstance(mutated, list) and mutated and rng.random() < 0.5:
                mutated.pop(rng.randrange(len(mutated)))
            elif isinstance(mutated, list):
                mutated.append(rng.choice(BAD_VALUES))
            _fast_agrees(msg_type, mutated)
