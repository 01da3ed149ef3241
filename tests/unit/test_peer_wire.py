"""The peer message decoders (actors/consensus/peer_wire.py): every valid body decodes to
its typed form, and every invalid one (the attacks of issue 11 included) raises
PeerWireError, never another exception."""
import random

import msgpack
import pytest
import zmq

from actors.consensus import peer_wire as W
from actors.consensus.peer_wire import PeerWireError
from actors.consensus.raft import Message, MessageType, SnapshotMeta
from actors.consensus.snapshot import SnapshotError, SnapshotReceiver, safe_relpath
from actors.runtime import entry
from actors.runtime import messages as M
from protocol.requests import Limits, is_z85_key, normalize_request

ME, PEER = 7, 9
MT = MessageType
KEY = zmq.curve_keypair()[0].decode()


def put_entry(origin=PEER, op=None):
    return entry.encode(origin, 5, 1, None, op or {"op": "put", "key": b"k", "value": b"v", "lease": 0,
                                                   "prev_kv": False, "ignore_value": False, "ignore_lease": False})


PUT = {"op": "put", "key": b"k", "value": b"v", "lease": 0, "prev_kv": False, "ignore_value": False,
       "ignore_lease": False}


def legacy_entry(origin=PEER, op=None):
    return msgpack.packb([origin, 5, op or PUT, 1], use_bin_type=True)


def snap_wire(term=3):
    return Message(MT.SNAP, ME, PEER, term=term, snapshot=SnapshotMeta(10, term, [ME, PEER], [], b"")).to_wire()


DIGEST = b"d" * 32
GOOD = [
    (M.PEER_RAFT, [PEER, [Message(MT.HEARTBEAT, ME, PEER, term=3, commit=2).to_wire()]], W.RaftBatch),
    (M.PEER_FORWARD, [PEER, [[1, put_entry()]]], W.Forward),
    (M.PEER_FORWARD, [PEER, [[1, legacy_entry()]]], W.Forward),
    (M.PEER_FORWARD, [PEER, [[2, put_entry(op={"op": "txn", "compare": [], "success": [
        {"op": "put", "key": b"a", "value": b"", "lease": 0, "prev_kv": False, "ignore_value": False,
         "ignore_lease": False}], "failure": [normalize_request({"op": "range", "key": b"a"}, Limits())]})]]],
     W.Forward),
    (M.PEER_FORWARD, [PEER, [[3, put_entry(op={"op": "alarm_activate", "member_id": PEER, "alarm": "NOSPACE"})]]],
     W.Forward),
    (M.PEER_FORWARD_REJECT, [PEER, [1, 2]], W.ForwardReject),
    (M.PEER_HELLO, [PEER, {"name": "n2", "client_urls": ["tcp://a:1"], "watch_urls": [], "version": "0.1.0"}],
     W.Hello),
    (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "db/000001.sst", 0, b"x", False, None, None], W.SnapChunk),
    (M.PEER_SNAP_CHUNK, [PEER, 4, 1, "", 0, b"", True, DIGEST, snap_wire()], W.SnapChunk),
    (M.PEER_SNAP_ACK, [PEER, 4, -1, "done"], W.SnapAck),
    (M.PEER_MEMBER, [PEER, 3, {"op": "member_remove", "member_id": 5}], W.MemberReq),
    (M.PEER_MEMBER, [PEER, 3, {"op": "member_add", "name": "n4", "peer_urls": ["tcp://h:1"],
                              "is_learner": True, "peer_key": KEY}], W.MemberReq),
    (M.PEER_MEMBER_RESP, [PEER, 3, {"members": [{"id": 1, "name": "a", "peer_urls": [], "client_urls": [],
                                                 "watch_urls": [], "is_learner": False, "peer_key": KEY}]}, None],
     W.MemberResp),
    (M.PEER_MEMBER_RESP, [PEER, 3, None, {"code": "no_leader", "message": "x"}], W.MemberResp),
    (M.PEER_JOIN, [0], W.Join),
    (M.PEER_REMOVED, [PEER], W.Removed),
]


