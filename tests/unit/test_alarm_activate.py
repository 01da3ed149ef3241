"""A client's alarm_activate (etcd's AlarmRequest ACTIVATE, issue 18) and the exact
alarm_disarm of etcd's DEACTIVATE: request validation, the entry validator, the store's
effects and results, and who may send them under auth. Pure: no I/O."""
from __future__ import annotations

import pytest

from actors.runtime.entry_ops import InvalidEntry, validate_entry_op
from actors.storage.auth import AuthState, apply_auth, check, hash_password
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc import alarms
from actors.storage.mvcc.store import SERVER
from protocol import errors
from protocol.requests import Limits, is_write, normalize_request

U64_MAX = 2**64 - 1


def n(req: dict) -> dict:
    return normalize_request(req, Limits())


# --- requests ------------------------------------------------------------------------------
@pytest.mark.parametrize("member", [0, 1, 0xE52928AF596DF545, U64_MAX])
def test_activate_takes_any_member_id(member):
    assert n({"op": "alarm_activate", "member_id": member, "alarm": "corrupt"}) == {
        "op": "alarm_activate", "member_id": member, "alarm": "CORRUPT"}
    assert is_write(n({"op": "alarm_activate", "member_id": member, "alarm": "NOSPACE"}))


@pytest.mark.parametrize("req, says", [
    ({"op": "alarm_activate", "member_id": 1}, "alarm must be one of NOSPACE, CORRUPT, got ''"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": ""}, "alarm must be one of NOSPACE, CORRUPT, got ''"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": "NONE"}, "got 'NONE'"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": "FIRE"}, "got 'FIRE'"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": 1}, "got 1"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": b"NOSPACE"}, "got b'NOSPACE'"),
    ({"op": "alarm_activate", "member_id": -1, "alarm": "NOSPACE"}, "member_id must be a member id (uint64), got -1"),
    ({"op": "alarm_activate", "member_id": 2**64, "alarm": "NOSPACE"}, "member_id must be a member id"),
    ({"op": "alarm_activate", "member_id": True, "alarm": "NOSPACE"}, "got True"),
    ({"op": "alarm_activate", "member_id": "5", "alarm": "NOSPACE"}, "got '5'"),
    ({"op": "alarm_activate", "member_id": 1.0, "alarm": "NOSPACE"}, "got 1.0"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": "NOSPACE", "exact": True}, "unknown field 'exact'"),
    ({"op": "alarm_activate", "member_id": 1, "alarm": "NOSPACE", "x": 1}, "unknown field 'x'"),
    ({"op": "alarm_disarm", "member_id": 1, "exact": True}, "alarm must be one of NOSPACE, CORRUPT, got ''"),
    ({"op": "alarm_disarm", "member_id": 1, "alarm": "FIRE"}, "(or absent: every type), got 'FIRE'"),
    ({"op": "alarm_disarm", "member_id": 1, "alarm": "NOSPACE", "exact": 1}, "exact: must be a bool, got int"),
])
def test_bad_alarm_requests_get_clear_errors(req, says):
    with pytest.raises(errors.InvalidArgument) as info:
        n(req)
    assert says in info.value.message, info.value.message


def test_disarm_exact_is_in_the_op_only_when_true():
    assert n({"op": "alarm_disarm"}) == {"op": "alarm_disarm", "member_id": 0, "alarm": ""}
    assert n({"op": "alarm_disarm", "alarm": "NOSPACE", "exact": False}) == {
        "op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE"}
    assert n({"op": "alarm_disarm", "alarm": "nospace", "exact": True}) == {
        "op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": True}


@pytest.mark.parametrize("op", [
    {"op": "alarm_activate", "member_id": 0, "alarm": "NOSPACE"},
    {"op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": True},
    {"op": "alarm_disarm", "member_id": 7, "alarm": ""},
])
def test_normalized_alarm_ops_are_valid_entries(op):
    validate_entry_op(n(op))


@pytest.mark.parametrize("op", [
    {"op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": False},
    {"op": "alarm_disarm", "member_id": 0, "alarm": "", "exact": True},
    {"op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": 1},
])
def test_entry_validator_refuses_bad_exact_disarms(op):
    with pytest.raises(InvalidEntry):
        validate_entry_op(op)


# --- the store -----------------------------------------------------------------------------
def put(key: bytes) -> dict:
    return n({"op": "put", "key": key, "value": b"v"})


