"""Request building and reply parsing of every client call, once, for ``Client`` (threads)
and ``AsyncClient`` (asyncio). Pure: each function returns a ``Call`` (the request map,
whether it is a write, and how its ok reply map becomes the typed response); the
transports send it (``_call``) and apply ``parse``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from protocol.client.txn import (
    Compare, Op, delete_fields, put_fields, range_fields, txn_fields, txn_writes,
)
from protocol.client.types import (
    LEASE_ID_FIELD, AlarmResponse, CompactResponse, DefragmentResponse, DeleteRangeResponse,
    HashKVResponse, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    MemberAddResponse, MemberListResponse, MoveLeaderResponse, PutResponse, RangeResponse,
    StatusResponse, TxnResponse, to_bytes,
)

T = TypeVar("T")

READ_OPS = frozenset({"range", "status", "member_list", "hash_kv", "history", "alarm_list", "defragment",
                      "snapshot", "authenticate", "auth_status", "user_get", "user_list", "role_get",
                      "role_list", "lease_leases"})


def is_write_request(req: dict[str, Any]) -> bool:
    """Whether a request map may change state (then it is never re-sent once it may have
    left). ``lease_leases`` was sent as a read by ``Client.lease_leases`` but counted as a
    write by ``request``: it is a read."""
    op = req.get("op")
    if op in READ_OPS:
        return False
    if op == "txn":
        return txn_writes(req)
    return True


def _raw(reply: dict[str, Any]) -> dict[str, Any]:
    return reply


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One call: ``req`` (without ``id``/``token``), ``write`` (never re-sent after it
    may have left), ``parse`` (ok reply map -> response)."""
    req: dict[str, Any]
    write: bool
    parse: Callable[[dict[str, Any]], T]


# -- KV ------------------------------------------------------------------------------------
def put(key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
        ignore_value: bool = False, ignore_lease: bool = False) -> Call[PutResponse]:
    """``put``: set ``key`` to ``value`` (a write)."""
    req = {"op": "put", **put_fields(key, value, lease, prev_kv, ignore_value, ignore_lease)}
    return Call(req, True, PutResponse.from_wire)


def get(key: Any, range_end: Any = None, **kw: Any) -> Call[RangeResponse]:
    """``range`` of a key, a range or a prefix (``txn.range_fields``' options; a read)."""
    return Call({"op": "range", **range_fields(key, range_end, **kw)}, False, RangeResponse.from_wire)


def delete(key: Any, range_end: Any = None, *, prefix: bool = False, from_key: bool = False,
           prev_kv: bool = False) -> Call[DeleteRangeResponse]:
    """``delete_range`` of a key, a range or a prefix (a write)."""
    req = {"op": "delete_range", **delete_fields(key, range_end, prefix=prefix, from_key=from_key,
                                                 prev_kv=prev_kv)}
    return Call(req, True, DeleteRangeResponse.from_wire)


def txn(compare: Iterable[Compare] | None, success: Iterable[Op] | None,
        failure: Iterable[Op] | None) -> Call[TxnResponse]:
    """A ``txn``; a write only if one of its ops writes."""
    req = {"op": "txn", **txn_fields(compare or (), success or (), failure or ())}
    return Call(req, txn_writes(req), TxnResponse.from_wire)


def compact(revision: int, physical: bool = False) -> Call[CompactResponse]:
    """``compact`` the history up to ``revision`` (a write)."""
    req: dict[str, Any] = {"op": "compact", "revision": int(revision)}
    if physical:
        req["physical"] = True
    return Call(req, True, CompactResponse.from_wire)


# -- helpers (thin layers over the calls above) --------------------------------------------
def get_prefix(prefix: Any, **range_kw: Any) -> Call[RangeResponse]:
    """Every key starting with ``prefix``."""
    return get(prefix, prefix=True, **range_kw)


def delete_prefix(prefix: Any, prev_kv: bool = False) -> Call[DeleteRangeResponse]:
    """Delete every key starting with ``prefix``."""
    return delete(prefix, prefix=True, prev_kv=prev_kv)


def _succeeded(reply: dict[str, Any]) -> bool:
    return TxnResponse.from_wire(reply).succeeded


def put_if_not_exists(key: Any, value: Any, lease: int = 0) -> Call[bool]:
    """A txn: put ``key`` only if it does not exist (create_revision == 0)."""
    c = txn([Compare.create_revision(key) == 0], [Op.put(key, value, lease=lease)], [])
    return Call(c.req, True, _succeeded)


def replace(key: Any, old: Any, new: Any) -> Call[bool]:
    """A txn: set ``key`` to ``new`` only if its value is ``old``."""
    c = txn([Compare.value(key) == to_bytes(old, "old")], [Op.put(key, new)], [])
    return Call(c.req, True, _succeeded)


