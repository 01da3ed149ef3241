"""SPEC section 3 `history`, as a client written from SPEC alone meets it: the bounds of
`limit_revisions` (refused above 10,000, never lowered in silence) and of the revision
window, checked where every request is validated (protocol/requests.py)."""
from __future__ import annotations

import pytest

from actors.storage.mvcc import store
from protocol import errors
from protocol.requests import HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, Limits, normalize_request


def history(**fields):
    return normalize_request({"op": "history", "key": b"a", **fields}, Limits())


@pytest.mark.parametrize("limit", [0, 1, 1_000, 10_000])
def test_limit_revisions_up_to_10000_is_taken_as_is(limit):
    assert history(limit_revisions=limit)["limit_revisions"] == limit


@pytest.mark.parametrize("limit", [10_001, 2**31, 2**63 - 1])
def test_limit_revisions_above_10000_is_refused_not_lowered(limit):
    with pytest.raises(errors.InvalidArgument) as exc:
        history(limit_revisions=limit)
    assert exc.value.code == "invalid_argument"
    assert "limit_revisions must be at most 10000" in exc.value.message
    assert str(limit) in exc.value.message


def test_negative_limit_revisions_is_refused():
    with pytest.raises(errors.InvalidArgument):
        history(limit_revisions=-1)


def test_the_store_pages_with_the_bounds_the_gateway_checks():
    # storage keeps its own copy of the bounds (it serves the watch broadcaster's
    # history reads too): they must be the ones SPEC and the gateway state
    assert (store.HISTORY_LIMIT_DEFAULT, store.HISTORY_LIMIT_MAX) == (HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)
    assert (HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX) == (1_000, 10_000)


def test_start_after_end_is_refused_but_end_zero_means_current():
    with pytest.raises(errors.InvalidArgument, match="start_revision is after end_revision"):
        history(start_revision=5, end_revision=4)
    assert history(start_revision=5, end_revision=0)["end_revision"] == 0
    assert history(start_revision=5, end_revision=5)["start_revision"] == 5


def test_history_needs_a_key():
    with pytest.raises(errors.KeyNotProvided):
        normalize_request({"op": "history"}, Limits())
