"""Response types of the quorumkv client and the key-range helpers (protocol/SPEC.md).

Nothing here performs I/O. Keys and values are ``bytes``; a ``str`` given by the caller is
encoded as UTF-8.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# range_end meaning "every key >= key" (SPEC section 2).
FROM_KEY_END = b"\x00"


def to_bytes(value: Any, what: str = "key") -> bytes:
    """``str`` -> UTF-8 bytes; bytes-like -> bytes; anything else is a caller mistake."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's ``GetPrefixRangeEnd``: the smallest key greater than every key starting
    with ``prefix``: drop trailing 0xff bytes, then increment the last byte. An empty or
    all-0xff prefix has no such key: ``b"\\x00"`` (every key >= ``prefix``)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return FROM_KEY_END
    end[-1] += 1
    return bytes(end)


def key_range(key: Any, range_end: Any = None, *, prefix: bool = False,
              from_key: bool = False) -> tuple[bytes, bytes]:
    """Resolve the (key, range_end) pair sent on the wire, as etcd's clientv3 does.
    ``range_end`` empty means the single key."""
    k = to_bytes(key)
    if prefix and from_key:
        raise ValueError("prefix and from_key are mutually exclusive")
    if (prefix or from_key) and range_end not in (None, b"", ""):
        raise ValueError("range_end cannot be combined with prefix or from_key")
    if prefix:
        if not k:  # clientv3.WithPrefix on "": the whole keyspace
            return FROM_KEY_END, FROM_KEY_END
        return k, prefix_end(k)
    if from_key:
        return (k or FROM_KEY_END), FROM_KEY_END
    return k, (to_bytes(range_end, "range_end") if range_end is not None else b"")


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0

    @classmethod
    def from_wire(cls, wire: Any) -> "ResponseHeader":
        if not isinstance(wire, dict):
            return cls()
        return cls(int(wire.get("cluster_id") or 0), int(wire.get("member_id") or 0),
                   int(wire.get("revision") or 0), int(wire.get("raft_term") or 0))


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "KeyValue":
        return cls(
            key=_b(wire.get("key")), value=_b(wire.get("value")),
            create_revision=int(wire.get("create_revision") or 0),
            mod_revision=int(wire.get("mod_revision") or 0),
            version=int(wire.get("version") or 0), lease=int(wire.get("lease") or 0),
        )


def _b(v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, str):
        return v.encode("utf-8")
    return bytes(v)


def _kvs(wire: Any) -> list[KeyValue]:
    return [KeyValue.from_wire(kv) for kv in (wire or ())]


@dataclass(slots=True)
class RangeResponse:
    header: ResponseHeader
    kvs: list[KeyValue] = field(default_factory=list)
    more: bool = False
    count: int = 0

    @classmethod
    def from_wire(cls, wire: dict, header: ResponseHeader | None = None) -> "RangeResponse":
        return cls(header or ResponseHeader.from_wire(wire.get("header")), _kvs(wire.get("kvs")),
                   bool(wire.get("more")), int(wire.get("count") or 0))


@dataclass(slots=True)
class PutResponse:
    header: ResponseHeader
    prev_kv: KeyValue | None = None

    @classmethod
    def from_wire(cls, wire: dict, header: ResponseHeader | None = None) -> "PutResponse":
        prev = wire.get("prev_kv")
        return cls(header or ResponseHeader.from_wire(wire.get("header")),
                   KeyValue.from_wire(prev) if prev else None)


@dataclass(slots=True)
class DeleteRangeResponse:
    header: ResponseHeader
    deleted: int = 0
    prev_kvs: list[KeyValue] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict, header: ResponseHeader | None = None) -> "DeleteRangeResponse":
        return cls(header or ResponseHeader.from_wire(wire.get("header")),
                   int(wire.get("deleted") or 0), _kvs(wire.get("prev_kvs")))


@dataclass(slots=True)
class TxnResponse:
    header: ResponseHeader
    succeeded: bool = False
    # One entry per executed RequestOp: RangeResponse, PutResponse, DeleteRangeResponse
    # or TxnResponse. Nested responses carry a header with only ``revision`` set (the
    # txn's), as etcd's do.
    responses: list[Any] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict, header: ResponseHeader | None = None) -> "TxnResponse":
        hdr = header or ResponseHeader.from_wire(wire.get("header"))
        inner = ResponseHeader(revision=hdr.revision)
        responses = []
        for op in wire.get("responses") or ():
            if not isinstance(op, dict) or len(op) != 1:
                raise ValueError(f"malformed ResponseOp: {op!r}")
            (kind, body), = op.items()
            parser = _RESPONSE_OPS.get(kind)
            if parser is None:
                raise ValueError(f"unknown ResponseOp kind {kind!r}")
            responses.append(parser(body or {}, inner))
        return cls(hdr, bool(wire.get("succeeded")), responses)


_RESPONSE_OPS = {
    "range": RangeResponse.from_wire,
    "put": PutResponse.from_wire,
    "delete_range": DeleteRangeResponse.from_wire,
    "txn": TxnResponse.from_wire,
}


