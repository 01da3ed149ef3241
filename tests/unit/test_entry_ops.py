"""Raft log entries: the envelope (runtime/entry.py) and the op inside it
(runtime/entry_ops.py), and how the MVCC store applies an entry that did not validate."""
from __future__ import annotations

import copy

import msgpack
import pytest

from protocol.errors import QkvError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.runtime import entry
from actors.runtime.entry import InvalidEntry
from actors.runtime.entry_ops import (
    AUTH_ENTRY_OPS, ENTRY_OPS, validate_entry_op, validate_member_op, validate_read_op,
)
from actors.storage.mvcc import MemoryBackend, MVCCStore
from protocol import errors
from protocol.requests import Limits, is_write, normalize_request
from tests.lanes import examples

LIMITS = Limits()
HASH = {"alg": "scrypt", "n": 2**14, "r": 8, "p": 1, "salt": b"s" * 16, "hash": b"h" * 32}
Z85 = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
SHA = "ab" * 32

# Client requests whose normalized ops go through the log.
CLIENT_WRITES = [
    {"op": "put", "key": "a", "value": "v"},
    {"op": "put", "key": b"a", "value": b"", "lease": 7, "prev_kv": True},
    {"op": "put", "key": b"a", "ignore_value": True, "ignore_lease": True},
    {"op": "put", "key": b"a", "lease": -5},
    {"op": "delete_range", "key": b"a", "range_end": b"\x00", "prev_kv": True},
    {"op": "delete_range", "key": b"a"},
    {"op": "compact", "revision": 0},
    {"op": "compact", "revision": 2**63 - 1, "physical": True},
    {"op": "lease_revoke", "ID": 5},
    {"op": "alarm_disarm"},
    {"op": "alarm_disarm", "member_id": 2**64 - 1, "alarm": "nospace"},
    {"op": "txn"},
    {"op": "txn",
     "compare": [{"target": "VERSION", "result": "GREATER", "key": b"a", "version": 0},
                 {"target": "value", "result": "equal", "key": b"a", "range_end": b"b", "value": b"x"},
                 {"target": "LEASE", "key": b"a", "lease": -1},
                 {"target": "MOD", "result": "LESS", "key": b"a", "mod_revision": 2**63 - 1},
                 {"target": "CREATE", "result": "NOT_EQUAL", "key": b"a", "create_revision": 3}],
     "success": [{"put": {"key": b"x", "value": b"1"}}, {"range": {"key": b"a", "range_end": b"z", "limit": 3,
                                                                   "sort_order": "descend", "sort_target": "MOD",
                                                                   "keys_only": True, "min_mod_revision": 2}},
                 {"delete_range": {"key": b"y"}},
                 {"txn": {"success": [{"txn": {"failure": [{"put": {"key": b"q"}}]}}]}}],
     "failure": [{"range": {"key": b"a", "count_only": True, "serializable": True}}]},
]


def normalized_writes() -> list[dict]:
    out = []
    for req in CLIENT_WRITES:
        op = normalize_request(copy.deepcopy(req), LIMITS)
        assert is_write(op)
        out.append(op)
    grant = normalize_request({"op": "lease_grant", "ttl": 5}, LIMITS)
    grant["id"] = 2**63 - 1  # what the gateway fills in before proposing
    out.append(grant)
    return out


SERVER_OPS = [
    {"op": "lease_expire", "id": 9},
    {"op": "lease_checkpoint", "checkpoints": [[9, 1500], [10, 0]]},
    {"op": "lease_checkpoint", "checkpoints": []},
    {"op": "compact", "revision": 12, "physical": False},  # auto-compaction
    {"op": "alarm_activate", "member_id": 0xABC, "alarm": "NOSPACE"},
    {"op": "alarm_activate", "member_id": 1, "alarm": "CORRUPT"},
]

AUTH_OPS = [
    {"op": "auth_enable"},
    {"op": "auth_disable"},
    {"op": "user_add", "name": "root", "password": HASH, "no_password": False, "public_key": None},
    {"op": "user_add", "name": "svc", "password": None, "no_password": True, "public_key": Z85},
    {"op": "user_delete", "name": "bob"},
    {"op": "user_change_password", "name": "bob", "password": HASH},
    {"op": "user_change_password", "name": "bob", "password": None},
    {"op": "user_grant_role", "name": "bob", "role": "root"},
    {"op": "user_revoke_role", "name": "bob", "role": "r"},
    {"op": "role_add", "name": "r"},
    {"op": "role_delete", "name": "r"},
    {"op": "role_grant_permission", "name": "r", "perm": {"perm_type": "READWRITE", "key": b"/a/",
                                                          "range_end": b"/a0"}},
    {"op": "role_revoke_permission", "name": "r", "key": b"/a/", "range_end": b""},
    {"op": "authenticate", "name": "bob", "token_sha256": SHA, "auth_revision": 4, "key": None, "issued": 1700000000},
    {"op": "authenticate", "name": "bob", "token_sha256": SHA, "auth_revision": 0, "key": Z85, "issued": 1700000000},
]


