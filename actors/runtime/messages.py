"""The messages between the actors of one node (never on a public port), one class each.

Every internal frame is a version byte (1), the type byte (`TYPE` of the class) and a
msgpack body: the array of the class's fields in order, or, for a batch message
(`BATCH = True`), the array of its `items`. `wire.pack(msg)` encodes, `wire.decode(frame)`
checks a body against the schemas of its fields and returns the typed message.

Rules:
- One class per type code; the layout is the class: field names in order, each with its
  type and schema (`Annotated[type, schema]`, actors/runtime/schema.py). Nothing about a
  layout lives in a comment.
- Messages are NamedTuples, so `ctx_id, status = msg` still reads them by position.
- Every reply names the request it answers (a request id, a ctx id or a log index), so a
  lost reply can be asked for again. A reply's error is an error wire map
  (protocol/errors.py `to_wire`) or None.
- The status maps that cross actors (STATUS_RESP, STORAGE_STATUS_RESP) are TypedDicts
  whose keys have schemas too; their wire is a map, and keys not listed are kept unread.
- Peer messages (60-96) start with the sender's member id (`frm`), which the fault layer
  filters on; actors/consensus/peer_wire.py checks them in depth on receipt.
- Pure: no I/O.
"""
from typing import Annotated, Any, ClassVar, NamedTuple, NotRequired, Protocol, TypedDict

from actors.runtime.entry_ops import validate_member_op, validate_read_op
from actors.runtime.schema import (
    INT64_MAX, MAX_LIST, MAX_STR, UINT64_MAX, AnyMap, Bool, Bytes, Func, Int, ListOf, Map, MapOf,
    Nullable, Num, Opaque, Record, Schema, Str,
)

# --- type codes ----------------------------------------------------------------------------
# gateway -> consensus (ROUTER at Endpoints.consensus)
PROPOSE = 1
PROPOSE_ACK = 2
READ_INDEX = 3
READ_INDEX_RESP = 4
# storage -> consensus
FETCH = 5
ENTRIES = 6
# anyone -> consensus
STATUS = 7
STATUS_RESP = 8
# gateway -> consensus: cluster operations
MOVE_LEADER = 9
MOVE_LEADER_RESP = 10
# watch -> storage (ROUTER at Endpoints.storage)
READ = 20
READ_RESP = 21
STORAGE_STATUS = 22
STORAGE_STATUS_RESP = 23
# consensus <-> storage: snapshots (paths are inside this node's data dir)
CHECKPOINT = 24
CHECKPOINT_RESP = 25
INSTALL = 26
INSTALL_RESP = 27
# gateway -> storage
HASH_KV = 28
HASH_KV_RESP = 29
CLIENT_READ = 31
CLIENT_REPLIES = 32
# consensus -> storage, storage -> consensus: leadership and server-written entries
LEADERSHIP = 33
LEASE_PROPOSE = 34
# auth (actors/storage/auth/, issue 11)
AUTH_STATE = 35
AUTH_TOKEN = 36
AUTH_STATE_GET = 37
# storage -> watch (PUSH to Endpoints.watch_events)
EVENTS = 40
# actor -> supervisor (PUSH to Endpoints.supervisor)
READY = 50
HEARTBEAT = 51
# consensus <-> consensus of other members (ROUTER at --listen-peer-urls)
PEER_RAFT = 60
PEER_FORWARD = 61
PEER_FORWARD_REJECT = 62
PEER_HELLO = 63
PEER_SNAP_CHUNK = 64
PEER_SNAP_ACK = 65
# gateway -> storage: defragment
DEFRAG = 70
DEFRAG_RESP = 71
# membership
MEMBER = 90
MEMBER_RESP = 91
PEER_MEMBER = 92
PEER_MEMBER_RESP = 93
PEER_JOIN = 94
PEER_JOIN_RESP = 95
PEER_REMOVED = 96

# --- shared schemas --------------------------------------------------------------------
U64 = Int()
I64 = Int(0, INT64_MAX)  # revisions, sizes: non-negative int64
ID = U64  # request, ctx and member ids
ERROR = Map({"code": Str(256), "message": Str(MAX_STR)},
            # details that receivers read (protocol/errors.py); others pass unread
            {"compact_revision": I64, "current_revision": I64, "leader_id": U64,
             "leader_client_urls": ListOf(Str(1024), MAX_LIST)},
            extra=True, max_len=64)
