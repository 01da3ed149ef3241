"""The client's pure protocol core (protocol/client/core.py, calls.py) on a fake clock:
failover order, per-attempt deadlines, writes never re-sent, too_many_requests, the
client-wide backoff and its request-rate bound, the token retry policy, auto-sync's
endpoint list."""
from __future__ import annotations

import heapq
import itertools
import random

import pytest

from protocol import errors
from protocol.client import calls
from protocol.client.core import (
    BUSY_BACKOFF_S, Backoff, Failover, Reauth, endpoints_from_members, reachable,
)
from protocol.client.types import Member

EPS = ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
OK = {"ok": True, "id": 1, "header": {}}


def refusal(code: str = "no_leader", **details) -> dict:
    return {"ok": False, "id": 1, "error": {"code": code, "message": code, **details}}


def failover(write: bool = False, *, timeout: float = 6.0, eps=EPS, preferred: int = 0,
             backoff: Backoff | None = None, failed: list | None = None) -> Failover:
    return Failover(eps, preferred, write=write, now=0.0, timeout=timeout,
                    backoff=backoff or Backoff(rng=lambda: 0.0),
                    fail_over=(failed.append if failed is not None else None), rng=lambda: 0.0)


# -- endpoints ---------------------------------------------------------------------------------
def test_reachable_rewrites_wildcard_hosts_only():
    assert reachable("tcp://0.0.0.0:7380", "tcp://10.0.0.5:7379") == "tcp://10.0.0.5:7380"
    assert reachable("tcp://*:7380", "tcp://h:7379") == "tcp://h:7380"
    assert reachable("tcp://[::]:7380", "tcp://h:7379") == "tcp://h:7380"
    assert reachable("tcp://1.2.3.4:7380", "tcp://h:7379") == "tcp://1.2.3.4:7380"
    assert reachable("tcp://0.0.0.0:7380", "ipc:///tmp/x") == "tcp://0.0.0.0:7380"


def member(name: str, urls: list[str], learner: bool = False) -> Member:
    return Member(id=1, name=name, peer_urls=[], client_urls=urls, watch_urls=[], is_learner=learner)


def test_endpoints_from_members_is_clientv3_sync():
    members = [member("a", ["tcp://0.0.0.0:1"]), member("", ["tcp://unstarted:1"]),
               member("l", ["tcp://learner:1"], learner=True), member("b", ["b:2", "http://b:3"]),
               member("c", ["tcp://h:1", ""]), member("d", ["tcp://h:1"])]
    assert endpoints_from_members(members, "tcp://asked:9") == [
        "tcp://asked:1", "tcp://b:2", "tcp://b:3", "tcp://h:1"]
    assert endpoints_from_members([member("", ["tcp://x:1"])], "tcp://asked:9") == []


# -- one call -----------------------------------------------------------------------------------
def test_endpoint_order_and_attempt_deadlines():
    failed: list[str] = []
    fo = failover(preferred=1, failed=failed)
    a = fo.next(0.0)
    assert (a.endpoint, a.send_at, a.connect_deadline, a.reply_deadline) == ("tcp://b:1", 0.0, 2.0, 2.0)
    fo.not_connected()
    assert failed == ["tcp://b:1"]
    a = fo.next(2.0)
    assert a.endpoint == "tcp://c:1" and a.connect_deadline == 4.0  # half of what is left
    fo.sent()
    fo.no_reply()
    a = fo.next(4.0)
    assert a.endpoint == "tcp://a:1" and a.connect_deadline == 6.0
    assert fo.reply(OK, 4.1) is OK


def test_write_deadline_and_no_resend_after_sent():
    fo = failover(write=True)
    a = fo.next(0.0)
    assert a.connect_deadline == 2.0 and a.reply_deadline == 6.0  # a write waits for its reply
    fo.sent()
    with pytest.raises(errors.Timeout) as ei:
        fo.no_reply()
    assert ei.value.details["outcome_unknown"] is True


def test_write_not_connected_goes_on():
    fo = failover(write=True)
    fo.next(0.0)
    fo.not_connected("a reason")
    assert fo.next(2.0).endpoint == "tcp://b:1"
    fo.not_connected()
    fo.next(4.0)
    fo.not_connected()
    with pytest.raises(errors.Unavailable) as ei:
        fo.next(6.0)
    assert "could not connect to any endpoint" in ei.value.message and "a reason" in ei.value.message


def test_non_retryable_error_raises_at_once():
    fo = failover()
    fo.next(0.0)
    with pytest.raises(errors.Compacted):
        fo.reply(refusal("compacted"), 0.1)


