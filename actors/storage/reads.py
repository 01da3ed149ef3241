"""What storage answers a read with, and the finished client reply frame (SPEC section 1).

Pure over the store (no sockets, no clock): the storage actor serves reads with it, and the
client library's in-process fake node (tests/fakeserver.py) answers exactly as a node does.
"""
from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]

from actors.storage.auth import read_auth
from actors.storage.lessor import Reply
from actors.storage.mvcc import MVCCStore
from actors.storage.mvcc import alarms as alarm_rules
from protocol import errors
from protocol.codec import VERSION, pack
from protocol.requests import AUTH_READ_OPS


def read(store: MVCCStore, op: dict[str, Any]) -> dict[str, Any]:
    """The response to a read op storage serves from its store (every one but `snapshot`,
    whose chunks come from files, and the lessor's keep-alive and time-to-live). Raises
    QkvError."""
    kind = op.get("op")
    if kind == "history":  # the watch's catch-up (clients and the watch actor)
        return store.history(op)
    if kind == "alarm_list":
        return {"alarms": alarm_rules.to_wire(store.alarms)}
    if kind in AUTH_READ_OPS:  # auth_status, user_get/list, role_get/list
        return read_auth(store.auth, op)
    if kind == "lease_leases":
        return {"leases": [{"ID": lease_id} for lease_id, _, _ in store.leases()]}
    return store.range(op)


def client_frame(client_id: Any, response: dict[str, Any] | None, error: Any, *, cluster_id: int,
                 member_id: int, revision: int, raft_term: int) -> bytes:
    """The finished client reply, so the gateway only forwards bytes: `pack` of
    ``{"id", "ok", "header", **response}`` (or ``{"id", "ok": False, "error"}``). A reply
    whose response is a small map of other keys is joined from its packed parts (msgpack
    is compositional: the same bytes, without building the map)."""
    if error is not None:
        return pack({"id": client_id, "ok": False, "error": error})
    if not response:
        n, body = 0, b""
    elif len(response) <= 12 and _REPLY_KEYS.isdisjoint(response):
        n, body = len(response), _packb(response, use_bin_type=True)[1:]  # a fixmap: its items
    else:
        reply: dict[str, Any] = {"id": client_id, "ok": True, "header": {
            "cluster_id": cluster_id, "member_id": member_id, "revision": revision, "raft_term": raft_term}}
        reply.update(response)
        return pack(reply)
    head = _OK_HEAD.get((cluster_id, member_id))
    if head is None:
        if len(_OK_HEAD) > 64:
            _OK_HEAD.clear()
        head = _OK_HEAD[(cluster_id, member_id)] = b"".join((
            _packb("ok"), b"\xc3", _packb("header"), b"\x84", _packb("cluster_id"), _packb(cluster_id),
            _packb("member_id"), _packb(member_id), _packb("revision")))
    return b"".join((_FIXMAP3[n], _ID, _packb(client_id, use_bin_type=True), head, _packb(revision), _TERM,
                     _packb(raft_term), body))


_packb = msgpack.packb
_REPLY_KEYS = frozenset(("id", "ok", "header"))
_FIXMAP3 = [bytes((VERSION,)) + bytes((0x83 + n,)) for n in range(13)]  # the frame's version, a map of 3 + n
_ID = msgpack.packb("id")
_TERM = msgpack.packb("raft_term")
_OK_HEAD: dict[tuple[int, int], bytes] = {}  # (cluster_id, member_id): "ok" .. "revision" packed


def lease_answer(store: MVCCStore, reply: Reply[Any], want_keys: bool) -> tuple[dict[str, Any] | None, Any]:
    """A lessor's answer to a keep-alive or time-to-live as the client gets it:
    (response, None) or (None, error wire); `not_leader` is the caller's (it names the leader)."""
    if reply.kind == "keepalive":
        return {"ID": reply.lease_id, "ttl": reply.ttl}, None
    if reply.kind == "ttl":
        keys = store.lease_keys(reply.lease_id) if want_keys and reply.ttl >= 0 else []
        return {"ID": reply.lease_id, "ttl": reply.ttl, "granted_ttl": reply.granted_ttl, "keys": keys}, None
    if reply.kind == "not_found":
        return None, errors.LeaseNotFound(lease=reply.lease_id).to_wire()
    raise ValueError(f"not a lease answer here: {reply.kind}")