OPT_ERROR = Nullable(ERROR)
READ_OP = Func(validate_read_op)
MEMBER_OP = Func(validate_member_op)
URLS = ListOf(Str(1024), MAX_LIST)
KV = Map({"key": Bytes(), "value": Bytes(), "create_revision": I64, "mod_revision": I64,
          "version": I64, "lease": Int(-(2**63), INT64_MAX)})
HISTORY_EVENT = Map({"type": Str(16, ("PUT", "DELETE")), "kv": KV}, {"prev_kv": KV})
HISTORY_RESPONSE = Map({
    "revisions": ListOf(Map({"revision": I64, "events": ListOf(HISTORY_EVENT)})),
    "more": Bool(),
    "last_revision": I64,
})
ALARMS = ListOf(Map({"member_id": U64, "alarm": Str(64)}), MAX_LIST)
MEMBER_WIRE = Map({"id": U64, "name": Str(1024), "peer_urls": URLS, "client_urls": URLS, "watch_urls": URLS,
                   "is_learner": Bool()}, {"grpc_urls": URLS}, extra=True)
Z85 = Str(40)
# A Raft message (raft/types.py Message.to_wire): an array; Message.from_wire checks it.
RAFT_WIRE = Opaque(list, 32)

Error = dict[str, Any]  # an error wire map (protocol/errors.py QkvError.to_wire)
Op = dict[str, Any]  # a normalized op (protocol/requests.py normalize_request)
MemberWire = dict[str, Any]  # MEMBER_WIRE: id, name, peer_urls, client_urls, watch_urls, grpc_urls, is_learner, ...


class Message(Protocol):
    """What every message class has: its type code (`wire.pack` reads it)."""
    TYPE: ClassVar[int]


# --- status maps -----------------------------------------------------------------------
class ConsensusStatus(TypedDict):
    """Consensus's status (STATUS_RESP); other keys are kept unread."""
    epoch: Annotated[int, U64]
    member_id: Annotated[int, U64]
    term: Annotated[int, U64]
    lead: Annotated[int, U64]
    state: Annotated[str, Str(64)]
    commit: Annotated[int, U64]
    first_index: Annotated[int, U64]
    last_index: Annotated[int, U64]
    members: Annotated[list[MemberWire], ListOf(MEMBER_WIRE, MAX_LIST)]
    is_learner: Annotated[bool, Bool()]
    faults: Annotated[str | None, Nullable(Str())]  # peer fault injection, when active
    disk: NotRequired[Annotated[dict[str, Any] | None, Nullable(AnyMap())]]  # None: the log's disk takes writes


class StorageStatus(TypedDict):
    """Storage's status (STORAGE_STATUS_RESP); other keys are kept unread."""
    applied_index: Annotated[int, U64]
    revision: Annotated[int, I64]
    compact_revision: Annotated[int, I64]
    db_size: Annotated[int, I64]
    db_size_in_use: Annotated[int, I64]
    raft_term: Annotated[int, U64]
    alarms: Annotated[list[dict[str, Any]], ALARMS]
    defragmenting: Annotated[bool, Bool()]
    auth_revision: NotRequired[Annotated[int, U64]]
    disk: NotRequired[Annotated[dict[str, Any] | None, Nullable(AnyMap())]]  # None: the disk takes writes


class HeartbeatStatus(TypedDict, total=False):
    """What an actor tells its supervisor in every HEARTBEAT (the `STATUS=` line systemd
    shows): consensus fills the Raft keys, storage the store's; other actors send {}."""
    state: Annotated[str, Str(32)]  # consensus: follower, candidate, pre_candidate, leader
    term: Annotated[int, U64]
    leader: Annotated[int, U64]  # the leader's member id, 0: none known
    commit: Annotated[int, U64]
    applied_index: Annotated[int, U64]  # storage
    revision: Annotated[int, I64]
    alarms: Annotated[list[str], ListOf(Str(32), 16)]  # the names of the raised alarms, sorted


class HashKvResult(TypedDict):
    hash: Annotated[int, U64]
    revision: Annotated[int, I64]
    compact_revision: Annotated[int, I64]


class DefragResult(TypedDict):
    took_s: Annotated[float, Num()]
    db_size_before: Annotated[int, I64]
    db_size_after: Annotated[int, I64]


