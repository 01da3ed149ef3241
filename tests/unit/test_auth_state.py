"""AuthState changes and reads (apply_auth / read_auth), revisions, the wire form."""
from __future__ import annotations

import copy

import msgpack
import pytest

from actors.storage.auth import AuthState, Perm, User, apply_auth, hash_password, read_auth
from protocol.errors import (
    AuthFailed,
    AuthNotEnabled,
    AuthOldRevision,
    InvalidArgument,
    InvalidAuthMgmt,
    PermissionNotGranted,
    RoleAlreadyExist,
    RoleNotFound,
    RoleNotGranted,
    RootRoleNotExist,
    RootUserNotExist,
    UnknownOp,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
)

PW = hash_password("pw", salt=b"s" * 16)
KEY = "rq^V+mS4ws0tXrtMm5ai0nbeB4XhkWVZM6.Mn?b4"
KEY2 = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
TOKEN = "ab" * 32


def add_user(st, name, password=PW, key=None):
    if password is None:
        return apply_auth(st, {"op": "user_add", "name": name, "password": None, "no_password": True,
                               "public_key": key})
    return apply_auth(st, {"op": "user_add", "name": name, "password": password, "no_password": False,
                           "public_key": key})


def grant(st, user, role):
    return apply_auth(st, {"op": "user_grant_role", "name": user, "role": role})


def perm(st, role, perm_type, key, range_end=b""):
    return apply_auth(st, {"op": "role_grant_permission", "name": role,
                           "perm": {"perm_type": perm_type, "key": key, "range_end": range_end}})


def enabled_state():
    st = AuthState()
    add_user(st, "root")
    grant(st, "root", "root")
    apply_auth(st, {"op": "auth_enable"})
    return st


def unchanged(st, op, err):
    before = st.to_wire()
    with pytest.raises(err):
        apply_auth(st, op)
    assert st.to_wire() == before


# --- auth_enable / auth_disable --------------------------------------------------------
def test_enable_needs_root_user_with_root_role():
    st = AuthState()
    assert st.revision == 1 and not st.enabled
    unchanged(st, {"op": "auth_enable"}, RootUserNotExist)
    add_user(st, "root")
    unchanged(st, {"op": "auth_enable"}, RootRoleNotExist)
    grant(st, "root", "root")  # the root role need not exist as a role (etcd)
    assert "root" not in st.roles
    rev = st.revision
    assert apply_auth(st, {"op": "auth_enable"}) == {}
    assert st.enabled and st.revision == rev + 1
    assert apply_auth(st, {"op": "auth_enable"}) == {} and st.revision == rev + 1  # no-op
    apply_auth(st, {"op": "auth_disable"})
    assert not st.enabled and st.revision == rev + 2
    apply_auth(st, {"op": "auth_disable"})
    assert st.revision == rev + 2


def test_auth_status():
    st = AuthState()
    assert read_auth(st, {"op": "auth_status"}) == {"enabled": False, "auth_revision": 1}
    st = enabled_state()
    assert read_auth(st, {"op": "auth_status"}) == {"enabled": True, "auth_revision": st.revision}


# --- users --------------------------------------------------------------------------------
def test_user_add_get_list_delete():
    st = AuthState()
    add_user(st, "bob")
    add_user(st, "alice", password=None, key=KEY)
    assert st.users["alice"] == User([], None, KEY)
    assert st.users["bob"].password == PW
    assert read_auth(st, {"op": "user_list"}) == {"users": ["alice", "bob"]}
    assert read_auth(st, {"op": "user_get", "name": "bob"}) == {"roles": []}
    unchanged(st, {"op": "user_add", "name": "bob", "password": PW}, UserAlreadyExist)
    unchanged(st, {"op": "user_add", "name": "carol", "password": PW, "public_key": KEY}, InvalidArgument)
    unchanged(st, {"op": "user_add", "name": "", "password": PW}, UserEmpty)
    unchanged(st, {"op": "user_add", "name": "carol", "password": "plaintext"}, InvalidArgument)
    unchanged(st, {"op": "user_add", "name": "carol"}, InvalidArgument)
    unchanged(st, {"op": "user_add", "name": "carol", "password": PW, "no_password": True}, InvalidArgument)
    unchanged(st, {"op": "user_add", "name": "carol", "password": {**PW, "n": 2**30}}, InvalidArgument)
    unchanged(st, {"op": "user_add", "name": "carol", "password": PW, "public_key": "x"}, InvalidArgument)
    assert st.user_by_key(KEY) == "alice" and st.user_by_key(KEY2) is None
    rev = st.revision
    apply_auth(st, {"op": "user_delete", "name": "bob"})
    assert st.revision == rev + 1 and "bob" not in st.users
    unchanged(st, {"op": "user_delete", "name": "bob"}, UserNotFound)
    with pytest.raises(UserNotFound):
        read_auth(st, {"op": "user_get", "name": "bob"})


