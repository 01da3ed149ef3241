"""Validation of the auth ops and of the `token` envelope field (protocol/requests.py)."""
from __future__ import annotations

import pytest

from protocol.errors import (
    InvalidArgument,
    InvalidAuthMgmt,
    KeyNotProvided,
    QkvError,
    UnknownOp,
    UserEmpty,
)
from protocol.requests import (
    ADMIN_OPS,
    AUTH_OPS,
    AUTH_READ_OPS,
    AUTH_WRITE_OPS,
    Limits,
    is_write,
    normalize_request,
    request_token,
)

L = Limits()
KEY = "rq^V+mS4ws0tXrtMm5ai0nbeB4XhkWVZM6.Mn?b4"  # 40 Z85 characters


def n(req):
    return normalize_request(req, L)


def test_routing_sets():
    assert set(AUTH_OPS) == {"authenticate", *AUTH_WRITE_OPS, *AUTH_READ_OPS}
    assert not set(AUTH_OPS) & set(ADMIN_OPS)
    for op in AUTH_WRITE_OPS:
        assert is_write({"op": op})
    for op in (*AUTH_READ_OPS, "authenticate"):  # authenticate: the gateway proposes its own entry
        assert not is_write({"op": op})


@pytest.mark.parametrize("op", ["auth_enable", "auth_disable", "auth_status", "user_list", "role_list"])
def test_no_field_ops(op):
    assert n({"op": op}) == {"op": op}
    with pytest.raises(InvalidArgument):
        n({"op": op, "name": "x"})


def test_authenticate():
    assert n({"op": "authenticate", "name": "alice", "password": "pw"}) == {
        "op": "authenticate", "name": "alice", "password": "pw", "key": None}
    assert n({"op": "authenticate", "name": "alice", "password": "pw", "key": KEY})["key"] == KEY
    assert n({"op": "authenticate", "name": "alice"})["password"] == ""
    with pytest.raises(InvalidArgument):
        n({"op": "authenticate", "name": "alice", "password": "pw", "key": KEY[:-1]})
    with pytest.raises(InvalidArgument):
        n({"op": "authenticate", "name": "alice", "password": "pw", "key": KEY[:-1] + "~"})
    with pytest.raises(InvalidArgument):
        n({"op": "authenticate", "name": "alice", "password": b"pw"})
    with pytest.raises(UserEmpty):
        n({"op": "authenticate", "name": "", "password": "pw"})


def test_user_add():
    base = {"op": "user_add", "name": "alice", "password": "pw", "no_password": False, "public_key": None}
    assert n({"op": "user_add", "name": "alice", "password": "pw"}) == base
    assert n({"op": "user_add", "name": "bob", "no_password": True, "public_key": KEY}) == {
        **base, "name": "bob", "password": None, "no_password": True, "public_key": KEY}
    for bad in ({"name": "a"}, {"name": "a", "password": ""}, {"name": "a", "password": "p", "no_password": True},
                {"name": "a", "password": 5}, {"name": "a", "password": "p", "public_key": "short"},
                {"name": "a", "password": "p", "no_password": 1}, {"name": "a", "password": "p", "x": 1},
                {"name": 7, "password": "p"}, {"name": "a\n", "password": "p"},
                {"name": "x" * 257, "password": "p"}, {"name": "\u00e9" * 129, "password": "p"},
                {"name": "a", "password": "p" * 1025}):
        with pytest.raises(InvalidArgument):
            n({"op": "user_add", **bad})
    with pytest.raises(UserEmpty):
        n({"op": "user_add", "name": "", "password": "p"})
    with pytest.raises(UserEmpty):
        n({"op": "user_add", "password": "p"})
    assert n({"op": "user_add", "name": "x" * 256, "password": "p" * 1024})["name"] == "x" * 256
    assert n({"op": "user_add", "name": "a:b c", "password": "p"})["name"] == "a:b c"


