"""Bad input never takes the node down: random and mutated frames at the gateway."""
from __future__ import annotations

import random

import msgpack
import zmq

from protocol.codec import pack, unpack

SEED_KEYS = [f"seed/{i:04d}".encode() for i in range(50)]

# Templates that cannot delete or overwrite seed/ keys, however they are mutated below
# (byte flips cannot turn "put" into "delete_range", and fuzz keys are 4+ bytes away
# from seed keys).
TEMPLATES = [
    {"op": "put", "key": b"fuzz/0001", "value": b"v" * 10},
    {"op": "put", "key": b"fuzz/0002", "value": b"", "prev_kv": True},
    {"op": "range", "key": b"fuzz/", "range_end": b"fuzz0", "limit": 3, "sort_order": "DESCEND",
     "sort_target": "MOD", "keys_only": True},
    {"op": "range", "key": b"seed/0001", "serializable": True, "revision": 2},
    {"op": "txn", "compare": [{"target": "VERSION", "result": "GREATER", "key": b"fuzz/0001", "version": 0}],
     "success": [{"put": {"key": b"fuzz/0003", "value": b"x"}}, {"range": {"key": b"fuzz/0003"}}],
     "failure": [{"range": {"key": b"fuzz/0001"}}]},
    {"op": "status"},
    {"op": "compact", "revision": 3, "physical": True},
    # Leases: seed/ keys carry no lease, so no mutation of these can delete them.
    {"op": "lease_grant", "ttl": 5},
    {"op": "lease_grant", "ttl": 3, "ID": 424242},
    {"op": "lease_revoke", "ID": 424242},
    {"op": "lease_keepalive", "ID": 424242},
    {"op": "lease_timetolive", "ID": 424242, "keys": True},
    {"op": "lease_leases"},
]

GARBAGE_VALUES = [None, True, False, 0, -1, 2**63, 2**64 - 1, -(2**63), 1.5, float("nan"), "", "x" * 300,
                  b"", b"\x00" * 5, [], [1, [2, [3]]], {}, {"a": {"b": {}}}, {1: 2}, "NONE", "ASCEND"]


def mutate(rng: random.Random, template: dict) -> list[bytes]:
    choice = rng.randrange(10)
    req = msgpack.unpackb(msgpack.packb(template), raw=False)  # deep copy
    req["id"] = rng.randrange(1, 2**32)
    if choice == 0:  # random bytes
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))]
    if choice == 1:  # version byte + random msgpack-ish bytes
        return [b"\x01" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 100)))]
    if choice == 2:  # flip bytes of a valid frame
        frame = bytearray(pack(req))
        for _ in range(rng.randrange(1, 5)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        return [bytes(frame)]
    if choice == 3:  # truncate
        frame = pack(req)
        return [frame[: rng.randrange(len(frame))]]
    if choice == 4:  # a field gets a value of the wrong type
        field = rng.choice(list(req))
        req[field] = rng.choice(GARBAGE_VALUES)
        return [pack(req)]
    if choice == 5:  # unknown field, or a field removed
        if rng.random() < 0.5:
            req[rng.choice(["bogus", "Key", "", "limit2"])] = rng.choice(GARBAGE_VALUES)
        else:
            req.pop(rng.choice(list(req)))
        return [pack(req)]
    if choice == 6:  # not a map at all, or a wrong version byte
        body = rng.choice([[1, 2], "put", 7, None, b"raw"])
        return [rng.choice([b"\x01", b"\x02", b"\x00", b"\xff"]) + msgpack.packb(body)]
    if choice == 7:  # several frames
        return [pack(req)] * rng.randrange(2, 4)
    if choice == 8:  # deep nesting inside a txn
        inner: dict = {"range": {"key": b"fuzz/x"}}
        for _ in range(rng.randrange(1, 40)):
            inner = {"txn": {"compare": [], "success": [inner], "failure": []}}
        return [pack({"id": req["id"], "op": "txn", "compare": [], "success": [inner], "failure": []})]
    # an unknown op, or an op string that is wrong
    req["op"] = rng.choice(["", "PUT", "delete", "watch", "lease_grant", "rangee", 1, None])
    return [pack(req)]


def test_ten_thousand_bad_frames_then_the_node_still_serves(node_factory):
    node = node_factory()
    for key in SEED_KEYS:
        assert node.request({"op": "put", "key": key, "value": key + b"=value"})["ok"]
    before = {kv["key"]: kv for kv in node.request({"op": "range", "key": b"seed/", "range_end": b"seed0"})["kvs"]}
    pids = node.actor_pids()

    rng = random.Random(20261123)
    frames_list = [mutate(rng, rng.choice(TEMPLATES)) for _ in range(10_000)]
    big = pack({"id": 1, "op": "put", "key": b"fuzz/big", "value": b"x" * (1_572_864 + 10)})
    frames_list += [[big]] * 10
    frames_list += [[pack({"id": 2, "op": "txn", "compare": [],
                           "success": [{"put": {"key": f"fuzz/t{i}".encode(), "value": b""}} for i in range(129)],
                           "failure": []})]] * 10

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.client_url)
    replies = 0
    codes: dict[str, int] = {}
    try:
        sent = 0
        window = 64
        while replies < len(frames_list):
            while sent < len(frames_list) and sent - replies < window:
                sock.send_multipart(frames_list[sent])
                sent += 1
            assert sock.poll(10_000), f"no reply after {replies} of {len(frames_list)} frames"
            reply = unpack(sock.recv())
            replies += 1
            code = "ok" if reply.get("ok") else reply["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
    finally:
        sock.close()
    print("replies by code:", dict(sorted(codes.items())))
    assert codes.get("request_too_large", 0) >= 10 and codes.get("too_many_ops", 0) >= 10
    assert codes.get("internal", 0) == 0, "a validator bug surfaced as an internal error"
    assert node.actor_pids() == pids, "an actor died"
    assert node.serves()
    after = {kv["key"]: kv for kv in node.request({"op": "range", "key": b"seed/", "range_end": b"seed0"})["kvs"]}
    assert after == before
    assert node.request({"op": "put", "key": b"after", "value": b"fuzz"})["ok"]