# -- maintenance / cluster -------------------------------------------------------------------
def status() -> Call[StatusResponse]:
    """The answering member's ``status``."""
    return Call({"op": "status"}, False, StatusResponse.from_wire)


def member_list() -> Call[MemberListResponse]:
    """The cluster's members."""
    return Call({"op": "member_list"}, False, MemberListResponse.from_wire)


def member_add(name: str, peer_urls: Sequence[str], is_learner: bool = False,
               peer_key: str = "") -> Call[MemberAddResponse]:
    """Add a member (a membership change: a write)."""
    req: dict[str, Any] = {"op": "member_add", "name": name, "peer_urls": list(peer_urls),
                           "is_learner": bool(is_learner)}
    if peer_key:
        req["peer_key"] = peer_key
    return Call(req, True, MemberAddResponse.from_wire)


def member_remove(member_id: int) -> Call[MemberListResponse]:
    """Remove a member."""
    return Call({"op": "member_remove", "member_id": int(member_id)}, True, MemberListResponse.from_wire)


def member_update(member_id: int, peer_urls: Sequence[str]) -> Call[MemberAddResponse]:
    """Change a member's peer URLs."""
    return Call({"op": "member_update", "member_id": int(member_id), "peer_urls": list(peer_urls)},
                True, MemberAddResponse.from_wire)


def member_promote(member_id: int) -> Call[MemberAddResponse]:
    """Promote a learner."""
    return Call({"op": "member_promote", "member_id": int(member_id)}, True, MemberAddResponse.from_wire)


def move_leader(target_id: int) -> Call[MoveLeaderResponse]:
    """Hand leadership to ``target_id`` (only the leader does it)."""
    return Call({"op": "move_leader", "target_id": int(target_id)}, True, MoveLeaderResponse.from_wire)


def hash_kv(revision: int = 0) -> Call[HashKVResponse]:
    """A hash of the member's keyspace at ``revision``."""
    return Call({"op": "hash_kv", "revision": int(revision)}, False, HashKVResponse.from_wire)


def alarm_list() -> Call[AlarmResponse]:
    """The cluster's active alarms."""
    return Call({"op": "alarm_list"}, False, AlarmResponse.from_wire)


def alarm_activate(member_id: int, alarm: str) -> Call[AlarmResponse]:
    """Raise ``alarm`` ("NOSPACE" | "CORRUPT") for ``member_id`` (any id, 0 too)."""
    return Call({"op": "alarm_activate", "member_id": int(member_id), "alarm": str(alarm)}, True,
                AlarmResponse.from_wire)


def alarm_disarm(member_id: int = 0, alarm: str = "", exact: bool = False) -> Call[AlarmResponse]:
    """Disarm alarms (member_id 0 = all members, alarm "" = all types; ``exact``: only
    that member's alarm of that type, member 0 too)."""
    req: dict[str, Any] = {"op": "alarm_disarm"}
    if member_id or exact:
        req["member_id"] = int(member_id)
    if alarm:
        req["alarm"] = str(alarm)
    if exact:
        req["exact"] = True
    return Call(req, True, AlarmResponse.from_wire)


def defragment() -> Call[DefragmentResponse]:
    """Defragment the answering member's store."""
    return Call({"op": "defragment"}, False, DefragmentResponse.from_wire)


# -- leases ----------------------------------------------------------------------------------
def lease_grant(ttl: int, id: int = 0) -> Call[LeaseGrantResponse]:
    """Grant a lease (``id`` 0: the server picks it)."""
    req: dict[str, Any] = {"op": "lease_grant", "ttl": int(ttl)}
    if id:
        req[LEASE_ID_FIELD] = int(id)
    return Call(req, True, LeaseGrantResponse.from_wire)


def lease_revoke(id: int) -> Call[LeaseRevokeResponse]:
    """Revoke a lease and its keys."""
    return Call({"op": "lease_revoke", LEASE_ID_FIELD: int(id)}, True, LeaseRevokeResponse.from_wire)


def lease_leases() -> Call[LeaseLeasesResponse]:
    """Every lease (a read)."""
    return Call({"op": "lease_leases"}, False, LeaseLeasesResponse.from_wire)


def request(req: dict[str, Any]) -> Call[dict[str, Any]]:
    """Any request map (``op`` and its fields; an ``id`` is dropped: the transport sets
    it); whether it may be retried follows from ``op``."""
    if not isinstance(req, dict) or "op" not in req:
        raise ValueError("a request is a map with an 'op'")
    body = {k: v for k, v in req.items() if k != "id"}
    return Call(body, is_write_request(body), _raw)


__all__ = ["Call", "is_write_request", "READ_OPS"]
