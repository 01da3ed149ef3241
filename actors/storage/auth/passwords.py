"""Password hashes: scrypt from the standard library, compared in constant time.

A hash travels (in user_add / user_change_password log entries and in the persisted
AuthState) as a msgpack-able map that records its parameters, so they can change later
without breaking the hashes already stored:

    {"alg": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": <16+ bytes>, "hash": <32 bytes>}

Parameters read from a wire map are bounded (``check_hash_wire``): a forged entry or state
cannot make a member spend gigabytes or minutes on one verification.

Pure apart from the salt: ``hash_password`` draws it from ``secrets`` unless the caller
gives one (tests do). ``apply_auth`` never hashes: the gateway hashes before it proposes.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from protocol.errors import InvalidArgument

ALG = "scrypt"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on what a wire map may ask for. 128 * n * r bytes of memory: 16 MiB for the
# defaults, at most 64 MiB; n * r * p bounds the time (at most 8x the defaults).
MAX_N = 2**16
MAX_R = 16
MAX_P = 4
MAX_WORK = 8 * SCRYPT_N * SCRYPT_R * SCRYPT_P
MAX_MEM = 128 * MAX_N * MAX_R // 2  # 64 MiB
SALT_MIN, SALT_MAX = 16, 64
HASH_MIN, HASH_MAX = 16, 64
_MAXMEM_ARG = MAX_MEM + 2 * 1024 * 1024  # hashlib's own bookkeeping on top


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The wire map of ``password``'s scrypt hash (n=2**14, r=8, p=1, 16-byte salt)."""
    if not isinstance(password, str):
        raise InvalidArgument("password: must be a string")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    wire: dict[str, Any] = {"alg": ALG, "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": bytes(salt), "hash": b""}
    check_hash_wire({**wire, "hash": b"\0" * HASH_BYTES})
    wire["hash"] = _scrypt(password, wire["salt"], SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return wire


def hash_op_password(op: dict, salt: bytes | None = None) -> dict:
    """The op to propose for a normalized ``user_add`` / ``user_change_password``: a copy
    whose ``password`` is its hash wire map (the plaintext never enters the log). Other ops,
    and ``user_add`` with ``no_password``, come back unchanged. Slow (scrypt): call it off
    the event loop."""
    if op.get("op") in ("user_add", "user_change_password") and isinstance(op.get("password"), str):
        return {**op, "password": hash_password(op["password"], salt)}
    return op


def verify_password(wire: Any, password: Any) -> bool:
    """True if ``password`` matches the hash ``wire``. A malformed or out-of-bounds wire map,
    or a password that is not a str, is a mismatch (never an exception)."""
    if not isinstance(password, str):
        return False
    try:
        w = check_hash_wire(wire)
        expected = w["hash"]
        got = _scrypt(password, w["salt"], w["n"], w["r"], w["p"], len(expected))
    except (InvalidArgument, ValueError, MemoryError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(got, expected)


def check_hash_wire(wire: Any) -> dict[str, Any]:
    """Validate a hash wire map (types, algorithm, parameter bounds); return a clean copy.
    Raises ``InvalidArgument``."""
    if not isinstance(wire, dict) or set(wire) != {"alg", "n", "r", "p", "salt", "hash"}:
        raise InvalidArgument("password hash: not a {alg, n, r, p, salt, hash} map")
    if wire["alg"] != ALG:
        raise InvalidArgument(f"password hash: unknown algorithm {wire['alg']!r:.40}")
    n, r, p = wire["n"], wire["r"], wire["p"]
    for name, v, hi in (("n", n, MAX_N), ("r", r, MAX_R), ("p", p, MAX_P)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise InvalidArgument(f"password hash: {name} out of bounds")
    if n < 2 or n & (n - 1):
        raise InvalidArgument("password hash: n must be a power of 2")
    if n * r * p > MAX_WORK or 128 * n * r > MAX_MEM:
        raise InvalidArgument("password hash: parameters too costly")
    salt, digest = wire["salt"], wire["hash"]
    if not isinstance(salt, bytes) or not SALT_MIN <= len(salt) <= SALT_MAX:
        raise InvalidArgument("password hash: bad salt")
    if not isinstance(digest, bytes) or not HASH_MIN <= len(digest) <= HASH_MAX:
        raise InvalidArgument("password hash: bad hash")
    return {"alg": ALG, "n": n, "r": r, "p": p, "salt": salt, "hash": digest}


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM_ARG,
                          dklen=dklen)
