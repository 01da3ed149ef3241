"""scrypt password hashes (actors/storage/auth/passwords.py)."""
from __future__ import annotations

import pytest

from actors.storage.auth.passwords import (
    SCRYPT_N,
    check_hash_wire,
    hash_op_password,
    hash_password,
    verify_password,
)
from protocol.errors import InvalidArgument

SALT = b"0123456789abcdef"
WIRE = hash_password("s3cret", salt=SALT)


def test_hash_is_deterministic_with_a_salt_and_records_its_parameters():
    assert hash_password("s3cret", salt=SALT) == WIRE
    assert WIRE["alg"] == "scrypt" and (WIRE["n"], WIRE["r"], WIRE["p"]) == (SCRYPT_N, 8, 1)
    assert WIRE["salt"] == SALT and len(WIRE["hash"]) == 32
    assert check_hash_wire(WIRE) == WIRE


def test_random_salt_differs():
    a, b = hash_password("x"), hash_password("x")
    assert a["salt"] != b["salt"] and len(a["salt"]) == 16
    assert verify_password(a, "x") and verify_password(b, "x")


def test_verify():
    assert verify_password(WIRE, "s3cret")
    assert not verify_password(WIRE, "s3cret ")
    assert not verify_password(WIRE, "")
    assert not verify_password(WIRE, b"s3cret")
    assert not verify_password(WIRE, None)


def test_unicode_password():
    w = hash_password("p\u00e4ss\u2603", salt=SALT)
    assert verify_password(w, "p\u00e4ss\u2603") and not verify_password(w, "pass")
    assert not verify_password(w, "\ud800")  # a lone surrogate cannot be encoded: a mismatch


@pytest.mark.parametrize("change", [
    {"n": 2**30}, {"n": 2**17}, {"n": 3000}, {"n": 1}, {"n": 0}, {"n": True}, {"n": "16384"},
    {"r": 0}, {"r": 17}, {"p": 0}, {"p": 5}, {"n": 2**16, "r": 16},  # 128 MiB
    {"n": 2**16, "r": 8, "p": 4},  # too much work
    {"alg": "bcrypt"}, {"salt": b"short"}, {"salt": "0123456789abcdef"}, {"salt": b"s" * 65},
    {"hash": b"h" * 8}, {"hash": "x" * 32}, {"extra": 1},
])
def test_garbage_and_costly_wire_maps_are_refused(change):
    bad = {**WIRE, **change}
    with pytest.raises(InvalidArgument):
        check_hash_wire(bad)
    assert not verify_password(bad, "s3cret")


@pytest.mark.parametrize("bad", [None, [], "scrypt", {"alg": "scrypt"}, {k: v for k, v in WIRE.items() if k != "p"}])
def test_not_a_map(bad):
    with pytest.raises(InvalidArgument):
        check_hash_wire(bad)
    assert not verify_password(bad, "s3cret")


def test_other_parameters_within_bounds_verify():
    import hashlib
    w = {**WIRE, "n": 2**10, "r": 4, "p": 2}
    w["hash"] = hashlib.scrypt(b"pw", salt=SALT, n=2**10, r=4, p=2, dklen=32)
    assert verify_password(w, "pw")


def test_hash_op_password():
    op = {"op": "user_add", "name": "u", "password": "pw", "no_password": False, "public_key": None}
    out = hash_op_password(op, salt=SALT)
    assert out["password"] == hash_password("pw", salt=SALT) and op["password"] == "pw"
    cp = hash_op_password({"op": "user_change_password", "name": "u", "password": "pw"}, salt=SALT)
    assert verify_password(cp["password"], "pw")
    nop = {"op": "user_add", "name": "u", "password": None, "no_password": True, "public_key": None}
    assert hash_op_password(nop) is nop
    rng = {"op": "range", "key": b"k"}
    assert hash_op_password(rng) is rng
