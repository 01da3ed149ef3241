"""storage's client reply frame (actors/storage/reads.py client_frame) is the SPEC reply map
packed: the joined-from-parts path gives the very bytes of packing the map."""
from __future__ import annotations

import pytest

from actors.storage import reads
from protocol.codec import pack, unpack


def _packed_map(client_id, response, error, *, cluster_id, member_id, revision, raft_term):
    if error is not None:
        return pack({"id": client_id, "ok": False, "error": error})
    reply = {"id": client_id, "ok": True, "header": {"cluster_id": cluster_id, "member_id": member_id,
                                                     "revision": revision, "raft_term": raft_term}}
    reply.update(response or {})
    return pack(reply)


RESPONSES = [None, {}, {"prev_kv": {"key": b"k", "value": b"v" * 300, "lease": 0}},
             {"kvs": [], "more": False, "count": 0}, {"id": 5}, {"header": 1, "x": 2},
             {f"k{i}": i for i in range(12)}, {f"k{i}": i for i in range(13)},
             {"succeeded": True, "responses": [{"put": {}}]}]


@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize("client_id", [0, 1, 2**64 - 1, -5, "abc", b"xx", None, 1.5, True])
def test_the_reply_frame_is_the_packed_reply_map(response, client_id):
    for cluster_id, member_id, revision, raft_term in [(1, 2, 3, 4), (2**64 - 1, 2**63, 2**40, 0), (0, 0, 0, 0)]:
        kw = dict(cluster_id=cluster_id, member_id=member_id, revision=revision, raft_term=raft_term)
        frame = reads.client_frame(client_id, response, None, **kw)
        assert frame == _packed_map(client_id, response, None, **kw)
        if "header" not in (response or {}):
            assert unpack(frame)["header"]["revision"] == revision
    error = {"code": "x", "message": "m"}
    assert reads.client_frame(client_id, response, error, **kw) == _packed_map(client_id, response, error, **kw)