class MemberResult(TypedDict):
    members: Annotated[list[MemberWire], ListOf(MEMBER_WIRE, MAX_LIST)]
    member: NotRequired[Annotated[MemberWire, MEMBER_WIRE]]


# --- items of batch messages -----------------------------------------------------------
class Proposal(NamedTuple):
    req_id: Annotated[int, ID]
    data: Annotated[bytes, Bytes()]  # runtime/entry.py encode(...)


class Rejected(NamedTuple):
    req_id: Annotated[int, ID]
    error: Annotated[Error, ERROR]


class EntryRow(NamedTuple):
    """A committed Raft entry as consensus hands it to storage."""
    log_index: Annotated[int, U64]
    term: Annotated[int, U64]
    type: Annotated[int, Int(0, 255)]  # raft EntryType: 0 normal, 1 conf change
    data: Annotated[bytes, Bytes()]


class Auth(NamedTuple):
    """Who asks and the auth revision the gateway saw (runtime/entry.py)."""
    user: Annotated[str, Str(256)]
    auth_revision: Annotated[int, U64]


AUTH = Record(Auth)


class ReadItem(NamedTuple):
    req_id: Annotated[int, ID]
    op: Annotated[Op, READ_OP]
    min_applied_index: Annotated[int, U64]


class ReadResult(NamedTuple):
    """READ is the watch actor's history catch-up: the result is a history page."""
    req_id: Annotated[int, ID]
    result: Annotated[dict[str, Any] | None, Nullable(HISTORY_RESPONSE)]
    error: Annotated[Error | None, OPT_ERROR]
    revision: Annotated[int, I64]
    raft_term: Annotated[int, U64]


class ClientReadItem(NamedTuple):
    req_id: Annotated[int, ID]
    op: Annotated[Op, READ_OP]
    min_applied_index: Annotated[int, U64]
    client_id: Annotated[int, U64]
    auth: Annotated[Auth | None, Nullable(AUTH)]
    read_term: Annotated[int, U64]  # the term the read index was confirmed in; 0: serializable


class ClientReply(NamedTuple):
    """A finished client reply frame (codec.pack of the SPEC reply map)."""
    req_id: Annotated[int, ID]
    frame: Annotated[bytes, Bytes()]
    revision: Annotated[int, I64]


class Event(NamedTuple):
    type: Annotated[str, Str(16, ("PUT", "DELETE"))]
    kv: Annotated[dict[str, Any], KV]
    prev_kv: Annotated[dict[str, Any] | None, Nullable(KV)]


class RevisionEvents(NamedTuple):
    revision: Annotated[int, I64]
    events: Annotated[list[Event], ListOf(Record(Event))]


class AuthTokenGrant(NamedTuple):
    token_sha256: Annotated[str, Str(64)]  # hex
    user: Annotated[str, Str(1024)]
    issued: Annotated[int, Int(0, INT64_MAX)]  # unix seconds
    key: Annotated[str | None, Nullable(Z85)]


class JoinMember(NamedTuple):
    id: Annotated[int, U64]
    name: Annotated[str, Str(1024)]
    peer_urls: Annotated[list[str], URLS]
    is_learner: Annotated[bool, Bool()]
    peer_key: Annotated[str, Str(1024)] = ""  # Z85 or "" (absent in older members' answers)


# --- messages: one class per type code --------------------------------------------------
# `_X` holds the fields (a NamedTuple cannot carry class attributes); `X` adds the type.


class _Propose(NamedTuple):
    epoch: Annotated[int, U64]  # the consensus epoch the gateway knows (0: none yet)
    items: Annotated[list[Proposal], ListOf(Record(Proposal))]


class Propose(_Propose):
    """gateway -> consensus: client writes to propose. Answered (PROPOSE_ACK) only when
    some are rejected or `epoch` is not consensus's own: the gateway counts the others as
    taken by the epoch it named."""
    __slots__ = ()
    TYPE: ClassVar[int] = PROPOSE


class _ProposeAck(NamedTuple):
    epoch: Annotated[int, U64]
    accepted: Annotated[list[int], ListOf(ID)]
    rejected: Annotated[list[Rejected], ListOf(Record(Rejected))]


class ProposeAck(_ProposeAck):
    """consensus -> gateway: which proposals were taken (epoch: consensus's incarnation);
    sent only for a PROPOSE with rejections or naming another epoch."""
    __slots__ = ()
    TYPE: ClassVar[int] = PROPOSE_ACK