@dataclass(slots=True)
class CompactResponse:
    header: ResponseHeader

    @classmethod
    def from_wire(cls, wire: dict) -> "CompactResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")))


@dataclass(slots=True)
class StatusResponse:
    header: ResponseHeader
    version: str = ""
    name: str = ""
    db_size: int = 0
    db_size_in_use: int = 0
    leader: int = 0
    raft_index: int = 0
    raft_term: int = 0
    raft_applied_index: int = 0
    is_learner: bool = False
    errors: list[str] = field(default_factory=list)
    compact_revision: int = 0
    client_urls: list[str] = field(default_factory=list)
    watch_urls: list[str] = field(default_factory=list)
    alarms: list["AlarmMember"] = field(default_factory=list)
    db_size_quota: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "StatusResponse":
        return cls(
            header=ResponseHeader.from_wire(wire.get("header")),
            version=str(wire.get("version") or ""), name=str(wire.get("name") or ""),
            db_size=int(wire.get("db_size") or 0),
            db_size_in_use=int(wire.get("db_size_in_use") or 0),
            leader=int(wire.get("leader") or 0), raft_index=int(wire.get("raft_index") or 0),
            raft_term=int(wire.get("raft_term") or 0),
            raft_applied_index=int(wire.get("raft_applied_index") or 0),
            is_learner=bool(wire.get("is_learner")),
            errors=[str(e) for e in wire.get("errors") or ()],
            compact_revision=int(wire.get("compact_revision") or 0),
            client_urls=[str(u) for u in wire.get("client_urls") or ()],
            watch_urls=[str(u) for u in wire.get("watch_urls") or ()],
            alarms=[AlarmMember.from_wire(a) for a in wire.get("alarms") or ()],
            db_size_quota=int(wire.get("db_size_quota") or 0),
        )


# -- maintenance (SPEC "Maintenance and alarms") -------------------------------------------
@dataclass(slots=True, frozen=True)
class AlarmMember:
    member_id: int
    alarm: str  # "NOSPACE" | "CORRUPT"

    @classmethod
    def from_wire(cls, wire: dict) -> "AlarmMember":
        return cls(member_id=int(wire.get("member_id") or 0), alarm=str(wire.get("alarm") or ""))

    def __str__(self) -> str:  # etcdctl's `alarm list` line
        return f"memberID:{self.member_id} alarm:{self.alarm}"


@dataclass(slots=True)
class AlarmResponse:
    header: ResponseHeader
    alarms: list[AlarmMember]

    @classmethod
    def from_wire(cls, wire: dict) -> "AlarmResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")),
                   alarms=[AlarmMember.from_wire(a) for a in wire.get("alarms") or ()])


@dataclass(slots=True)
class DefragmentResponse:
    header: ResponseHeader
    took_s: float = 0.0
    db_size_before: int = 0
    db_size_after: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "DefragmentResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")), took_s=float(wire.get("took_s") or 0.0),
                   db_size_before=int(wire.get("db_size_before") or 0),
                   db_size_after=int(wire.get("db_size_after") or 0))


@dataclass(slots=True, frozen=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    watch_urls: list[str]
    is_learner: bool = False
    peer_key: str = ""  # Z85 peer public key ("" without peer security)

    @classmethod
    def from_wire(cls, wire: dict) -> "Member":
        return cls(
            id=int(wire.get("id") or 0), name=str(wire.get("name") or ""),
            peer_urls=[str(u) for u in wire.get("peer_urls") or ()],
            client_urls=[str(u) for u in wire.get("client_urls") or ()],
            watch_urls=[str(u) for u in wire.get("watch_urls") or ()],
            is_learner=bool(wire.get("is_learner")), peer_key=str(wire.get("peer_key") or ""),
        )


@dataclass(slots=True)
class MemberListResponse:
    header: ResponseHeader
    members: list[Member]

    @classmethod
    def from_wire(cls, wire: dict) -> "MemberListResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")),
                   members=[Member.from_wire(m) for m in wire.get("members") or ()])


@dataclass(slots=True)
class MemberAddResponse:
    """member_add: the new member (its id is what the new node will get) and the members."""

    header: ResponseHeader
    member: Member
    members: list[Member]

    @classmethod
    def from_wire(cls, wire: dict) -> "MemberAddResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")),
                   member=Member.from_wire(wire.get("member") or {}),
                   members=[Member.from_wire(m) for m in wire.get("members") or ()])


@dataclass(slots=True)
class MoveLeaderResponse:
    header: ResponseHeader

    @classmethod
    def from_wire(cls, wire: dict) -> "MoveLeaderResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")))


@dataclass(slots=True)
class HashKVResponse:
    header: ResponseHeader
    hash: int
    compact_revision: int
    hash_revision: int

    @classmethod
    def from_wire(cls, wire: dict) -> "HashKVResponse":
        return cls(header=ResponseHeader.from_wire(wire.get("header")), hash=int(wire.get("hash") or 0),
                   compact_revision=int(wire.get("compact_revision") or 0),
                   hash_revision=int(wire.get("hash_revision") or 0))