def test_user_and_role_ops():
    assert n({"op": "user_delete", "name": "a"}) == {"op": "user_delete", "name": "a"}
    assert n({"op": "user_get", "name": "a"}) == {"op": "user_get", "name": "a"}
    assert n({"op": "user_change_password", "name": "a", "password": "p"}) == {
        "op": "user_change_password", "name": "a", "password": "p"}
    with pytest.raises(InvalidArgument):
        n({"op": "user_change_password", "name": "a", "password": ""})
    assert n({"op": "user_grant_role", "name": "a", "role": "r"}) == {"op": "user_grant_role", "name": "a", "role": "r"}
    assert n({"op": "user_revoke_role", "name": "a", "role": "r"})["role"] == "r"
    with pytest.raises(InvalidArgument, match="role name is empty"):
        n({"op": "user_grant_role", "name": "a", "role": ""})
    with pytest.raises(InvalidArgument):
        n({"op": "user_grant_role", "name": "a"})
    for op in ("role_add", "role_delete", "role_get"):
        assert n({"op": op, "name": "r"}) == {"op": op, "name": "r"}
        with pytest.raises(InvalidArgument, match="role name is empty"):
            n({"op": op, "name": ""})


def test_role_grant_permission():
    out = n({"op": "role_grant_permission", "name": "r",
             "perm": {"perm_type": "readwrite", "key": "a", "range_end": b"b"}})
    assert out == {"op": "role_grant_permission", "name": "r",
                   "perm": {"perm_type": "READWRITE", "key": b"a", "range_end": b"b"}}
    assert n({"op": "role_grant_permission", "name": "r", "perm": {"key": b"a"}})["perm"] == {
        "perm_type": "READ", "key": b"a", "range_end": b""}
    assert n({"op": "role_grant_permission", "name": "r",
              "perm": {"perm_type": "WRITE", "key": b"a", "range_end": b"\x00"}})["perm"]["range_end"] == b"\x00"
    for perm in ({"key": b""}, {"key": b"b", "range_end": b"a"}, {"key": b"b", "range_end": b"b"}, {}):
        with pytest.raises(InvalidAuthMgmt):
            n({"op": "role_grant_permission", "name": "r", "perm": perm})
    for perm in (None, [], {"perm_type": "ALL", "key": b"a"}, {"key": 5}, {"key": b"a", "x": 1}):
        with pytest.raises(InvalidArgument):
            n({"op": "role_grant_permission", "name": "r", "perm": perm})


def test_role_revoke_permission():
    assert n({"op": "role_revoke_permission", "name": "r", "key": "a", "range_end": "b"}) == {
        "op": "role_revoke_permission", "name": "r", "key": b"a", "range_end": b"b"}
    assert n({"op": "role_revoke_permission", "name": "r", "key": "a"})["range_end"] == b""
    with pytest.raises(KeyNotProvided):
        n({"op": "role_revoke_permission", "name": "r"})


def test_token_envelope_field():
    assert n({"op": "range", "key": b"k", "token": "tok"}) == n({"op": "range", "key": b"k"})
    assert "token" not in n({"op": "put", "key": b"k", "token": "tok"})
    assert n({"op": "status", "token": "t"}) == {"op": "status"}
    assert n({"op": "user_list", "token": "t"}) == {"op": "user_list"}
    assert n({"op": "range", "key": b"k", "token": None})["op"] == "range"
    assert request_token({"op": "range", "token": "abc"}) == "abc"
    assert request_token({"op": "range"}) is None
    assert request_token({"op": "range", "token": None}) is None
    for bad in ("", b"tok", 5, "t" * 513, ["t"]):
        with pytest.raises(InvalidArgument):
            n({"op": "range", "key": b"k", "token": bad})
        with pytest.raises(InvalidArgument):
            request_token({"token": bad})
    with pytest.raises(InvalidArgument):  # token is an envelope field, not an op field in a txn
        n({"op": "txn", "success": [{"range": {"key": b"k", "token": "t"}}]})


def test_internal_fields_are_not_accepted_from_clients():
    with pytest.raises(InvalidArgument):
        n({"op": "authenticate", "name": "a", "password": "p", "token_sha256": "0" * 64})
    with pytest.raises(InvalidArgument):
        n({"op": "authenticate", "name": "a", "password": "p", "auth_revision": 3})
    with pytest.raises(UnknownOp):
        n({"op": "auth_status_x"})


@pytest.mark.parametrize("req", [
    {"op": "user_add", "name": {"a": 1}, "password": "p"},
    {"op": "role_grant_permission", "name": "r", "perm": {"key": {"x"}}},
    {"op": "user_get", "name": None},
    {"op": "role_get", "name": ["r"]},
])
def test_garbage_raises_only_protocol_errors(req):
    with pytest.raises(QkvError):
        n(req)