def test_too_many_requests_same_member_after_growing_pause():
    fo = failover(write=True)
    a = fo.next(0.0)
    assert fo.reply(refusal("too_many_requests"), 0.0) is None
    b = fo.next(0.0)
    assert b.endpoint == a.endpoint and b.send_at == pytest.approx(BUSY_BACKOFF_S / 2)
    assert fo.reply(refusal("too_many_requests"), b.send_at) is None
    c = fo.next(b.send_at)
    assert c.endpoint == a.endpoint and c.send_at == pytest.approx(b.send_at + BUSY_BACKOFF_S)


def test_too_many_requests_past_deadline_raises_it():
    fo = failover(timeout=0.01)
    fo.next(0.0)
    with pytest.raises(errors.TooManyRequests):
        fo.reply(refusal("too_many_requests"), 0.0)


def test_too_many_requests_not_resent_without_time_for_its_reply():
    # timeout 1 s: a pause of 12.5 ms (jitter 0.5) after a refusal that took 0.4 s to come
    # back leaves 0.5875 s, under twice the round trip: raised now, not resent to time out
    # (for a write that would be an unknown outcome instead of a clean refusal).
    fo = failover(write=True, timeout=1.0)
    fo.next(0.0)
    with pytest.raises(errors.TooManyRequests):
        fo.reply(refusal("too_many_requests"), 0.4)
    # The same refusal after 0.1 s: 0.8875 s left, over 2 x 0.1 and 0.1 x 1 s: resent.
    fo = failover(write=True, timeout=1.0)
    fo.next(0.0)
    assert fo.reply(refusal("too_many_requests"), 0.1) is None
    # ... and a tenth of the timeout is the least left for a resend, however fast the reply:
    # an instant refusal at 0.9 s leaves 0.0875 s after its pause.
    fo = failover(write=True, timeout=1.0)
    fo.next(0.9)
    with pytest.raises(errors.TooManyRequests):
        fo.reply(refusal("too_many_requests"), 0.9)


def test_refused_everywhere_retried_until_deadline_then_raised():
    backoff = Backoff(rng=lambda: 1.0)
    fo = failover(timeout=2.0, backoff=backoff)
    now, sends = 0.0, []
    with pytest.raises(errors.NoLeader):
        while True:
            a = fo.next(now)
            if a is None:
                now = fo.deadline
                continue
            now = a.send_at
            sends.append((now, a.endpoint))
            assert fo.reply(refusal(), now) is None
    assert len(sends) > 3  # more than one round
    assert [e for _, e in sends[:4]] == EPS + EPS[:1]
    assert backoff.failures == len(sends)
    assert all(t < 2.0 for t, _ in sends)


def test_not_leader_with_hint_everywhere_raises_for_the_router():
    fo = failover(eps=EPS[:1])
    fo.next(0.0)
    with pytest.raises(errors.NotLeader):
        fo.reply(refusal("not_leader", leader_client_urls=["tcp://l:1"]), 0.0)


def test_token_refusal_is_the_callers():
    fo = failover()
    fo.next(0.0)
    with pytest.raises(errors.InvalidAuthToken):
        fo.reply(refusal("invalid_auth_token"), 0.0)


def test_deadline_before_next_send_raises_without_sending():
    backoff = Backoff(base=10.0, maximum=10.0, rng=lambda: 1.0)
    backoff.failures = 3
    backoff.reserve(0.0, 100.0, 3)  # another call took the slot at 0: the next is at 3.33
    fo = failover(timeout=1.0, backoff=backoff)
    assert fo.next(0.0) is None  # wait until the deadline
    with pytest.raises(errors.Unavailable) as ei:
        fo.next(1.0)
    assert "backing off" in ei.value.message and fo.attempts == 0


# -- the client-wide backoff --------------------------------------------------------------------
def test_backoff_starts_after_a_round_and_resets_on_success():
    b = Backoff(rng=lambda: 1.0)
    for _ in range(2):
        b.failed()
    assert b.reserve(5.0, 9.0, 3) == 5.0 and b.reserve(5.0, 9.0, 3) == 5.0  # no full round yet
    b.failed()
    assert b.reserve(5.0, 9.0, 3) == 5.0
    assert b.reserve(5.0, 9.0, 3) == pytest.approx(5.0 + 0.05 / 3)  # pause(1) spread over 3
    for _ in range(3 * 10):
        b.failed()
    assert b.cap(b.rounds(3)) == 1.0  # capped
    b.succeeded()
    assert b.failures == 0 and b.reserve(6.0, 9.0, 3) == 6.0