@pytest.mark.parametrize("msg_type,body,cls", GOOD, ids=lambda v: str(v)[:30])
def test_valid_bodies_decode_typed(msg_type, body, cls):
    body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False, strict_map_key=False)
    frm, msg = W.decode(msg_type, body, ME)
    assert isinstance(msg, cls) and frm == body[0]


TRAVERSAL = "x/" + "../" * 30 + "tmp/pwned"
BAD = {
    # issue 11's attacks
    "forward spoofed put without key": (M.PEER_FORWARD, [PEER, [[1, legacy_entry(0, {"op": "put"})]]]),
    "forward v1 put without key": (M.PEER_FORWARD, [PEER, [[1, put_entry(op={"op": "put"})]]]),
    "forward entry of another member": (M.PEER_FORWARD, [PEER, [[1, put_entry(origin=ME)]]]),
    "forward internal op": (M.PEER_FORWARD, [PEER, [[1, put_entry(op={"op": "lease_expire", "ids": [1]})]]]),
    "forward unknown op": (M.PEER_FORWARD, [PEER, [[1, put_entry(op={"op": "format_disk"})]]]),
    "forward not bytes": (M.PEER_FORWARD, [PEER, [[1, "x"]]]),
    "forward garbage bytes": (M.PEER_FORWARD, [PEER, [[1, b"\xc1\xc1"]]]),
    "vote term 2^63-1": (M.PEER_RAFT, [PEER, [Message(MT.VOTE, ME, PEER, term=2**63 - 1).to_wire()]]),
    "vote term above cap": (M.PEER_RAFT, [PEER, [Message(MT.VOTE, ME, PEER, term=W.MAX_TERM + 1).to_wire()]]),
    "raft term 2^64": (M.PEER_RAFT, [PEER, [[5, ME, PEER, 2**64, 0, 0, [], 0, 0, 0, b""]]]),
    "raft forged sender": (M.PEER_RAFT, [PEER, [Message(MT.VOTE, ME, 3, term=2).to_wire()]]),
    "raft other recipient": (M.PEER_RAFT, [PEER, [Message(MT.VOTE, 3, PEER, term=2).to_wire()]]),
    "raft snap outside transfer": (M.PEER_RAFT, [PEER, [snap_wire()]]),
    "raft not a list": (M.PEER_RAFT, [PEER, "x"]),
    "raft short": (M.PEER_RAFT, [PEER, [[5, ME]]]),
    "snap traversal id": (M.PEER_SNAP_CHUNK, [PEER, TRAVERSAL, 0, "", 0, b"", False, None, None]),
    "snap id /..": (M.PEER_SNAP_CHUNK, [PEER, "/..", 0, "", 0, b"", False, None, None]),
    "snap id x/../../": (M.PEER_SNAP_CHUNK, [PEER, "x/../../", 0, "", 0, b"", False, None, None]),
    "snap id negative": (M.PEER_SNAP_CHUNK, [PEER, -1, 0, "", 0, b"", False, None, None]),
    "snap id bool": (M.PEER_SNAP_CHUNK, [PEER, True, 0, "", 0, b"", False, None, None]),
    "snap path traversal": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "../x", 0, b"a", False, None, None]),
    "snap path absolute": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "/etc/passwd", 0, b"a", False, None, None]),
    "snap path dotted": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "a/../../b", 0, b"a", False, None, None]),
    "snap path dot": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, ".", 0, b"a", False, None, None]),
    "snap path nul": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "a\0b", 0, b"a", False, None, None]),
    "snap huge chunk": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "a", 0, b"a" * (W.CHUNK_BYTES + 1), False, None, None]),
    "snap huge offset": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "a", 2**62, b"a", False, None, None]),
    "snap final without digest": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "", 0, b"", True, None, snap_wire()]),
    "snap final without message": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "", 0, b"", True, DIGEST, None]),
    "snap final with another message": (M.PEER_SNAP_CHUNK, [PEER, 4, 0, "", 0, b"", True, DIGEST,
                                                           Message(MT.HEARTBEAT, ME, PEER, term=3).to_wire()]),
    "snap short": (M.PEER_SNAP_CHUNK, [PEER, 4, 0]),
    "snap ack status": (M.PEER_SNAP_ACK, [PEER, 4, 0, "rm -rf"]),
    "snap ack id str": (M.PEER_SNAP_ACK, [PEER, "/..", 0, "ok"]),
    "member unknown op": (M.PEER_MEMBER, [PEER, 1, {"op": "member_explode"}]),
    "member not normalized": (M.PEER_MEMBER, [PEER, 1, {"op": "member_add", "name": "x", "peer_urls": ["tcp://h:1"]}]),
    "member bad key": (M.PEER_MEMBER, [PEER, 1, {"op": "member_add", "name": "x", "peer_urls": ["tcp://h:1"],
                                                "is_learner": False, "peer_key": "nope"}]),
    "member op not a map": (M.PEER_MEMBER, [PEER, 1, "member_add"]),
    "member ctx str": (M.PEER_MEMBER, [PEER, "1", {"op": "member_remove", "member_id": 5}]),
    "member resp garbage": (M.PEER_MEMBER_RESP, [PEER, 1, {"members": "x"}, None]),
    "member resp bad error": (M.PEER_MEMBER_RESP, [PEER, 1, None, "boom"]),
    "hello not a map": (M.PEER_HELLO, [PEER, ["x"]]),
    "hello urls": (M.PEER_HELLO, [PEER, {"client_urls": "tcp://x:1"}]),
    "join with an id": (M.PEER_JOIN, [5]),
    "removed with extra": (M.PEER_REMOVED, [PEER, 1]),
    "unknown type": (42, [PEER]),
    "sender 0": (M.PEER_RAFT, [0, []]),
    "sender bool": (M.PEER_RAFT, [True, []]),
    "sender huge": (M.PEER_RAFT, [2**64, []]),
    "empty body": (M.PEER_RAFT, []),
    "body not a list": (M.PEER_RAFT, {"frm": PEER}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_bodies_raise_peer_wire_error(name):
    msg_type, body = BAD[name]
    with pytest.raises(PeerWireError):
        W.decode(msg_type, body, ME)


def test_random_mutations_only_raise_peer_wire_error():
    rng = random.Random(11)
    atoms = [0, 1, -1, 2**63, 2**64, True, None, 1.5, "", "..", "/..", b"", b"x", [], {}, [[]], {"op": 1}]
    for _ in range(4000):
        msg_type, body, _cls = rng.choice(GOOD)
        body = list(body)
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(len(body) + 1)
            if i == len(body):
                body.append(rng.choice(atoms))
            else:
                body[i] = rng.choice(atoms)
        try:
            W.decode(msg_type, body, ME)
        except PeerWireError:
            pass


def test_join_resp_carries_keys_and_refuses_bad_ones():
    resp = W.decode_join_resp([5, [[1, "n1", ["tcp://a:1"], False, KEY], [2, "n2", ["tcp://b:1"], True]]])
    assert resp.members == [[1, "n1", ["tcp://a:1"], False, KEY], [2, "n2", ["tcp://b:1"], True, ""]]
    for bad in ([5, [[1, "n1", ["tcp://a:1"], False, "short"]]], [0, []], [5, "x"], None,
                [5, [[1, "n1", "tcp://a:1", False]]]):
        with pytest.raises(PeerWireError):
            W.decode_join_resp(bad)


def test_z85_check_matches_zmq():
    assert is_z85_key(KEY)
    assert not is_z85_key(KEY[:-1]) and not is_z85_key("#" * 40) and not is_z85_key(b"x" * 40)


@pytest.mark.parametrize("path", ["/..", "x/../../", "..", "../a", "a/../../b", ".", "", "a//b", "/abs"])
def test_safe_relpath_refuses(path):
    with pytest.raises(SnapshotError):
        safe_relpath(path)


def test_receiver_refuses_a_string_snap_id_and_stays_inside(tmp_path):
    with pytest.raises(SnapshotError):
        SnapshotReceiver("/..", PEER, str(tmp_path / "in"))
    rcv = SnapshotReceiver(4, PEER, str(tmp_path / "in"))
    with pytest.raises(SnapshotError):
        rcv.on_chunk(0, "../escape", 0, b"x", False, None)
    assert not (tmp_path / "escape").exists()