def test_change_password():
    st = AuthState()
    add_user(st, "bob")
    new = hash_password("new", salt=b"t" * 16)
    rev = st.revision
    apply_auth(st, {"op": "user_change_password", "name": "bob", "password": new})
    assert st.users["bob"].password == new and st.revision == rev + 1
    unchanged(st, {"op": "user_change_password", "name": "nobody", "password": new}, UserNotFound)
    unchanged(st, {"op": "user_change_password", "name": "bob", "password": "new"}, InvalidArgument)
    unchanged(st, {"op": "user_change_password", "name": "bob", "password": None}, InvalidArgument)
    add_user(st, "nopw", password=None)  # a password user from then on (etcd keeps it password-less)
    apply_auth(st, {"op": "user_change_password", "name": "nopw", "password": new})
    assert st.users["nopw"].password == new


def test_grant_and_revoke_roles():
    st = AuthState()
    add_user(st, "bob")
    unchanged(st, {"op": "user_grant_role", "name": "bob", "role": "r"}, RoleNotFound)
    unchanged(st, {"op": "user_grant_role", "name": "nobody", "role": "root"}, UserNotFound)
    apply_auth(st, {"op": "role_add", "name": "r"})
    apply_auth(st, {"op": "role_add", "name": "a"})
    rev = st.revision
    grant(st, "bob", "r")
    grant(st, "bob", "a")
    assert st.users["bob"].roles == ["a", "r"] and st.revision == rev + 2
    grant(st, "bob", "r")  # already granted: no change, no bump (etcd)
    assert st.revision == rev + 2
    assert read_auth(st, {"op": "user_get", "name": "bob"}) == {"roles": ["a", "r"]}
    apply_auth(st, {"op": "user_revoke_role", "name": "bob", "role": "a"})
    assert st.users["bob"].roles == ["r"] and st.revision == rev + 3
    unchanged(st, {"op": "user_revoke_role", "name": "bob", "role": "a"}, RoleNotGranted)
    unchanged(st, {"op": "user_revoke_role", "name": "nobody", "role": "a"}, UserNotFound)


def test_roles_and_permissions():
    st = AuthState()
    rev = st.revision
    apply_auth(st, {"op": "role_add", "name": "r"})
    assert st.revision == rev + 1
    unchanged(st, {"op": "role_add", "name": "r"}, RoleAlreadyExist)
    perm(st, "r", "READ", b"b", b"c")
    perm(st, "r", "WRITE", b"a")
    perm(st, "r", "READ", b"a", b"\x00")
    perm(st, "r", "READWRITE", b"b", b"c")  # same interval: its type changes
    assert read_auth(st, {"op": "role_get", "name": "r"}) == {"perm": [
        {"perm_type": "WRITE", "key": b"a", "range_end": b""},
        {"perm_type": "READ", "key": b"a", "range_end": b"\x00"},
        {"perm_type": "READWRITE", "key": b"b", "range_end": b"c"},
    ]}
    assert st.revision == rev + 5
    unchanged(st, {"op": "role_grant_permission", "name": "nope",
                   "perm": {"perm_type": "READ", "key": b"a", "range_end": b""}}, RoleNotFound)
    unchanged(st, {"op": "role_grant_permission", "name": "r",
                   "perm": {"perm_type": "READ", "key": b"b", "range_end": b"a"}}, InvalidAuthMgmt)
    unchanged(st, {"op": "role_grant_permission", "name": "r",
                   "perm": {"perm_type": "ALL", "key": b"b", "range_end": b""}}, InvalidArgument)
    unchanged(st, {"op": "role_grant_permission", "name": "r", "perm": None}, InvalidArgument)
    apply_auth(st, {"op": "role_revoke_permission", "name": "r", "key": b"a", "range_end": b""})
    assert [p.perm_type for p in st.roles["r"]] == ["READ", "READWRITE"]
    unchanged(st, {"op": "role_revoke_permission", "name": "r", "key": b"a", "range_end": b""},
              PermissionNotGranted)
    unchanged(st, {"op": "role_revoke_permission", "name": "r", "key": b"b", "range_end": b"d"},
              PermissionNotGranted)
    unchanged(st, {"op": "role_revoke_permission", "name": "x", "key": b"a", "range_end": b""}, RoleNotFound)
    with pytest.raises(RoleNotFound):
        read_auth(st, {"op": "role_get", "name": "nope"})
    assert read_auth(st, {"op": "role_list"}) == {"roles": ["r"]}