def test_activated_nospace_refuses_puts_until_disarmed():
    store = MVCCStore(MemoryBackend())
    act = n({"op": "alarm_activate", "member_id": 0, "alarm": "NOSPACE"})
    res = store.apply([(1, act), (2, act), (3, put(b"k")),
                       (4, n({"op": "delete_range", "key": b"k"})),
                       (5, n({"op": "lease_grant", "ttl": 5, "ID": 3}))])
    # the alarm both times (etcd's Activate returns the one it holds), no revision
    assert res[0].response == res[1].response == {"alarms": [{"member_id": 0, "alarm": "NOSPACE"}]}
    assert res[0].revision == 1
    assert isinstance(res[2].error, errors.NoSpace)
    assert res[2].error.message == "etcdserver: mvcc: database space exceeded"
    assert res[3].error is None and isinstance(res[4].error, errors.NoSpace)
    assert store.alarms == {(0, "NOSPACE")}
    res = store.apply([(6, n({"op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": True})),
                       (7, put(b"k"))])
    assert res[0].response == {"alarms": [{"member_id": 0, "alarm": "NOSPACE"}]}
    assert res[1].error is None and store.alarms == frozenset()


def test_activated_corrupt_refuses_writes_not_alarms():
    store = MVCCStore(MemoryBackend())
    res = store.apply([(1, n({"op": "alarm_activate", "member_id": 5, "alarm": "CORRUPT"})),
                       (2, put(b"k")),
                       (3, n({"op": "alarm_activate", "member_id": 6, "alarm": "NOSPACE"})),
                       (4, n({"op": "alarm_disarm", "member_id": 5, "alarm": "CORRUPT", "exact": True})),
                       (5, n({"op": "alarm_disarm", "member_id": 6, "alarm": "NOSPACE"})),
                       (6, put(b"k"))])
    assert isinstance(res[1].error, errors.Corrupt)
    assert [r.error for r in res[2:]] == [None] * 4
    assert store.alarms == frozenset()


def test_exact_disarm_of_member_zero_leaves_the_others():
    s = frozenset({(0, "NOSPACE"), (5, "NOSPACE"), (0, "CORRUPT")})
    assert alarms.deactivate(s, 0, "NOSPACE", exact=True) == (frozenset({(5, "NOSPACE"), (0, "CORRUPT")}),
                                                              [(0, "NOSPACE")])
    assert alarms.deactivate(s, 9, "NOSPACE", exact=True) == (s, [])
    assert alarms.deactivate(s, 0, "NOSPACE")[1] == [(0, "NOSPACE"), (5, "NOSPACE")]  # every member


def test_alarms_activated_by_clients_survive_reopen():
    be = MemoryBackend()
    MVCCStore(be).apply([(1, n({"op": "alarm_activate", "member_id": U64_MAX, "alarm": "CORRUPT"})),
                         (2, n({"op": "alarm_activate", "member_id": 0, "alarm": "NOSPACE"}))])
    assert MVCCStore(be).alarms == {(U64_MAX, "CORRUPT"), (0, "NOSPACE")}


# --- who may ------------------------------------------------------------------------------
def auth_state() -> AuthState:
    s = AuthState()
    pw = hash_password("pw", salt=b"s" * 16)
    for op in ({"op": "user_add", "name": "root", "password": pw}, {"op": "user_add", "name": "bob", "password": pw},
               {"op": "user_grant_role", "name": "root", "role": "root"}, {"op": "auth_enable"}):
        apply_auth(s, op)
    return s


def test_only_root_activates_under_auth():
    s = auth_state()
    act = n({"op": "alarm_activate", "member_id": 0, "alarm": "NOSPACE"})
    check(s, ("root", s.revision), act)
    with pytest.raises(errors.PermissionDenied):
        check(s, ("bob", s.revision), act)
    with pytest.raises(errors.UserEmpty):
        check(s, None, act)
    with pytest.raises(errors.UserNotFound):  # a root-only op (etcd's IsAdminPermitted)
        check(s, ("ghost", s.revision), act)


def test_store_refuses_a_non_root_activate_and_applies_the_servers():
    be = MemoryBackend()
    store = MVCCStore(be)
    pw = hash_password("pw", salt=b"s" * 16)
    setup = [{"op": "user_add", "name": "root", "password": pw}, {"op": "user_add", "name": "bob", "password": pw},
             {"op": "user_grant_role", "name": "root", "role": "root"}, {"op": "auth_enable"}]
    store.apply([(i + 1, op, SERVER) for i, op in enumerate(setup)])
    rev = store.auth.revision
    act = n({"op": "alarm_activate", "member_id": 3, "alarm": "NOSPACE"})
    res = store.apply([(5, act, ("bob", rev)), (6, act, None), (7, act, SERVER)])
    assert isinstance(res[0].error, errors.PermissionDenied)
    assert isinstance(res[1].error, errors.UserEmpty)
    assert res[2].error is None and store.alarms == {(3, "NOSPACE")}
