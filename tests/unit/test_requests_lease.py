"""Validation of the lease ops (SPEC section 3, "Leases")."""
from __future__ import annotations

import pytest

from protocol.errors import InvalidArgument, UnknownOp
from protocol.requests import Limits, is_write, normalize_request

L = Limits()


def norm(req):
    return normalize_request(req, L)


def test_shapes():
    assert norm({"op": "lease_grant", "ttl": 5}) == {"op": "lease_grant", "ttl": 5, "id": 0}
    assert norm({"op": "lease_grant", "ttl": 5, "ID": 7}) == {"op": "lease_grant", "ttl": 5, "id": 7}
    assert norm({"op": "lease_grant"}) == {"op": "lease_grant", "ttl": 0, "id": 0}
    assert norm({"op": "lease_revoke", "ID": 7}) == {"op": "lease_revoke", "id": 7}
    assert norm({"op": "lease_keepalive", "ID": 7}) == {"op": "lease_keepalive", "id": 7}
    assert norm({"op": "lease_timetolive", "ID": 7}) == {"op": "lease_timetolive", "id": 7, "keys": False}
    assert norm({"op": "lease_timetolive", "ID": 7, "keys": True})["keys"] is True
    assert norm({"op": "lease_leases"}) == {"op": "lease_leases"}


def test_writes():
    assert is_write(norm({"op": "lease_grant", "ttl": 5}))
    assert is_write(norm({"op": "lease_revoke", "ID": 1}))
    for op in ("lease_keepalive", "lease_timetolive"):
        assert not is_write(norm({"op": op, "ID": 1}))
    assert not is_write(norm({"op": "lease_leases"}))


@pytest.mark.parametrize("req", [
    {"op": "lease_grant", "ttl": -1},
    {"op": "lease_grant", "ttl": 9_000_000_001},
    {"op": "lease_grant", "ttl": "5"},
    {"op": "lease_grant", "ttl": True},
    {"op": "lease_grant", "ttl": 5, "ID": -3},
    {"op": "lease_grant", "ttl": 5, "ID": 2**63},
    {"op": "lease_grant", "ttl": 5, "lease": 1},
    {"op": "lease_revoke"},
    {"op": "lease_revoke", "ID": 0},
    {"op": "lease_revoke", "ID": 1.5},
    {"op": "lease_keepalive", "ID": None},
    {"op": "lease_keepalive", "ID": 1, "ttl": 3},
    {"op": "lease_timetolive", "ID": 1, "keys": 1},
    {"op": "lease_leases", "ID": 1},
])
def test_invalid(req):
    with pytest.raises(InvalidArgument):
        norm(req)


@pytest.mark.parametrize("op", ["lease_expire", "lease_checkpoint"])
def test_internal_ops_are_refused(op):
    with pytest.raises(UnknownOp):
        norm({"op": op, "ID": 1, "id": 1, "checkpoints": [[1, 0]]})