def test_role_delete_removes_it_from_users():
    st = AuthState()
    apply_auth(st, {"op": "role_add", "name": "r"})
    apply_auth(st, {"op": "role_add", "name": "s"})
    for u in ("a", "b"):
        add_user(st, u)
        grant(st, u, "r")
    grant(st, "b", "s")
    rev = st.revision
    apply_auth(st, {"op": "role_delete", "name": "r"})
    assert st.revision == rev + 1 and "r" not in st.roles
    assert st.users["a"].roles == [] and st.users["b"].roles == ["s"]
    unchanged(st, {"op": "role_delete", "name": "r"}, RoleNotFound)


def test_root_rules_while_enabled():
    st = enabled_state()
    apply_auth(st, {"op": "role_add", "name": "root"})
    unchanged(st, {"op": "user_delete", "name": "root"}, InvalidAuthMgmt)
    unchanged(st, {"op": "user_revoke_role", "name": "root", "role": "root"}, InvalidAuthMgmt)
    unchanged(st, {"op": "role_delete", "name": "root"}, InvalidAuthMgmt)
    # other users may lose root, and root may lose other roles
    add_user(st, "admin")
    grant(st, "admin", "root")
    apply_auth(st, {"op": "user_revoke_role", "name": "admin", "role": "root"})
    apply_auth(st, {"op": "role_add", "name": "r"})
    grant(st, "root", "r")
    apply_auth(st, {"op": "user_revoke_role", "name": "root", "role": "r"})
    # once disabled, all three are allowed
    apply_auth(st, {"op": "auth_disable"})
    apply_auth(st, {"op": "role_delete", "name": "root"})
    assert st.users["root"].roles == []
    apply_auth(st, {"op": "user_delete", "name": "root"})
    unchanged(st, {"op": "auth_enable"}, RootUserNotExist)


def test_every_change_bumps_the_revision_once():
    st = AuthState()
    ops = [
        {"op": "user_add", "name": "root", "password": PW},
        {"op": "user_grant_role", "name": "root", "role": "root"},
        {"op": "role_add", "name": "r"},
        {"op": "role_grant_permission", "name": "r", "perm": {"perm_type": "READ", "key": b"a", "range_end": b""}},
        {"op": "user_add", "name": "u", "password": None, "no_password": True},
        {"op": "user_grant_role", "name": "u", "role": "r"},
        {"op": "auth_enable"},
        {"op": "user_change_password", "name": "u", "password": PW},
        {"op": "role_revoke_permission", "name": "r", "key": b"a", "range_end": b""},
        {"op": "user_revoke_role", "name": "u", "role": "r"},
        {"op": "role_delete", "name": "r"},
        {"op": "user_delete", "name": "u"},
        {"op": "auth_disable"},
    ]
    for i, op in enumerate(ops):
        apply_auth(st, op)
        assert st.revision == 2 + i, op