def simulate(n_eps: int, callers: int, duration: float, seed: int) -> tuple[Backoff, list[tuple[float, int]]]:
    """``callers`` threads/tasks each looping calls that every member refuses, on one
    client, on a fake clock: every send's (time, rounds failed when it was allowed)."""
    rng = random.Random(seed)
    backoff = Backoff(rng=rng.random)
    eps = [f"tcp://m{i}:1" for i in range(n_eps)]
    seq = itertools.count()

    def call(now: float) -> Failover:
        return Failover(eps, 0, write=False, now=now, timeout=3.0, backoff=backoff, rng=rng.random)

    # (time, tiebreak, the caller's call, the attempt it sleeps for or None, rounds failed
    # when its slot was reserved)
    queue: list = [(0.0, next(seq), call(0.0), None, 0) for _ in range(callers)]
    heapq.heapify(queue)
    sends: list[tuple[float, int]] = []
    while queue:
        now, _, fo, attempt, k = heapq.heappop(queue)
        if now > duration:
            break
        if attempt is None:
            k = backoff.rounds(n_eps)
            try:
                attempt = fo.next(now)
            except errors.QkvError:  # this call ended: the caller makes the next one at once
                heapq.heappush(queue, (now, next(seq), call(now), None, 0))
                continue
            if attempt is None:  # no slot before its deadline: waits it out
                heapq.heappush(queue, (fo.deadline, next(seq), fo, None, 0))
                continue
            if attempt.send_at > now:  # sleeps until its slot
                heapq.heappush(queue, (attempt.send_at, next(seq), fo, attempt, k))
                continue
        sends.append((now, k))
        fo.reply(refusal(), now)
        heapq.heappush(queue, (now + 0.001, next(seq), fo, None, 0))  # the refusal's round trip
    return backoff, sends


@pytest.mark.parametrize("n_eps,callers", [(1, 1), (3, 1), (3, 64), (5, 1000)])
def test_request_rate_bound(n_eps, callers):
    """Sends allowed after k failed rounds: at most n per 0.5 * min(backoff_max,
    base * 2**(k-1)) seconds, whatever the number of callers."""
    backoff, sends = simulate(n_eps, callers, duration=20.0, seed=n_eps * 1000 + callers)
    assert len(sends) > 10
    times = [t for t, _ in sends]
    for i, (t, k) in enumerate(sends):
        if k < 1:
            continue
        window = 0.5 * backoff.cap(k)
        in_window = sum(1 for u in times[i:i + n_eps + 2] if u < t + window)
        assert in_window <= n_eps, (i, t, k, window)
    # With the defaults, after 6 failed rounds: at most 2n sends in any second.
    late = [t for t, k in sends if k >= 6]
    for i, t in enumerate(late):
        assert sum(1 for u in late[i:i + 2 * n_eps + 2] if u < t + 1.0) <= 2 * n_eps


# -- tokens ---------------------------------------------------------------------------------------
def test_reauth_once_per_kind():
    r = Reauth()
    assert r.again(errors.InvalidAuthToken())
    assert not r.again(errors.UserEmpty())  # same kind: a bad token
    assert r.again(errors.AuthOldRevision())
    assert not r.again(errors.AuthOldRevision())
    assert not Reauth().again(errors.NoLeader())


# -- calls ---------------------------------------------------------------------------------------
def test_calls_build_requests_and_parse_replies():
    c = calls.put("k", "v", lease=7)
    assert c.write and c.req == {"op": "put", "key": b"k", "value": b"v", "lease": 7}
    g = calls.get_prefix("p", limit=2)
    assert not g.write and g.req["range_end"] == b"q" and g.req["limit"] == 2
    d = calls.delete_prefix("p", prev_kv=True)
    assert d.write and d.req["range_end"] == b"q" and d.req["prev_kv"] is True
    p = calls.put_if_not_exists("k", "v")
    assert p.write and p.req["compare"] == [
        {"target": "CREATE", "result": "EQUAL", "key": b"k", "create_revision": 0}]
    assert p.parse({"ok": True, "succeeded": False, "responses": []}) is False
    r = calls.replace("k", "old", "new")
    assert r.req["compare"][0]["value"] == b"old" and r.req["success"][0]["put"]["value"] == b"new"
    assert not calls.txn([], [], []).write
    assert not calls.request({"op": "lease_leases", "id": 5}).write
    assert calls.request({"op": "lease_leases", "id": 5}).req == {"op": "lease_leases"}
    assert calls.request({"op": "snapshot"}).write is False
    assert calls.request({"op": "lease_grant", "ttl": 5}).write is True
    with pytest.raises(ValueError):
        calls.request({"no": "op"})