# -- leases (SPEC section 3, "Leases") -----------------------------------------------------
# The lease id travels as "ID" (etcd's protobuf name): the envelope's "id" is the request
# id, so a lease id under "id" would collide with it (the SPEC draft said "id").
LEASE_ID_FIELD = "ID"


def _lease_id(wire: dict) -> int:
    for name in (LEASE_ID_FIELD, "lease_id"):
        if wire.get(name) is not None:
            return int(wire[name])
    return 0

@dataclass(slots=True)
class LeaseGrantResponse:
    header: ResponseHeader
    id: int = 0
    ttl: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "LeaseGrantResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), _lease_id(wire),
                   int(wire.get("ttl") or 0))


@dataclass(slots=True)
class LeaseRevokeResponse:
    header: ResponseHeader

    @classmethod
    def from_wire(cls, wire: dict) -> "LeaseRevokeResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")))


@dataclass(slots=True)
class LeaseKeepAliveResponse:
    header: ResponseHeader
    id: int = 0
    ttl: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "LeaseKeepAliveResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), _lease_id(wire),
                   int(wire.get("ttl") or 0))


@dataclass(slots=True)
class LeaseTimeToLiveResponse:
    header: ResponseHeader
    id: int = 0
    ttl: int = -1          # remaining seconds; -1 when the lease does not exist
    granted_ttl: int = 0
    keys: list[bytes] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "LeaseTimeToLiveResponse":
        ttl = wire.get("ttl")
        return cls(ResponseHeader.from_wire(wire.get("header")), _lease_id(wire),
                   -1 if ttl is None else int(ttl), int(wire.get("granted_ttl") or 0),
                   [_b(k) for k in wire.get("keys") or ()])


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    id: int


@dataclass(slots=True)
class LeaseLeasesResponse:
    header: ResponseHeader
    leases: list[LeaseStatus] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "LeaseLeasesResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")),
                   [LeaseStatus(int(x.get("id") or _lease_id(x)) if isinstance(x, dict) else int(x))
                    for x in wire.get("leases") or ()])


# -- auth (SPEC section "Authentication"; etcd's clientv3 Auth* responses) -------------------
PERM_TYPES = ("READ", "WRITE", "READWRITE")  # etcd's authpb.Permission_Type, in value order


def perm_type_name(value: Any) -> str:
    """``"read"`` / ``"READ"`` / ``0`` -> ``"READ"`` (etcd's StrToPermissionType, case-blind)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(PERM_TYPES):
        return PERM_TYPES[value]
    if isinstance(value, (str, bytes)):
        name = (value.decode() if isinstance(value, bytes) else value).upper()
        if name in PERM_TYPES:
            return name
    raise ValueError(f"invalid permission type: {value if isinstance(value, str) else repr(value)}")


@dataclass(frozen=True, slots=True)
class Permission:
    perm_type: str      # "READ" | "WRITE" | "READWRITE"
    key: bytes
    range_end: bytes = b""

    @classmethod
    def from_wire(cls, wire: Any) -> "Permission":
        if not isinstance(wire, dict):
            raise ValueError(f"malformed permission: {wire!r:.100}")
        return cls(perm_type_name(wire.get("perm_type") or 0), _b(wire.get("key")),
                   _b(wire.get("range_end")))

    @property
    def perm_type_value(self) -> int:
        return PERM_TYPES.index(self.perm_type)


@dataclass(slots=True)
class AuthResponse:
    """The reply of an auth op without results (auth_enable, user_add, role_grant_permission...)."""

    header: ResponseHeader

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")))


@dataclass(slots=True)
class AuthenticateResponse:
    header: ResponseHeader
    token: str = ""

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthenticateResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), str(wire.get("token") or ""))


@dataclass(slots=True)
class AuthStatusResponse:
    header: ResponseHeader
    enabled: bool = False
    auth_revision: int = 0

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthStatusResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), bool(wire.get("enabled")),
                   int(wire.get("auth_revision") or 0))


@dataclass(slots=True)
class AuthUserGetResponse:
    header: ResponseHeader
    roles: list[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthUserGetResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), [str(r) for r in wire.get("roles") or ()])


@dataclass(slots=True)
class AuthUserListResponse:
    header: ResponseHeader
    users: list[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthUserListResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), [str(u) for u in wire.get("users") or ()])


@dataclass(slots=True)
class AuthRoleGetResponse:
    header: ResponseHeader
    perm: list[Permission] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthRoleGetResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")),
                   [Permission.from_wire(p) for p in wire.get("perm") or ()])


@dataclass(slots=True)
class AuthRoleListResponse:
    header: ResponseHeader
    roles: list[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: dict) -> "AuthRoleListResponse":
        return cls(ResponseHeader.from_wire(wire.get("header")), [str(r) for r in wire.get("roles") or ()])