def test_authenticate_entry():
    st = AuthState()
    add_user(st, "bob")
    entry = {"op": "authenticate", "name": "bob", "token_sha256": TOKEN, "auth_revision": st.revision,
             "key": None}
    unchanged(st, entry, AuthNotEnabled)
    st = enabled_state()
    add_user(st, "bob")
    add_user(st, "nopw", password=None)
    entry["auth_revision"] = st.revision
    rev = st.revision
    assert apply_auth(st, entry) == {} and st.revision == rev  # changes nothing
    assert apply_auth(st, {**entry, "key": KEY}) == {}
    unchanged(st, {**entry, "auth_revision": rev - 1}, AuthOldRevision)
    unchanged(st, {**entry, "auth_revision": rev + 1}, AuthOldRevision)
    unchanged(st, {**entry, "name": "nobody"}, AuthFailed)
    unchanged(st, {**entry, "name": "nopw"}, AuthFailed)
    for bad in ({"token_sha256": "AB" * 32}, {"token_sha256": "ab"}, {"token_sha256": None},
                {"auth_revision": "3"}, {"auth_revision": True}, {"key": "k"}):
        unchanged(st, {**entry, **bad}, InvalidArgument)


def test_unknown_ops():
    st = AuthState()
    for op in ({"op": "range", "key": b"a"}, {"op": "user_get", "name": "a"}, {}, {"op": 5}):
        with pytest.raises(UnknownOp):
            apply_auth(st, op)
    with pytest.raises(InvalidArgument):
        apply_auth(st, "user_add")
    with pytest.raises(UnknownOp):
        read_auth(st, {"op": "user_add", "name": "a"})


# --- wire -----------------------------------------------------------------------------------
def rich_state():
    st = enabled_state()
    apply_auth(st, {"op": "role_add", "name": "r"})
    perm(st, "r", "READWRITE", b"a", b"\x00")
    perm(st, "r", "READ", b"\xff\x00", b"")
    add_user(st, "u", password=None, key=KEY)
    grant(st, "u", "r")
    grant(st, "u", "root")
    return st


def test_wire_round_trip_through_msgpack():
    st = rich_state()
    wire = st.to_wire()
    packed = msgpack.packb(wire, use_bin_type=True)
    back = AuthState.from_wire(msgpack.unpackb(packed, raw=False))
    assert back == st and back.to_wire() == wire
    assert AuthState.from_wire(AuthState().to_wire()) == AuthState()


def _garbage():
    w = rich_state().to_wire()
    yield None
    yield []
    yield {**w, "v": 2}
    yield {**w, "extra": 1}
    yield {k: v for k, v in w.items() if k != "roles"}
    yield {**w, "enabled": 1}
    yield {**w, "revision": 0}
    yield {**w, "revision": -1}
    yield {**w, "revision": True}
    yield {**w, "revision": 2**64}
    yield {**w, "users": []}
    yield {**w, "roles": {"r": {}}}
    yield {**w, "users": {"": w["users"]["u"]}}
    yield {**w, "users": {b"u": w["users"]["u"]}}
    yield {**w, "users": {**w["users"], "x": {**w["users"]["u"]}}}  # the same key twice
    for change in ({"roles": "r"}, {"roles": [1]}, {"password": "pw"}, {"password": {**PW, "n": 2**30}},
                   {"key": "short"}, {"extra": 1}):
        u = {**w["users"]["u"], **change}
        yield {**w, "users": {**w["users"], "u": u}}
    p = w["roles"]["r"][0]
    for change in ({"perm_type": "ALL"}, {"key": "a"}, {"key": b""}, {"range_end": None},
                   {"key": b"b", "range_end": b"a"}, {"x": 1}):
        yield {**w, "roles": {"r": [{**p, **change}]}}
    yield {**w, "roles": {"r": [p, p]}}
    yield {**w, "roles": {"": []}}
    yield {**w, "users": {("t",): w["users"]["u"]}}


@pytest.mark.parametrize("bad", list(_garbage()))
def test_from_wire_refuses_garbage(bad):
    with pytest.raises(InvalidArgument):
        AuthState.from_wire(copy.deepcopy(bad))


def test_perm_from_wire():
    assert Perm.from_wire({"perm_type": "READ", "key": b"a", "range_end": b""}) == Perm("READ", b"a", b"")