@pytest.mark.parametrize("op", normalized_writes() + SERVER_OPS + AUTH_OPS, ids=lambda op: op["op"])
def test_every_op_the_producers_write_validates(op):
    assert validate_entry_op(op) is op


def test_every_kind_is_covered():
    kinds = {op["op"] for op in normalized_writes() + SERVER_OPS + AUTH_OPS}
    assert kinds == set(ENTRY_OPS)
    assert AUTH_ENTRY_OPS <= kinds


def test_normalize_request_is_not_idempotent_so_entries_have_their_own_checks():
    """Why validate_entry_op does not re-run normalize_request on a normalized op."""
    txn = normalize_request(CLIENT_WRITES[-1], LIMITS)
    with pytest.raises(errors.QkvError):
        normalize_request(txn, LIMITS)
    revoke = normalize_request({"op": "lease_revoke", "ID": 5}, LIMITS)
    with pytest.raises(errors.QkvError):
        normalize_request(revoke, LIMITS)


PUT = {"op": "put", "key": b"k", "value": b"v", "lease": 0, "prev_kv": False, "ignore_value": False,
       "ignore_lease": False}


def _with(base: dict, **changes) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if v is _DEL:
            out.pop(k)
        else:
            out[k] = v
    return out


_DEL = object()


def _deep_txn(depth: int) -> dict:
    op: dict = {"op": "txn", "compare": [], "success": [], "failure": []}
    for _ in range(depth):
        op = {"op": "txn", "compare": [], "success": [op], "failure": []}
    return op