class _ReadIndex(NamedTuple):
    ctx_id: Annotated[int, ID]


class ReadIndex(_ReadIndex):
    """gateway -> consensus: a linearizable read batch."""
    __slots__ = ()
    TYPE: ClassVar[int] = READ_INDEX


class _ReadIndexResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    read_index: Annotated[int, U64]
    error: Annotated[Error | None, OPT_ERROR]
    term: Annotated[int, U64]  # the Raft term the index was confirmed in (0 with an error)


class ReadIndexResp(_ReadIndexResp):
    """consensus -> gateway: the read index for ctx_id, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = READ_INDEX_RESP


# FETCH/ENTRIES flow control: after a FETCH, consensus sends further ENTRIES as the commit
# index moves (each one re-arms the fetch) until it has sent MAX_FETCH_AHEAD_BATCHES of them or
# MAX_FETCH_AHEAD_BYTES of entry data (the sum of len(data)); storage sends its next FETCH once
# it has received half of either, so the pipe never stalls and never holds more than about
# two windows. Storage also sends one when it has sent none for a while (a keep-alive that
# reports its durable applied index and finds a restarted consensus).
MAX_FETCH_AHEAD_BATCHES = 16
MAX_FETCH_AHEAD_BYTES = 8 * 1024 * 1024


class _Fetch(NamedTuple):
    after_index: Annotated[int, U64]
    durable_applied_index: Annotated[int, U64]
    max_entries: Annotated[int, Int(0, 1_000_000)]
    resend: Annotated[bool, Bool()]  # storage may have dropped ENTRIES sent after after_index


class Fetch(_Fetch):
    """storage -> consensus: send the committed entries after after_index (held until there
    are some), or, when not `resend`, after the last ENTRIES already sent (still on their way)."""
    __slots__ = ()
    TYPE: ClassVar[int] = FETCH


class _Entries(NamedTuple):
    entries: Annotated[list[EntryRow], ListOf(Record(EntryRow))]
    commit: Annotated[int, U64]
    term: Annotated[int, U64]


class Entries(_Entries):
    """consensus -> storage: committed entries, the commit index and the term."""
    __slots__ = ()
    TYPE: ClassVar[int] = ENTRIES


class _Status(NamedTuple):
    ctx_id: Annotated[int, ID]


class Status(_Status):
    """anyone -> consensus: its status."""
    __slots__ = ()
    TYPE: ClassVar[int] = STATUS


class _StatusResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    status: Annotated[ConsensusStatus, MapOf(ConsensusStatus, extra=True)]


class StatusResp(_StatusResp):
    """consensus -> asker: its status."""
    __slots__ = ()
    TYPE: ClassVar[int] = STATUS_RESP


class _MoveLeader(NamedTuple):
    ctx_id: Annotated[int, ID]
    target_id: Annotated[int, U64]


class MoveLeader(_MoveLeader):
    """gateway -> consensus: hand leadership to target_id."""
    __slots__ = ()
    TYPE: ClassVar[int] = MOVE_LEADER


class _MoveLeaderResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    error: Annotated[Error | None, OPT_ERROR]


class MoveLeaderResp(_MoveLeaderResp):
    """consensus -> gateway: done (error None) or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = MOVE_LEADER_RESP


class _Read(NamedTuple):
    items: Annotated[list[ReadItem], ListOf(Record(ReadItem))]


class Read(_Read):
    """watch -> storage: the watch actor's own reads (history catch-up)."""
    __slots__ = ()
    TYPE: ClassVar[int] = READ
    BATCH: ClassVar[bool] = True  # the body is the array of items


class _ReadResp(NamedTuple):
    items: Annotated[list[ReadResult], ListOf(Record(ReadResult, xor=('result', 'error')))]


class ReadResp(_ReadResp):
    """storage -> watch: results of READ."""
    __slots__ = ()
    TYPE: ClassVar[int] = READ_RESP
    BATCH: ClassVar[bool] = True  # the body is the array of items


class _StorageStatusReq(NamedTuple):
    ctx_id: Annotated[int, ID]


class StorageStatusReq(_StorageStatusReq):
    """gateway/watch -> storage: its status."""
    __slots__ = ()
    TYPE: ClassVar[int] = STORAGE_STATUS


