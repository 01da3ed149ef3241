"""Message wire codec: round trips, and garbage from peers is rejected with ValueError
(never another exception, never a crash of the core)."""

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.consensus.raft import Entry, Message, MessageType, StateType
from raftnet import Network
from tests.lanes import examples

MT = MessageType


def good_messages():
    return [
        Message(MT.APP, 2, 1, term=3, log_term=2, index=5,
                entries=[Entry(2, 6, 0, b"a"), Entry(3, 7, 0, b"")], commit=4),
        Message(MT.APP_RESP, 1, 2, term=3, index=7),
        Message(MT.APP_RESP, 1, 2, term=3, index=7, reject=True, reject_hint=3, log_term=2),
        Message(MT.VOTE, 2, 1, term=4, log_term=3, index=9),
        Message(MT.PRE_VOTE_RESP, 1, 2, term=4, reject=True),
        Message(MT.HEARTBEAT, 2, 1, term=3, commit=4, context=b"ctx"),
        Message(MT.READ_INDEX, 1, 3, context=b"r"),
        Message(MT.READ_INDEX_RESP, 3, 1, term=3, index=4, context=b"r"),
        Message(MT.TIMEOUT_NOW, 3, 1, term=3),
        Message(MT.TRANSFER_LEADER, 1, 3, term=3),
    ]


@pytest.mark.parametrize("m", good_messages(), ids=lambda m: m.type.name)
def test_round_trip_through_msgpack(m):
    wire = msgpack.unpackb(msgpack.packb(m.to_wire()))
    assert Message.from_wire(wire) == m


BAD = [
    None, 1, b"x", "str", [], {}, [0] * 10, [0] * 12,
    # wrong field types
    [3, 2, 1, 3, 2, 5, [], 4, 0, 0, "ctx"],
    [3, 2, 1, 3, 2, 5, [], 4, 2, 0, b""],  # reject not 0/1
    [3, 2, 1, -1, 0, 5, [], 0, 0, 0, b""],  # negative term
    [3, 2, 1, 1 << 64, 0, 5, [], 0, 0, 0, b""],  # huge
    [3, 2, 1, 3.0, 0, 5, [], 0, 0, 0, b""],  # float
    [True, 2, 1, 3, 0, 5, [], 0, 0, 0, b""],  # bool as type
    [99, 2, 1, 3, 0, 5, [], 0, 0, 0, b""],  # unknown type
    [15, 2, 1, 3, 0, 5, [], 0, 0, 0, b""],  # SNAP not supported yet
    [0, 2, 1, 3, 0, 0, [], 0, 0, 0, b""],  # HUP is local
    [2, 2, 1, 3, 0, 0, [[3, 1, 0, b"x"]], 0, 0, 0, b""],  # PROP is local
    [3, 0, 1, 3, 0, 5, [], 0, 0, 0, b""],  # to = 0
    [3, 2, 0, 3, 0, 5, [], 0, 0, 0, b""],  # frm = 0
    [3, 2, 1, 0, 0, 5, [], 0, 0, 0, b""],  # APP without term
    # impossible entries
    [3, 2, 1, 3, 2, 5, [[3, 7, 0, b""]], 0, 0, 0, b""],  # not consecutive
    [3, 2, 1, 3, 2, 5, [[1, 6, 0, b""]], 0, 0, 0, b""],  # entry term below log_term
    [3, 2, 1, 3, 2, 5, [[4, 6, 0, b""]], 0, 0, 0, b""],  # entry term above msg term
    [3, 2, 1, 3, 4, 5, [], 0, 0, 0, b""],  # log_term above term
    [3, 2, 1, 3, 0, 5, [[3, 6, 7, b""]], 0, 0, 0, b""],  # unknown entry type
    [3, 2, 1, 3, 0, 5, [[3, 6, 0, "s"]], 0, 0, 0, b""],  # str data
    [3, 2, 1, 3, 0, 5, [[3, 6, 0]], 0, 0, 0, b""],  # short entry
    [3, 2, 1, 3, 0, 5, "entries", 0, 0, 0, b""],
    [4, 1, 2, 3, 0, 5, [[3, 6, 0, b""]], 0, 0, 0, b""],  # entries on APP_RESP
]


@pytest.mark.parametrize("obj", BAD)
def test_garbage_rejected(obj):
    with pytest.raises(ValueError):
        Message.from_wire(obj)


def test_random_garbage_only_raises_value_error():
    rng = random.Random(7)
    atoms = [0, 1, 2, 3, -1, 1 << 70, b"", b"x", "s", None, True, 1.5, [], {}]
    base = good_messages()[0].to_wire()
    for _ in range(3000):
        obj = list(base)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(obj))
            obj[i] = rng.choice(atoms + [[rng.choice(atoms) for _ in range(4)]])
        try:
            Message.from_wire(obj)
        except ValueError:
            pass
    for _ in range(1000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        try:
            obj = msgpack.unpackb(raw, strict_map_key=False)
        except Exception:
            continue
        try:
            Message.from_wire(obj)
        except ValueError:
            pass


ints = st.integers(min_value=0, max_value=40)


@settings(max_examples=examples(150), deadline=None)
@given(t=st.sampled_from([t for t in MT if t not in (MT.HUP, MT.BEAT, MT.PROP, MT.SNAP)]),
       frm=st.integers(min_value=1, max_value=4), term=ints, log_term=ints, index=ints,
       commit=ints, reject=st.booleans(), hint=ints, ctx=st.binary(max_size=3),
       n_entries=st.integers(min_value=0, max_value=3))
def test_core_survives_any_valid_shaped_message(t, frm, term, log_term, index, commit, reject,
                                                hint, ctx, n_entries):
    """Messages that pass the decoder but carry impossible values must not crash the core:
    the worst allowed outcome is a ValueError from step()."""
    net = Network([1, 2, 3], strict=False)
    net.campaign(1)
    net.propose(1, b"x")
    entries = [[term, index + 1 + k, 0, b"e"] for k in range(n_entries)] if t == MT.APP else []
    obj = [int(t), 1, frm, term, log_term, index, entries, commit, int(reject), hint, ctx]
    for target in (1, 2):
        obj[1] = target
        try:
            m = Message.from_wire(obj)
            net.nodes[target].step(m)
        except ValueError:
            continue
        net.deliver()
    # Safety still holds: at most one leader per term, committed prefixes agree.
    leaders = [(net.term(i), i) for i in net.ids if net.state(i) == StateType.LEADER]
    assert len({tm for tm, _ in leaders}) == len(leaders)
    commits = {i: net.nodes[i].status().commit for i in net.ids}
    c = min(commits.values())
    prefixes = {tuple(net.log(i)[:c]) for i in net.ids}
    assert len(prefixes) == 1


def test_step_rejects_local_types_and_misaddressed():
    net = Network([1, 2, 3])
    n = net.nodes[1]
    for m in (Message(MT.HUP, 1, 2, term=1), Message(MT.PROP, 1, 2, term=1,
                                                     entries=[Entry(1, 1)]),
              Message(MT.APP_RESP, 2, 3, term=1), Message(MT.APP_RESP, 1, 1, term=1)):
        with pytest.raises(ValueError):
            n.step(m)
    with pytest.raises(ValueError):
        n.step("not a message")