BAD_OPS = [
    ({"op": "put"}, "the issue's entry"),
    (None, "not a map"),
    ([1, 2], "an array"),
    ({}, "no kind"),
    ({"op": 1}, "kind not a string"),
    ({"op": "range", "key": b"a"}, "a read is not a log op"),
    ({"op": "status"}, "admin op"),
    ({"op": "member_add"}, "member op"),
    ({"op": "bogus"}, "unknown"),
    (_with(PUT, key=_DEL), "missing key"),
    (_with(PUT, key=b""), "empty key"),
    (_with(PUT, key="k"), "key as str"),
    (_with(PUT, value=None), "value nil"),
    (_with(PUT, lease=True), "bool as int"),
    (_with(PUT, lease=2**63), "lease above int64"),
    (_with(PUT, lease=-(2**63) - 1), "lease below int64"),
    (_with(PUT, lease=1.0), "float"),
    (_with(PUT, prev_kv=1), "int as bool"),
    (_with(PUT, extra=1), "unknown field"),
    (_with(PUT, ignore_value=True), "ignore_value with a value"),
    (_with(PUT, value=b"", lease=3, ignore_lease=True), "ignore_lease with a lease"),
    ({"op": "delete_range", "key": b"a", "range_end": b"", "prev_kv": None}, "prev_kv nil"),
    ({"op": "compact", "revision": -1, "physical": False}, "negative revision"),
    ({"op": "compact", "revision": 2**64, "physical": False}, "huge revision"),
    ({"op": "compact", "revision": 5}, "physical missing"),
    ({"op": "lease_grant", "ttl": 5, "id": 0}, "lease id not filled in"),
    ({"op": "lease_grant", "ttl": 5, "id": 2**63}, "lease id above int64"),
    ({"op": "lease_grant", "ttl": 9_000_000_001, "id": 3}, "ttl too large"),
    ({"op": "lease_grant", "ttl": 5, "ID": 3}, "wire name of the id"),
    ({"op": "lease_revoke", "id": 0}, "lease id 0"),
    ({"op": "lease_expire", "id": -1}, "negative lease id"),
    ({"op": "lease_checkpoint", "checkpoints": [[1]]}, "short checkpoint"),
    ({"op": "lease_checkpoint", "checkpoints": [[0, 5]]}, "checkpoint lease 0"),
    ({"op": "lease_checkpoint", "checkpoints": [[1, -5]]}, "negative remaining"),
    ({"op": "lease_checkpoint", "checkpoints": [[1, True]]}, "bool remaining"),
    ({"op": "lease_checkpoint", "checkpoints": {"1": 2}}, "checkpoints as map"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": "nospace"}, "alarm not normalized"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": ""}, "activate every alarm"),
    ({"op": "alarm_activate", "member_id": 2**64, "alarm": "CORRUPT"}, "member id above uint64"),
    ({"op": "alarm_disarm", "member_id": 0, "alarm": "OTHER"}, "unknown alarm"),
    ({"op": "txn", "compare": [], "success": []}, "txn without failure"),
    ({"op": "txn", "compare": [], "success": [{"put": {"key": b"a"}}], "failure": []}, "unnormalized branch"),
    ({"op": "txn", "compare": [], "success": [{"op": "compact", "revision": 1, "physical": False}],
      "failure": []}, "compact in a txn"),
    ({"op": "txn", "compare": [], "success": [PUT, PUT], "failure": []}, "duplicate key"),
    ({"op": "txn", "compare": [{"target": "VERSION", "result": "EQUAL", "key": b"a", "range_end": b""}],
      "success": [], "failure": []}, "compare without its operand"),
    ({"op": "txn", "compare": [{"target": "VALUE", "result": "EQUAL", "key": b"a", "range_end": b"",
                                "value": 1}], "success": [], "failure": []}, "value operand not bytes"),
    ({"op": "txn", "compare": [{"target": "version", "result": "EQUAL", "key": b"a", "range_end": b"",
                                "version": 1}], "success": [], "failure": []}, "target not normalized"),
    ({"op": "txn", "compare": [], "success": [{"op": "range", "key": b"a"}], "failure": []}, "short range"),
    (_deep_txn(9), "txn nested too deeply"),
    ({"op": "user_add", "name": "x", "password": "plain", "no_password": False, "public_key": None},
     "plaintext password"),
    ({"op": "user_add", "name": "x", "password": {**HASH, "alg": "md5"}, "no_password": False,
      "public_key": None}, "other hash"),
    ({"op": "user_add", "name": "x", "password": {**HASH, "n": True}, "no_password": False,
      "public_key": None}, "bool hash parameter"),
    ({"op": "user_add", "name": "x", "password": {**HASH, "salt": "s"}, "no_password": False,
      "public_key": None}, "str salt"),
    ({"op": "user_add", "name": "x", "password": {**HASH, "extra": 1}, "no_password": False,
      "public_key": None}, "extra hash field"),
    ({"op": "user_add", "name": "x", "password": None, "no_password": False, "public_key": "short"},
     "bad key"),
    ({"op": "user_add", "name": "", "password": None, "no_password": True, "public_key": None}, "empty name"),
    ({"op": "user_add", "name": "a\nb", "password": None, "no_password": True, "public_key": None},
     "control char"),
    ({"op": "user_add", "name": "é" * 129, "password": None, "no_password": True, "public_key": None},
     "name over 256 bytes"),
    ({"op": "user_delete"}, "no name"),
    ({"op": "auth_enable", "name": "root"}, "unknown field"),
    ({"op": "role_grant_permission", "name": "r", "perm": {"perm_type": "read", "key": b"a",
                                                           "range_end": b""}}, "perm type not normalized"),
    ({"op": "role_grant_permission", "name": "r", "perm": [b"a"]}, "perm not a map"),
    ({"op": "role_revoke_permission", "name": "r", "key": b"", "range_end": b""}, "empty key"),
    ({"op": "authenticate", "name": "bob", "token_sha256": SHA.upper(), "auth_revision": 1, "key": None, "issued": 1700000000},
     "upper-case hex"),
    ({"op": "authenticate", "name": "bob", "token_sha256": SHA[:-1], "auth_revision": 1, "key": None, "issued": 1700000000},
     "short token"),
    ({"op": "authenticate", "name": "bob", "token_sha256": SHA, "auth_revision": -1, "key": None, "issued": 1700000000},
     "negative auth revision"),
    ({"op": "authenticate", "name": "bob", "token_sha256": SHA, "auth_revision": 1, "issued": 1}, "no key"),
    ({"op": "authenticate", "name": "bob", "password": "pw", "token_sha256": SHA, "auth_revision": 1,
      "key": None}, "password in an authenticate entry"),
]


@pytest.mark.parametrize("op,why", BAD_OPS, ids=[why for _, why in BAD_OPS])
def test_invalid_ops_are_refused_with_a_reason(op, why):
    with pytest.raises(InvalidEntry) as exc:
        validate_entry_op(op)
    assert str(exc.value)