class _StorageStatusResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    status: Annotated[StorageStatus, MapOf(StorageStatus, extra=True)]


class StorageStatusResp(_StorageStatusResp):
    """storage -> asker: its status."""
    __slots__ = ()
    TYPE: ClassVar[int] = STORAGE_STATUS_RESP


class _Checkpoint(NamedTuple):
    ctx_id: Annotated[int, ID]


class Checkpoint(_Checkpoint):
    """consensus -> storage: make a consistent copy of the store."""
    __slots__ = ()
    TYPE: ClassVar[int] = CHECKPOINT


class _CheckpointResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    path: Annotated[str | None, Nullable(Str(4096))]
    applied_index: Annotated[int, U64]
    error: Annotated[Error | None, OPT_ERROR]


class CheckpointResp(_CheckpointResp):
    """storage -> consensus: the copy's path and applied index, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = CHECKPOINT_RESP


class _Install(NamedTuple):
    ctx_id: Annotated[int, ID]
    path: Annotated[str, Str(4096)]


class Install(_Install):
    """consensus -> storage: replace the store by the snapshot at path."""
    __slots__ = ()
    TYPE: ClassVar[int] = INSTALL


class _InstallResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    applied_index: Annotated[int, U64]
    error: Annotated[Error | None, OPT_ERROR]


class InstallResp(_InstallResp):
    """storage -> consensus: the applied index after INSTALL, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = INSTALL_RESP


class _HashKv(NamedTuple):
    ctx_id: Annotated[int, ID]
    revision: Annotated[int, I64]


class HashKv(_HashKv):
    """gateway -> storage: the hash of the store up to revision (0: current)."""
    __slots__ = ()
    TYPE: ClassVar[int] = HASH_KV


class _HashKvResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    result: Annotated[HashKvResult | None, Nullable(MapOf(HashKvResult))]
    error: Annotated[Error | None, OPT_ERROR]


