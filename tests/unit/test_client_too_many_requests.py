"""The client library and `too_many_requests` (SPEC section 1 "Per-connection limits"):
the request did nothing, so it is sent again to the same member after a short pause."""
from __future__ import annotations

import threading

import pytest

from protocol import errors


def _clear_after(srv, n: int) -> None:
    """Let the fake refuse until it has seen `n` requests, then answer normally."""
    def watch() -> None:
        while srv.ops_received("put") + srv.ops_received("range") < n:
            threading.Event().wait(0.005)
        srv.error_code = None

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.parametrize("write", [False, True])
def test_too_many_requests_is_retried_on_the_same_member(srv, write, make_client):
    srv.error_code = "too_many_requests"
    _clear_after(srv, 3)
    with make_client([srv.endpoint], timeout=5.0) as c:
        if write:
            assert c.put("k", "v").header.revision == 2
            assert srv.store.kv[b"k"]["value"] == b"v"
            assert srv.ops_received("put") >= 3
        else:
            assert c.get("k").count == 0
            assert srv.ops_received("range") >= 3


def test_too_many_requests_until_the_deadline_raises_it(srv, make_client):
    srv.error_code = "too_many_requests"
    with make_client([srv.endpoint], timeout=0.5) as c:
        with pytest.raises(errors.TooManyRequests):
            c.put("k", "v")
    assert srv.ops_received("put") >= 3  # paused and tried again, not once
    assert b"k" not in srv.store.kv