def test_a_nesting_bomb_is_refused_not_a_recursion_error():
    op: object = b"x"
    for _ in range(3000):
        op = [op]
    with pytest.raises(InvalidEntry):
        validate_entry_op({**PUT, "value": op})
    with pytest.raises(InvalidEntry):
        validate_entry_op({"op": "txn", "compare": [], "success": [_deep_txn(500)], "failure": []})


# --- the envelope -------------------------------------------------------------------------
def test_v1_round_trip_and_auth():
    data = entry.encode(7, 8, 99, ("bob", 3), PUT)
    ent = entry.decode(data)
    assert (ent.origin, ent.req_id, ent.client_id, ent.auth, ent.op) == (7, 8, 99, ("bob", 3), PUT)
    assert entry.decode(entry.encode(0, 0, None, None, PUT)).auth is None


def test_pre_v1_entries_still_decode():
    legacy = msgpack.packb([5, 6, PUT, 42], use_bin_type=True)
    ent = entry.decode(legacy)
    assert (ent.origin, ent.req_id, ent.client_id, ent.auth, ent.op) == (5, 6, 42, None, PUT)
    # ... and the entry is a legacy-shaped one: its op does not validate
    ent = entry.decode(msgpack.packb([0, 0, {"op": "put"}, None]))
    with pytest.raises(InvalidEntry):
        validate_entry_op(ent.op)