class HashKvResp(_HashKvResp):
    """storage -> gateway: the hash, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = HASH_KV_RESP
    XOR: ClassVar[tuple[str, str]] = ('result', 'error')  # exactly one is None


class _ClientRead(NamedTuple):
    items: Annotated[list[ClientReadItem], ListOf(Record(ClientReadItem))]


class ClientRead(_ClientRead):
    """gateway -> storage: client reads whose reply frames storage encodes itself."""
    __slots__ = ()
    TYPE: ClassVar[int] = CLIENT_READ
    BATCH: ClassVar[bool] = True  # the body is the array of items


class _ClientReplies(NamedTuple):
    items: Annotated[list[ClientReply], ListOf(Record(ClientReply))]


class ClientReplies(_ClientReplies):
    """storage -> gateway: finished client reply frames (on the ROUTER for CLIENT_READ,
    and PUSHed to Endpoints.gateway_results for writes that arrived on this member)."""
    __slots__ = ()
    TYPE: ClassVar[int] = CLIENT_REPLIES
    BATCH: ClassVar[bool] = True  # the body is the array of items


class _Leadership(NamedTuple):
    is_leader: Annotated[bool, Bool()]
    term: Annotated[int, U64]
    lead: Annotated[int, U64]
    lead_client_urls: Annotated[list[str], URLS]
    ready_index: Annotated[int, U64]
    sole_voter: Annotated[bool, Bool()]


class Leadership(_Leadership):
    """consensus -> storage, at every change of leader or term and every 250 ms.

    ready_index: the last log index when this member became leader (its term's first
    entry): the leader's storage takes over lease expiry once it has applied that far.
    sole_voter: this member is the only voter (storage's reads on a full disk)."""
    __slots__ = ()
    TYPE: ClassVar[int] = LEADERSHIP


class _LeasePropose(NamedTuple):
    term: Annotated[int, U64]
    datas: Annotated[list[bytes], ListOf(Bytes())]


class LeasePropose(_LeasePropose):
    """storage -> consensus: entries only the server writes (lease expiry, checkpoints,
    auto-compaction), proposed only if this member still leads in term; never forwarded,
    no reply."""
    __slots__ = ()
    TYPE: ClassVar[int] = LEASE_PROPOSE


class _AuthState(NamedTuple):
    state: Annotated[dict[str, Any], AnyMap()]


class AuthState(_AuthState):
    """storage -> gateway and watch: the whole auth state (after a batch that changed it,
    and as the reply to AUTH_STATE_GET)."""
    __slots__ = ()
    TYPE: ClassVar[int] = AUTH_STATE


class _AuthToken(NamedTuple):
    items: Annotated[list[AuthTokenGrant], ListOf(Record(AuthTokenGrant))]


class AuthToken(_AuthToken):
    """storage -> gateway and watch: tokens of applied `authenticate` entries."""
    __slots__ = ()
    TYPE: ClassVar[int] = AUTH_TOKEN
    BATCH: ClassVar[bool] = True  # the body is the array of items


class _AuthStateGet(NamedTuple):
    ctx_id: Annotated[int, ID]


class AuthStateGet(_AuthStateGet):
    """gateway/watch -> storage: answered with AUTH_STATE."""
    __slots__ = ()
    TYPE: ClassVar[int] = AUTH_STATE_GET


class _Events(NamedTuple):
    items: Annotated[list[RevisionEvents], ListOf(Record(RevisionEvents))]


class Events(_Events):
    """storage -> watch: one message per applied batch."""
    __slots__ = ()
    TYPE: ClassVar[int] = EVENTS
    BATCH: ClassVar[bool] = True  # the body is the array of items


ACTOR_ROLES = ("consensus", "storage", "gateway", "watch", "metrics", "grpc")  # who may report to a supervisor
ROLE = Str(64, ACTOR_ROLES)
PID = Int(1, 2**31 - 1)


class _Ready(NamedTuple):
    role: Annotated[str, ROLE]
    pid: Annotated[int, PID]


class Ready(_Ready):
    """actor -> supervisor: started."""
    __slots__ = ()
    TYPE: ClassVar[int] = READY


class _Heartbeat(NamedTuple):
    role: Annotated[str, ROLE]
    pid: Annotated[int, PID]
    status: Annotated[HeartbeatStatus, MapOf(HeartbeatStatus)]


class Heartbeat(_Heartbeat):
    """actor -> supervisor, every HEARTBEAT_INTERVAL_S from the actor's event loop (so a
    wedged or stopped loop stops them): alive, and a small status (the systemd watchdog
    and STATUS=, nodes/supervisor.py)."""
    __slots__ = ()
    TYPE: ClassVar[int] = HEARTBEAT


class _Defrag(NamedTuple):
    ctx_id: Annotated[int, ID]


class Defrag(_Defrag):
    """gateway -> storage: defragment (compact_range in a storage thread; the reply comes when done)."""
    __slots__ = ()
    TYPE: ClassVar[int] = DEFRAG


class _DefragResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    result: Annotated[DefragResult | None, Nullable(MapOf(DefragResult))]
    error: Annotated[Error | None, OPT_ERROR]


class DefragResp(_DefragResp):
    """storage -> gateway: what defragment did, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = DEFRAG_RESP


class _Member(NamedTuple):
    ctx_id: Annotated[int, ID]
    op: Annotated[Op, MEMBER_OP]


class Member(_Member):
    """gateway -> consensus: member_add / _remove / _update / _promote (the normalized op);
    replied once the conf change entry is applied."""
    __slots__ = ()
    TYPE: ClassVar[int] = MEMBER


class _MemberResp(NamedTuple):
    ctx_id: Annotated[int, ID]
    result: Annotated[MemberResult | None, Nullable(MapOf(MemberResult))]
    error: Annotated[Error | None, OPT_ERROR]


class MemberResp(_MemberResp):
    """consensus -> gateway: the members after the change, or why not."""
    __slots__ = ()
    TYPE: ClassVar[int] = MEMBER_RESP


class _PeerRaft(NamedTuple):
    frm: Annotated[int, U64]
    messages: Annotated[list[list[Any]], ListOf(RAFT_WIRE)]


class PeerRaft(_PeerRaft):
    """peer -> peer: Raft messages (raft/types.py Message.to_wire)."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_RAFT


class _PeerForward(NamedTuple):
    frm: Annotated[int, U64]
    proposals: Annotated[list[Proposal], ListOf(Record(Proposal))]


class PeerForward(_PeerForward):
    """follower -> leader: proposals."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_FORWARD


class _PeerForwardReject(NamedTuple):
    frm: Annotated[int, U64]
    req_ids: Annotated[list[int], ListOf(U64)]


class PeerForwardReject(_PeerForwardReject):
    """-> follower: the receiver is not the leader."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_FORWARD_REJECT


class _PeerHello(NamedTuple):
    frm: Annotated[int, U64]
    info: Annotated[dict[str, Any], Map({"name": Str(1024), "client_urls": URLS, "watch_urls": URLS, "version": Str(64)},
                                         {"grpc_urls": URLS}, extra=True)]


class PeerHello(_PeerHello):
    """peer -> peer: who I am."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_HELLO


class _PeerSnapChunk(NamedTuple):
    frm: Annotated[int, U64]
    snap_id: Annotated[int, U64]
    seq: Annotated[int, U64]
    relpath: Annotated[str, Str(4096)]
    offset: Annotated[int, U64]
    data: Annotated[bytes, Bytes()]
    final: Annotated[bool, Bool()]
    digest: Annotated[bytes | None, Nullable(Bytes(1024))]
    snap: Annotated[list[Any] | None, Nullable(RAFT_WIRE)]


class PeerSnapChunk(_PeerSnapChunk):
    """leader -> follower: a chunk of a snapshot transfer (snap: the snapshot's Raft
    message, on the final chunk)."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_SNAP_CHUNK


class _PeerSnapAck(NamedTuple):
    frm: Annotated[int, U64]
    snap_id: Annotated[int, U64]
    seq: Annotated[int, Int(-1, UINT64_MAX)]
    status: Annotated[str, Str(16, ("ok", "done", "failed"))]


class PeerSnapAck(_PeerSnapAck):
    """follower -> leader: "ok" (chunk seq stored), "done" (installed), "failed"
    (seq -1: the whole transfer)."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_SNAP_ACK


class _PeerMember(NamedTuple):
    frm: Annotated[int, U64]
    ctx: Annotated[int, U64]
    op: Annotated[Op, MEMBER_OP]


class PeerMember(_PeerMember):
    """follower -> leader: a MEMBER op."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_MEMBER


class _PeerMemberResp(NamedTuple):
    frm: Annotated[int, U64]
    ctx: Annotated[int, U64]
    result: Annotated[dict[str, Any] | None, Nullable(AnyMap())]
    error: Annotated[Error | None, OPT_ERROR]


class PeerMemberResp(_PeerMemberResp):
    """leader -> follower: the result of PEER_MEMBER."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_MEMBER_RESP


class _PeerJoin(NamedTuple):
    frm: Annotated[int, Int(0, 0)]


class PeerJoin(_PeerJoin):
    """joining node -> peer: the membership, please (frm is 0: it has no id yet)."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_JOIN


class _PeerJoinResp(NamedTuple):
    cluster_id: Annotated[int, U64]
    members: Annotated[list[JoinMember], ListOf(Record(JoinMember), MAX_LIST)]


class PeerJoinResp(_PeerJoinResp):
    """peer -> joining node: the cluster id and the members."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_JOIN_RESP


class _PeerRemoved(NamedTuple):
    frm: Annotated[int, U64]


class PeerRemoved(_PeerRemoved):
    """-> a removed member that still talks to us: it stops."""
    __slots__ = ()
    TYPE: ClassVar[int] = PEER_REMOVED


CLASSES: dict[int, type] = {cls.TYPE: cls for cls in (
    Propose, ProposeAck, ReadIndex, ReadIndexResp, Fetch, Entries,
    Status, StatusResp, MoveLeader, MoveLeaderResp, Read, ReadResp,
    StorageStatusReq, StorageStatusResp, Checkpoint, CheckpointResp, Install, InstallResp,
    HashKv, HashKvResp, ClientRead, ClientReplies, Leadership, LeasePropose,
    AuthState, AuthToken, AuthStateGet, Events, Ready, Heartbeat, Defrag,
    DefragResp, Member, MemberResp, PeerRaft, PeerForward, PeerForwardReject,
    PeerHello, PeerSnapChunk, PeerSnapAck, PeerMember, PeerMemberResp, PeerJoin,
    PeerJoinResp, PeerRemoved,
)}
assert len(CLASSES) == len(set(CLASSES)), "two classes share a type code"


def body_schema(cls: type) -> Schema:
    """The schema of `cls`'s body: its items for a batch, else the record of its fields."""
    if getattr(cls, "BATCH", False):
        return Record(cls).fields[0][1]
    return Record(cls)


SCHEMAS: dict[int, Schema] = {code: body_schema(cls) for code, cls in CLASSES.items()}
