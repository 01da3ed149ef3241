"""Authorization (actors/storage/auth/check.py): etcd 3.4's rules for every op kind, and
range-permission coverage (etcd's range_perm_cache) checked against a brute-force model."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.storage.auth import MEMBER, MEMBER_OPS, AuthState, apply_auth, can_read, check, hash_password, needs_lease_keys
from actors.storage.auth.check import ALL_OPS
from actors.storage.auth.intervals import IntervalSet, request_interval
from protocol.errors import (
    AuthOldRevision,
    InvalidArgument,
    PermissionDenied,
    UserEmpty,
    UserNotFound,
)
from protocol.requests import INTERNAL_OPS, OPS, Limits, normalize_request
from tests.lanes import examples

PW = hash_password("pw", salt=b"s" * 16)


def n(req):
    return normalize_request(req, Limits())


# --- intervals ----------------------------------------------------------------------------
def test_request_interval():
    assert request_interval(b"a", b"") == (b"a", b"a\x00")
    assert request_interval(b"a", b"\x00") == (b"a", None)
    assert request_interval(b"a", b"c") == (b"a", b"c")
    assert request_interval(b"c", b"a") == (b"c", b"c\x00")  # empty range: the key itself


def test_interval_set_merges_touching_and_overlapping():
    s = IntervalSet([(b"c", b"d"), (b"a", b"b"), (b"b", b"c"), (b"x", None), (b"y", b"z"), (b"e", b"e\x00")])
    assert s.intervals() == [(b"a", b"d"), (b"e", b"e\x00"), (b"x", None)]
    assert IntervalSet([(b"a", b"c"), (b"b", b"bb")]).intervals() == [(b"a", b"c")]
    assert IntervalSet([(b"a", None), (b"a", b"b")]).intervals() == [(b"a", None)]
    assert not IntervalSet()


@pytest.mark.parametrize("perms, key, end, ok", [
    ([(b"a", b"")], b"a", b"", True),              # single key
    ([(b"a", b"")], b"b", b"", False),
    ([(b"a", b"")], b"a", b"a\x00", True),         # [a, a\0) is the key a
    ([(b"a", b"")], b"a", b"b", False),
    ([(b"a", b"c")], b"b", b"", True),
    ([(b"a", b"c")], b"c", b"", False),            # half-open
    ([(b"a", b"c")], b"a", b"c", True),
    ([(b"a", b"c")], b"a", b"c\x00", False),
    ([(b"a", b"b"), (b"b", b"c")], b"a", b"c", True),     # union of touching intervals
    ([(b"a", b"b"), (b"b\x00", b"c")], b"a", b"c", False),  # the key b is missing
    ([(b"a", b"b"), (b"b", b""), (b"b\x00", b"c")], b"a", b"c", True),
    ([(b"/a/", b"/a0")], b"/a/x", b"", True),      # prefix /a/
    ([(b"/a/", b"/a0")], b"/a/", b"/a0", True),
    ([(b"/a/", b"/a0")], b"/a", b"/a0", False),
    ([(b"/a/", b"/a0")], b"/a/", b"\x00", False),
    ([(b"a", b"\x00")], b"zzz", b"\x00", True),    # open-ended covers open-ended
    ([(b"a", b"\x00")], b"a", b"\x00", True),
    ([(b"b", b"\x00")], b"a", b"\x00", False),
    ([(b"\x00", b"\x00")], b"\x00", b"\x00", True),  # every key
    ([(b"a", b"c")], b"b", b"a", True),            # empty range: needs the key b (stricter)
    ([(b"a", b"c")], b"d", b"a", False),
    ([], b"a", b"", False),
])
def test_coverage_cases(perms, key, end, ok):
    s = IntervalSet(request_interval(k, e) for k, e in perms)
    assert s.covers(key, end) is ok


# Brute force: with keys over the alphabet {0, 1, 2} of length 1..3, every gap in a union
# of intervals starts at a request key or at an interval end (length <= 4): checking every
# string of length 1..4 decides coverage exactly.
ALPHABET = b"\x00\x01\x02"
UNIVERSE = [bytes(t) for n_ in range(1, 5) for t in itertools.product(ALPHABET, repeat=n_)]
SHORT = [u for u in UNIVERSE if len(u) <= 2]  # few distinct keys: intervals often touch
keys = st.one_of(st.sampled_from(SHORT), st.sampled_from([u for u in UNIVERSE if len(u) == 3]))
ends = st.one_of(st.just(b""), st.just(b"\x00"), keys)


def brute_covers(perms, key, end):
    lo, hi = request_interval(key, end)

    def inside(u, iv):
        return iv[0] <= u and (iv[1] is None or u < iv[1])
    ivs = [request_interval(k, e) for k, e in perms]
    return all(any(inside(u, iv) for iv in ivs) for u in UNIVERSE if inside(u, (lo, hi)))


@settings(max_examples=examples(1000), deadline=None)
@given(st.lists(st.tuples(keys, ends), max_size=6), keys, ends)
def test_coverage_matches_brute_force(perms, key, end):
    s = IntervalSet(request_interval(k, e) for k, e in perms)
    assert s.covers(key, end) == brute_covers(perms, key, end)


# --- the permission matrix ------------------------------------------------------------------
def make_state():
    """root; ra reads /a/; wb writes /b/; rwc reads and writes /c/; nobody has no role;
    cfg has user_get/role_get targets."""
    s = AuthState()
    ops = [{"op": "user_add", "name": u, "password": PW} for u in ("root", "ra", "wb", "rwc", "nobody", "admin")]
    ops += [{"op": "user_grant_role", "name": "root", "role": "root"},
            {"op": "user_grant_role", "name": "admin", "role": "root"}]
    for role, ptype, prefix in (("ra", "READ", b"/a/"), ("wb", "WRITE", b"/b/"), ("rwc", "READWRITE", b"/c/")):
        ops += [{"op": "role_add", "name": role},
                {"op": "role_grant_permission", "name": role,
                 "perm": {"perm_type": ptype, "key": prefix, "range_end": prefix[:-1] + b"0"}},
                {"op": "user_grant_role", "name": role, "role": role}]
    ops.append({"op": "auth_enable"})
    for op in ops:
        apply_auth(s, op)
    return s


S = make_state()


def who(user):
    return (user, S.revision)


def allowed(user, req, lease_keys=None, state=S):
    op = n(req) if "op" in req and req["op"] in OPS else req
    try:
        check(state, who(user) if isinstance(user, str) else user, op, lease_keys)
        return True
    except PermissionDenied:
        return False


def test_disabled_allows_everything():
    s = AuthState()
    for name in ALL_OPS:
        check(s, None, {"op": name})
    check(s, ("ghost", 0), n({"op": "put", "key": b"x"}))
    assert can_read(s, None, b"a", b"\x00")


def test_unauthenticated_and_old_revision_and_unknown_user():
    with pytest.raises(UserEmpty):
        check(S, None, n({"op": "range", "key": b"/a/x"}))
    with pytest.raises(UserEmpty):
        check(S, None, n({"op": "compact", "revision": 1}))
    with pytest.raises(AuthOldRevision):
        check(S, ("root", S.revision - 1), n({"op": "range", "key": b"/a/x"}))
    with pytest.raises(AuthOldRevision):
        check(S, ("ra", S.revision - 1), n({"op": "user_list"}))
    check(S, ("ra", S.revision + 1), n({"op": "range", "key": b"/a/x"}))  # newer: etcd allows
    with pytest.raises(PermissionDenied):
        check(S, ("ghost", S.revision), n({"op": "range", "key": b"/a/x"}))
    with pytest.raises(UserNotFound):
        check(S, ("ghost", S.revision), n({"op": "user_list"}))
    for bad in (("ra",), ["ra", "1"], ("ra", True), "ra", (1, 2)):
        with pytest.raises(InvalidArgument):
            check(S, bad, n({"op": "range", "key": b"/a/x"}))


def test_open_ops_need_no_user():
    for op in ({"op": "auth_status"}, {"op": "authenticate", "name": "ra", "password": "pw"}):
        check(S, None, n(op))
    for name in INTERNAL_OPS:  # the server's own entries
        check(S, None, {"op": name})


ROOT_ONLY = [
    {"op": "auth_enable"}, {"op": "auth_disable"}, {"op": "user_list"}, {"op": "role_list"},
    {"op": "user_add", "name": "x", "password": "p"}, {"op": "user_delete", "name": "x"},
    {"op": "user_change_password", "name": "ra", "password": "p"},  # even one's own (etcd 3.4)
    {"op": "user_grant_role", "name": "ra", "role": "wb"}, {"op": "user_revoke_role", "name": "ra", "role": "ra"},
    {"op": "role_add", "name": "x"}, {"op": "role_delete", "name": "ra"},
    {"op": "role_grant_permission", "name": "ra", "perm": {"key": b"/a/"}},
    {"op": "role_revoke_permission", "name": "ra", "key": b"/a/"},
    {"op": "user_get", "name": "admin"}, {"op": "role_get", "name": "root"},
    {"op": "hash_kv"}, {"op": "defragment"}, {"op": "snapshot"},
    {"op": "move_leader", "target_id": 5}, {"op": "alarm_disarm"},
    {"op": "alarm_activate", "member_id": 0, "alarm": "NOSPACE"},
    {"op": "member_add", "name": "m", "peer_urls": ["tcp://h:1"]}, {"op": "member_remove", "member_id": 1},
    {"op": "member_update", "member_id": 1, "peer_urls": ["tcp://h:1"]}, {"op": "member_promote", "member_id": 1},
]


@pytest.mark.parametrize("req", ROOT_ONLY, ids=lambda r: r["op"])
def test_root_only_ops(req):
    assert allowed("root", req) and allowed("admin", req)
    for user in ("ra", "wb", "rwc", "nobody"):
        assert not allowed(user, req), user
    with pytest.raises(UserEmpty):
        check(S, None, n(req))


@pytest.mark.parametrize("req", [{"op": "compact", "revision": 3}, {"op": "lease_grant", "ttl": 5},
                                 {"op": "alarm_list"}, {"op": "member_list"}, {"op": "status"}],
                         ids=lambda r: r["op"])
def test_any_user_ops(req):
    for user in ("root", "ra", "wb", "rwc", "nobody"):
        assert allowed(user, req)


def test_self_reads():
    assert allowed("ra", {"op": "user_get", "name": "ra"})
    assert allowed("ra", {"op": "role_get", "name": "ra"})
    assert not allowed("ra", {"op": "role_get", "name": "rwc"})
    assert not allowed("nobody", {"op": "role_get", "name": "ra"})


KV = [
    # (request, users allowed besides root)
    ({"op": "range", "key": b"/a/x"}, {"ra"}),
    ({"op": "range", "key": b"/a/", "range_end": b"/a0"}, {"ra"}),
    ({"op": "range", "key": b"/a/", "range_end": b"/b0"}, set()),
    ({"op": "range", "key": b"/c/k", "serializable": True}, {"rwc"}),
    ({"op": "range", "key": b"/b/k"}, set()),          # write-only
    ({"op": "range", "key": b"\x00", "range_end": b"\x00"}, set()),
    ({"op": "history", "key": b"/a/", "range_end": b"/a0"}, {"ra"}),
    ({"op": "history", "key": b"/b/x"}, set()),
    ({"op": "put", "key": b"/b/k", "value": b"v"}, {"wb"}),
    ({"op": "put", "key": b"/b/k", "prev_kv": True}, set()),  # prev_kv also needs READ
    ({"op": "put", "key": b"/c/k", "prev_kv": True}, {"rwc"}),
    ({"op": "put", "key": b"/a/k"}, set()),
    ({"op": "delete_range", "key": b"/b/k"}, {"wb"}),
    ({"op": "delete_range", "key": b"/b/", "range_end": b"/b0"}, {"wb"}),
    ({"op": "delete_range", "key": b"/b/", "range_end": b"\x00"}, set()),
    ({"op": "delete_range", "key": b"/b/", "range_end": b"/b0", "prev_kv": True}, set()),
    ({"op": "delete_range", "key": b"/c/", "range_end": b"/c0", "prev_kv": True}, {"rwc"}),
    ({"op": "txn", "compare": [{"target": "VERSION", "key": b"/a/k", "version": 0}]}, {"ra"}),
    ({"op": "txn", "compare": [{"target": "VALUE", "key": b"/b/k", "value": b""}]}, set()),  # compare reads
    ({"op": "txn", "success": [{"put": {"key": b"/b/k"}}]}, {"wb"}),
    ({"op": "txn", "failure": [{"put": {"key": b"/b/k"}}]}, {"wb"}),  # both branches are checked
    ({"op": "txn", "success": [{"range": {"key": b"/a/k"}}], "failure": [{"put": {"key": b"/b/k"}}]}, set()),
    ({"op": "txn", "compare": [{"target": "MOD", "key": b"/c/k", "mod_revision": 1}],
      "success": [{"put": {"key": b"/c/k"}}], "failure": [{"range": {"key": b"/c/k"}}]}, {"rwc"}),
    ({"op": "txn", "success": [{"txn": {"failure": [{"delete_range": {"key": b"/b/x"}}]}}]}, {"wb"}),
    ({"op": "txn", "success": [{"txn": {"failure": [{"delete_range": {"key": b"/b/x", "prev_kv": True}}]}}]},
     set()),
    ({"op": "txn", "success": [{"txn": {"compare": [{"target": "VERSION", "key": b"/b/x"}]}}]}, set()),
    ({"op": "txn"}, {"ra", "wb", "rwc", "nobody"}),  # an empty txn touches nothing (etcd)
]


@pytest.mark.parametrize("req, users", KV, ids=[f"{i}-{r['op']}" for i, (r, _) in enumerate(KV)])
def test_key_ops(req, users):
    assert allowed("root", req)
    for user in ("ra", "wb", "rwc", "nobody"):
        assert allowed(user, req) == (user in users), user


# --- leases --------------------------------------------------------------------------------
LEASES = {7: [b"/b/1", b"/c/1"], 8: [b"/c/2"], 9: []}


def lease_keys(lease_id):
    if lease_id is None:
        return [k for ks in LEASES.values() for k in ks]
    return LEASES.get(lease_id, [])


def test_lease_ops_check_the_attached_keys():
    # revoke / keep-alive: WRITE on every attached key; time-to-live: READ on each;
    # leases: READ on every key of every lease. An unknown lease has no keys.
    cases = [
        ({"op": "lease_revoke", "ID": 7}, set()),
        ({"op": "lease_revoke", "ID": 8}, {"rwc"}),
        ({"op": "lease_revoke", "ID": 9}, {"ra", "wb", "rwc", "nobody"}),
        ({"op": "lease_revoke", "ID": 99}, {"ra", "wb", "rwc", "nobody"}),
        ({"op": "lease_keepalive", "ID": 8}, {"rwc"}),
        ({"op": "lease_timetolive", "ID": 8, "keys": True}, {"rwc"}),
        ({"op": "lease_timetolive", "ID": 7}, set()),
        ({"op": "lease_leases"}, set()),
        ({"op": "put", "key": b"/c/k", "lease": 8}, {"rwc"}),
        ({"op": "put", "key": b"/b/k", "lease": 8}, set()),  # the lease holds a key wb may not write
        ({"op": "put", "key": b"/b/k", "lease": 9}, {"wb"}),
        ({"op": "txn", "failure": [{"put": {"key": b"/c/k", "lease": 8}}]}, {"rwc"}),
        ({"op": "txn", "failure": [{"put": {"key": b"/c/k", "lease": 7}}]}, set()),
    ]
    for req, users in cases:
        assert allowed("root", req, lease_keys), req
        for user in ("ra", "wb", "rwc", "nobody"):
            assert allowed(user, req, lease_keys) == (user in users), (user, req)
    LEASES[10] = [b"/c/3"]
    try:
        assert allowed("rwc", {"op": "lease_leases"}, lambda i: [] if i is None else lease_keys(i))
        assert not allowed("ra", {"op": "lease_leases"}, lease_keys)
    finally:
        del LEASES[10]


def test_lease_checks_fail_closed_without_the_keys():
    for req in ({"op": "lease_revoke", "ID": 9}, {"op": "lease_keepalive", "ID": 9},
                {"op": "lease_timetolive", "ID": 9}, {"op": "lease_leases"},
                {"op": "put", "key": b"/b/k", "lease": 9}):
        assert needs_lease_keys(n(req))
        assert not allowed("wb", req)
        assert allowed("root", req)
    for req in ({"op": "put", "key": b"/b/k"}, {"op": "range", "key": b"k"}, {"op": "lease_grant", "ttl": 1},
                {"op": "txn", "success": [{"put": {"key": b"k"}}]}):
        assert not needs_lease_keys(n(req))
    assert needs_lease_keys(n({"op": "txn", "success": [{"txn": {"failure": [{"put": {"key": b"k", "lease": 3}}]}}]}))


# --- changes take effect ---------------------------------------------------------------
def test_permission_changes_apply_at_once_and_bump_the_revision():
    s = AuthState.from_wire(S.to_wire())
    rev = s.revision
    assert allowed(("ra", rev), {"op": "range", "key": b"/a/x"}, state=s)
    apply_auth(s, {"op": "role_revoke_permission", "name": "ra", "key": b"/a/", "range_end": b"/a0"})
    assert s.revision == rev + 1
    with pytest.raises(AuthOldRevision):  # authorized before the change: refused, retryable
        check(s, ("ra", rev), n({"op": "range", "key": b"/a/x"}))
    assert not allowed(("ra", s.revision), {"op": "range", "key": b"/a/x"}, state=s)
    apply_auth(s, {"op": "role_grant_permission", "name": "ra",
                   "perm": {"perm_type": "READ", "key": b"/a/x", "range_end": b""}})
    assert allowed(("ra", s.revision), {"op": "range", "key": b"/a/x"}, state=s)
    apply_auth(s, {"op": "user_grant_role", "name": "ra", "role": "root"})
    assert allowed(("ra", s.revision), {"op": "user_list"}, state=s)
    apply_auth(s, {"op": "role_delete", "name": "ra"})
    assert not allowed(("nobody", s.revision), {"op": "range", "key": b"/a/x"}, state=s)


def test_malformed_op_is_refused_not_crashed():
    with pytest.raises(InvalidArgument):
        check(S, who("ra"), {"op": "range"})
    with pytest.raises(InvalidArgument):
        check(S, who("ra"), {"op": "txn", "compare": [{}]})
    with pytest.raises(PermissionDenied):  # an unknown op: fail closed
        check(S, who("ra"), {"op": "frobnicate"})
    check(S, who("root"), {"op": "frobnicate"})  # root may do anything (the op fails elsewhere)


# --- watch -----------------------------------------------------------------------------------
def test_can_read():
    assert can_read(S, "ra", b"/a/", b"/a0")
    assert can_read(S, "ra", b"/a/x", b"")
    assert not can_read(S, "ra", b"/a/", b"\x00")
    assert not can_read(S, "wb", b"/b/x", b"")
    assert can_read(S, "rwc", b"/c/", b"/c0")
    assert can_read(S, "root", b"\x00", b"\x00")
    assert not can_read(S, None, b"/a/x", b"")
    assert not can_read(S, "", b"/a/x", b"")
    assert not can_read(S, "ghost", b"/a/x", b"")


def test_every_client_op_is_classified():
    assert set(OPS) <= ALL_OPS


# --- the member identity (SPEC 7.2) -----------------------------------------------------------
def test_a_member_may_run_its_ops_and_read_every_topic_but_nothing_else():
    """Another member (or this member's gRPC gateway) may run status, hash_kv and history
    (any range, any auth revision, auth on or off) and read every watch topic; nothing
    else, whatever the state; and no user name can be it."""
    member = (MEMBER, 0)  # an old auth revision too: a member is not a user
    assert MEMBER_OPS == {"status", "hash_kv", "history"}
    for state in (S, AuthState()):
        check(state, member, n({"op": "status"}))
        check(state, member, n({"op": "hash_kv", "revision": 0}))
        check(state, member, n({"op": "history", "key": b"\x00", "range_end": b"\x00", "start_revision": 1}))
        for name in sorted(ALL_OPS - MEMBER_OPS):
            with pytest.raises(PermissionDenied):
                check(state, member, {"op": name})
        assert can_read(state, MEMBER, b"\x00", b"\x00")
    # A user's history is still checked as the user.
    with pytest.raises(PermissionDenied):
        check(S, who("ra"), n({"op": "history", "key": b"/b/", "range_end": b"/b0", "start_revision": 1}))
    assert not can_read(S, "ra", b"/b/", b"/b0")
    with pytest.raises(InvalidArgument):
        n({"op": "user_add", "name": MEMBER, "password": "x"})