@pytest.mark.parametrize("obj", [
    [True, 1, 2, None, None, PUT],  # bool as the version
    [2, 1, 2, None, None, PUT],
    [1, -1, 2, None, None, PUT],
    [1, 1.5, 2, None, None, PUT],
    [1, 1, 2, [1], None, PUT],
    [1, 1, 2, None, ["bob"], PUT],
    [1, 1, 2, None, ["", 1], PUT],
    [1, 1, 2, None, ["bob", True], PUT],
    [1, 1, 2, None, None, "put"],
    [1, 1, 2, None, None, {"key": b"a"}],
    [1, 1, PUT, None, None],
    [0, 0, PUT],
    {"op": "put"},
    "x",
])
def test_bad_envelopes_are_refused(obj):
    with pytest.raises(InvalidEntry):
        entry.decode(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x96\x01", b"\x91" * 5000 + b"\xc0", b"\x95\x01\x02"])
def test_undecodable_entries_are_refused(data):
    with pytest.raises(InvalidEntry):
        entry.decode(data)


# --- reads and member ops (the internal decoders use these) ------------------------------
READS = [
    {"op": "range", "key": b"a"},
    {"op": "range", "key": b"a", "range_end": b"\x00", "revision": 3, "sort_order": "ASCEND"},
    {"op": "history", "key": b"a", "range_end": b"b", "start_revision": 2, "prev_kv": True},
    {"op": "snapshot"},
    {"op": "snapshot", "snapshot_id": 5, "offset": 100, "max_bytes": 4096},
    {"op": "alarm_list"},
    {"op": "lease_leases"},
    {"op": "lease_keepalive", "ID": 3},
    {"op": "lease_timetolive", "ID": 3, "keys": True},
]


@pytest.mark.parametrize("req", READS, ids=lambda r: r["op"])
def test_normalized_reads_validate(req):
    op = normalize_request(req, LIMITS)
    assert validate_read_op(op) is op


def test_watch_history_op_validates():
    op = {"op": "history", "key": b"\x00", "range_end": b"\x00", "start_revision": 1, "end_revision": 9,
          "prev_kv": True, "no_put": False, "no_delete": False, "limit_revisions": 9, "serializable": True}
    validate_read_op(op)


@pytest.mark.parametrize("op", [{"op": "put"}, PUT, {"op": "range"}, {"op": "history", "key": b"a"},
                                {"op": "lease_keepalive", "id": 0}, {"op": "alarm_list", "x": 1}, None])
def test_bad_reads_are_refused(op):
    with pytest.raises(InvalidEntry):
        validate_read_op(op)


@pytest.mark.parametrize("req", [
    {"op": "member_add", "peer_urls": ["tcp://127.0.0.1:2380"], "name": "n4"},
    {"op": "member_add", "peer_urls": ["tcp://[::1]:2380"], "name": "n4", "is_learner": True},
    {"op": "member_update", "member_id": 5, "peer_urls": ["tcp://h:1"]},
    {"op": "member_remove", "member_id": 5},
    {"op": "member_promote", "member_id": 2**64 - 1},
])
def test_member_ops_validate(req):
    op = normalize_request(req, LIMITS)
    assert validate_member_op(op) is op
    if op["op"] == "member_add":  # design-11: the new member's peer key rides along
        validate_member_op({**op, "peer_key": Z85})


@pytest.mark.parametrize("op", [
    {"op": "member_add", "peer_urls": [], "name": "n", "is_learner": False},
    {"op": "member_add", "peer_urls": ["http://h:1"], "name": "n", "is_learner": False},
    {"op": "member_add", "peer_urls": ["tcp://h:1"], "name": "n"},
    {"op": "member_add", "peer_urls": ["tcp://h:1"], "name": "n", "is_learner": False, "peer_key": "k"},
    {"op": "member_remove", "member_id": 0},
    {"op": "member_remove", "member_id": True},
    {"op": "member_update", "member_id": 1},
    {"op": "put"},
])
def test_bad_member_ops_are_refused(op):
    with pytest.raises(InvalidEntry):
        validate_member_op(op)


# --- the store applies what validates, and an invalid entry as an error -----------------
def _store_with_data() -> MVCCStore:
    store = MVCCStore(MemoryBackend())
    ops = [normalize_request({"op": "put", "key": k, "value": b"v"}, LIMITS) for k in (b"a", b"k", b"x")]
    grant = {"op": "lease_grant", "ttl": 30, "id": 9}
    store.apply([(i + 1, op) for i, op in enumerate([*ops, grant])])
    return store


def test_an_invalid_entry_applies_as_its_error_and_takes_its_index():
    store = _store_with_data()
    rev, idx = store.current_revision, store.applied_index
    err = errors.InvalidArgument("etcdserver: invalid log entry: x")
    res = store.apply([(idx + 1, err), (idx + 2, None), (idx + 3, PUT)])
    assert [r.index for r in res] == [idx + 1, idx + 2, idx + 3]
    assert res[0].error is err and res[0].revision == rev and not res[0].events
    assert res[1].error is None and res[1].revision == rev
    assert res[2].error is None and res[2].revision == rev + 1
    assert store.applied_index == idx + 3


def test_a_failure_applying_a_validated_op_is_a_loud_bug():
    store = _store_with_data()
    idx = store.applied_index
    with pytest.raises(AssertionError, match=f"index {idx + 1}"):
        store.apply([(idx + 1, {"op": "put"})])  # what would happen without validation
    assert store.applied_index == idx  # nothing of the call was written


@pytest.mark.parametrize("op", AUTH_OPS, ids=lambda op: op["op"])
def test_auth_entries_apply_through_the_auth_store(op):
    """A valid auth entry applies as a result or an ordinary error, never a crash, and
    leaves the keyspace alone."""
    store = _store_with_data()
    revision = store.current_revision
    (res,) = store.apply([(store.applied_index + 1, op)])
    assert res.error is None or isinstance(res.error, QkvError)
    assert store.current_revision == revision


VALID = normalized_writes() + SERVER_OPS + [
    {"op": "lease_revoke", "id": 9}, {"op": "lease_checkpoint", "checkpoints": [[9, 10**12]]},
    {"op": "put", "key": b"k", "value": b"", "lease": 9, "prev_kv": True, "ignore_value": False,
     "ignore_lease": False},
]
_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.binary(max_size=4),
                    st.text(max_size=4), st.just("ASCEND"), st.just("NOSPACE"), st.just([]), st.just({}),
                    st.just([[1, 2]]), st.just([PUT]), st.floats(allow_nan=False))


@st.composite
def mutated(draw):
    op = copy.deepcopy(draw(st.sampled_from(VALID)))
    target = op
    # walk into a txn branch sometimes
    while target.get("op") == "txn" and draw(st.booleans()):
        branch = [x for x in target["success"] + target["failure"] if isinstance(x, dict)]
        if not branch:
            break
        target = draw(st.sampled_from(branch))
    keys = sorted(target)
    action = draw(st.integers(0, 2))
    if action == 0 and keys:
        target[draw(st.sampled_from(keys))] = draw(_values)
    elif action == 1 and keys:
        target.pop(draw(st.sampled_from(keys)))
    else:
        target[draw(st.sampled_from(["x", "op", "key", "id", "lease"]))] = draw(_values)
    return op


@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_whatever_validates_applies_without_a_bug(op):
    """The contract between validate_entry_op and the store: an op that passes applies
    with a result or a QkvError, never an AssertionError/KeyError/TypeError."""
    try:
        validate_entry_op(op)
    except InvalidEntry:
        return
    store = _store_with_data()
    (res,) = store.apply([(store.applied_index + 1, op)])
    assert res.index == store.applied_index
