"""The multiplexed watch (protocol/client/watch.py, watchcore.py) against the fake
gateway's watch PUB (tests/fakeserver.py): one SUB socket per endpoint per client, shared
by all its watchers, each with its own D and bounded inbox; failover and cancel of one
watcher leave the others; the pure WatchState against forged frames and replies."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import msgpack
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import FakeServer, FakeStore  # noqa: E402
from nodeproc import wait_for  # noqa: E402
from protocol.client import Client  # noqa: E402
from protocol.client import aio_watch as AW  # noqa: E402
from protocol.client.aio import AsyncClient  # noqa: E402
from protocol.client import watch as W  # noqa: E402
from protocol.client import watchcore as WC  # noqa: E402
from protocol.errors import Internal, QkvError, Timeout  # noqa: E402


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def drain(w, until_rev: int, timeout: float = 10.0) -> list[tuple[int, list[bytes]]]:
    """Responses of ``w`` (revision, keys) until one at ``until_rev`` or later."""
    out: list[tuple[int, list[bytes]]] = []
    deadline = time.monotonic() + timeout
    while not out or out[-1][0] < until_rev:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out at {out[-1:] or 'nothing'} waiting for {until_rev}"
        resp = w.get(timeout=left)
        if resp is not None and resp.events:
            out.append((resp.revision, [e.kv.key for e in resp.events]))
    return out


def assert_gap_free(got: list[tuple[int, list[bytes]]], expected: list[tuple[int, list[bytes]]]) -> None:
    revs = [r for r, _ in got]
    assert revs == sorted(set(revs)), "duplicate or out of order"
    assert got == expected


# --- one SUB per endpoint ----------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds through /proc")
def test_1000_watchers_share_one_sub_and_each_sees_its_own_key(srv, client):
    fds = open_fds()
    watchers = [client.watch(f"k/{i:04d}") for i in range(1000)]
    try:
        assert W.hub_count(client) == 1
        # 1 SUB + its wake pair + the hub's client: not 1,000 sockets
        assert open_fds() - fds < 60, open_fds() - fds
        wait_for(lambda: len(srv.channels) == 1000, 10, "1,000 subscriptions")
        revs = {i: client.put(f"k/{i:04d}", "v").header.revision for i in range(1000)}
        for i, w in enumerate(watchers):
            assert drain(w, revs[i]) == [(revs[i], [f"k/{i:04d}".encode()])]
        for w in watchers[:500]:
            w.cancel()
        assert W.hub_count(client) == 1
        wait_for(lambda: len(srv.channels) == 500, 10, "unsubscribed")
        rev = client.put("k/0999", "again").header.revision
        assert drain(watchers[999], rev) == [(rev, [b"k/0999"])]
    finally:
        for w in watchers:
            w.cancel()
    assert W.hub_count(client) == 0  # the last watcher out closed the hub
    wait_for(lambda: not srv.channels, 10, "every subscription gone")
    wait_for(lambda: open_fds() - fds < 10, 10, "the hub's sockets closed")


def test_one_hub_per_endpoint_and_per_client(srv):
    with Client([srv.endpoint]) as a, Client([srv.endpoint]) as b:
        wa = [a.watch("x", prefix=True) for _ in range(3)]
        wb = b.watch("x", prefix=True)
        assert (W.hub_count(a), W.hub_count(b)) == (1, 1)
        rev = a.put("x1", "v").header.revision
        for w in wa + [wb]:
            assert drain(w, rev) == [(rev, [b"x1"])]
            w.cancel()


# --- each watcher its own D --------------------------------------------------------------
def test_watchers_of_one_topic_at_different_revisions(srv, client):
    first = client.put("t", "1").header.revision
    client.put("t", "2")
    old = client.watch("t", start_revision=first)  # from history, then live
    new = client.watch("t")                         # from now
    r3 = client.put("t", "3").header.revision
    assert [r for r, _ in drain(old, r3)] == [first, first + 1, r3]
    assert [r for r, _ in drain(new, r3)] == [r3]
    topic = W.watch_topic(b"t")
    assert srv.channels == {topic}
    old.cancel()  # the other watcher of the topic keeps it
    r4 = client.put("t", "4").header.revision
    assert [r for r, _ in drain(new, r4)] == [r4]
    assert srv.channels == {topic}
    new.cancel()
    wait_for(lambda: not srv.channels, 5, "the last unsubscribe went upstream")


def test_cancel_of_one_watcher_does_not_disturb_the_others(srv, client):
    a, b, c = client.watch("p/", prefix=True), client.watch("p/", prefix=True), client.watch("q")
    got_b: list = []
    done = threading.Event()

    def on(resp):
        if resp.events:
            got_b.append(resp.revision)
            if len(got_b) == 20:
                done.set()

    b.start(on)
    revs = []
    for i in range(20):
        revs.append(client.put(f"p/{i}", "v").header.revision)
        if i == 5:
            a.cancel()  # from another thread than b's, while b delivers
    rq = client.put("q", "v").header.revision
    assert done.wait(10) and got_b == revs
    assert drain(c, rq) == [(rq, [b"q"])]
    with pytest.raises(StopIteration):
        a.get(timeout=1)
    b.cancel()
    c.cancel()


# --- a slow watcher's bounded inbox ----------------------------------------------------
def test_slow_watcher_overflow_is_filled_from_history(srv, client):
    slow = client.watch("s/", prefix=True, rcvhwm=5)
    fast = client.watch("s/", prefix=True)
    assert slow.get(timeout=0.2) is None and slow.catchups == 1  # caught up, now live
    expected = []
    for i in range(300):
        rev = client.put(f"s/{i % 7}", str(i)).header.revision
        expected.append((rev, [f"s/{i % 7}".encode()]))
    assert_gap_free(drain(fast, expected[-1][0]), expected)
    wait_for(lambda: slow._inbox.dropped > 0, 10, "the small inbox to overflow")
    assert len(slow._inbox.frames) <= 5  # bounded, whatever was published
    assert_gap_free(drain(slow, expected[-1][0]), expected)
    assert slow.catchups >= 2  # the first read, and the hole of the overflow
    slow.cancel()
    fast.cancel()


# --- failover ---------------------------------------------------------------------------
@pytest.fixture
def client(srv):
    """The threaded Client: this file tests each client's hub directly (the asyncio tests
    below make their own AsyncClient), so the suite-wide two-kind ``client`` is not used."""
    c = Client([srv.endpoint], timeout=3.0)
    yield c
    c.close()


@pytest.fixture
def pair():
    store = FakeStore()
    with FakeServer(store=store) as s0, FakeServer(store=store) as s1:
        yield s0, s1


def test_failover_of_one_watcher_leaves_the_others(pair, monkeypatch):
    s0, s1 = pair
    with Client([s0.endpoint, s1.endpoint], timeout=3) as c:
        movers = [c.watch("f/", prefix=True, start_revision=1) for _ in range(2)]
        stayer = c.watch("f/", prefix=True, start_revision=1)
        expected = [(c.put(f"f/{i}", "v").header.revision, [f"f/{i}".encode()]) for i in range(5)]
        for w in movers + [stayer]:
            assert_gap_free(drain(w, expected[-1][0]), expected)
        movers[0]._fail_over()  # as after a silence: to the next endpoint, from D+1
        assert movers[0].resumes == 1 and W.hub_count(c) == 2
        assert movers[0]._hub.endpoint == s1.endpoint
        assert stayer._hub.endpoint == movers[1]._hub.endpoint == s0.endpoint
        more = [(c.put(f"f/{i}", "w").header.revision, [f"f/{i}".encode()]) for i in range(5, 10)]
        for w in movers + [stayer]:
            assert_gap_free(drain(w, more[-1][0]), more)
        # the member of the others goes silent: they probe, then follow to the other
        monkeypatch.setattr(WC, "SILENCE_S", 3.0)  # > the 2 s heartbeat
        monkeypatch.setattr(WC, "PROBE_S", 1.0)
        s0.stop()
        with Client([s1.endpoint], timeout=3) as writer:  # (c's next put could still go to
            # s0 before its connection is seen gone: a write whose outcome is unknown)
            last = [(writer.put(f"f/{i}", "x").header.revision, [f"f/{i}".encode()]) for i in range(10, 15)]
        for w in movers + [stayer]:
            assert_gap_free(drain(w, last[-1][0], timeout=20), last)
        # (a loaded machine may delay a heartbeat past a probe: a healthy watcher that moves
        # too is still gap-free, so only "at least" is asserted)
        assert stayer.resumes >= 1 and movers[1].resumes >= 1 and movers[0].resumes >= 1
        assert W.hub_count(c) == 1
        for w in movers + [stayer]:
            w.cancel()
        assert W.hub_count(c) == 0


def test_closing_the_client_ends_its_watchers(srv):
    c = Client([srv.endpoint])
    ws = [c.watch("z", prefix=True) for _ in range(3)]
    got: list = []
    ws[0].start(got.append)
    c.close()
    W.close_hubs(c)  # what Client.close does (idempotent with the hub noticing by itself)
    for w in ws[1:]:
        with pytest.raises(StopIteration):
            w.get(timeout=5)
    wait_for(lambda: not ws[0]._thread.is_alive(), 5, "the callback thread to end")
    assert W.hub_count(c) == 0


def test_watch_once(srv, client):
    result: list = []
    t = threading.Thread(target=lambda: result.append(client.watch_once("once", timeout=5)))
    t.start()
    wait_for(lambda: W.watch_topic(b"once") in srv.channels, 5, "subscribed")
    client.put("once", "1")
    client.put("once", "2")
    t.join(10)
    assert result and result[0].kv.value == b"1"
    wait_for(lambda: not srv.channels, 5, "canceled after the first event")
    with pytest.raises(Timeout):
        client.watch_once("never", timeout=0.3)


# --- the pure state against forged input -----------------------------------------------------
def frame(st: WC.WatchState, body: object) -> list[bytes]:
    return [st.topic, b"\x01" + msgpack.packb(body)]


@pytest.mark.parametrize("payload", [
    b"\x01\xc1",                                   # not msgpack
    b"\x01" + msgpack.packb([1, 2]),              # not a map
    b"\x01" + msgpack.packb({"revision": "x"}),   # not a revision
    b"\x01" + msgpack.packb({"revision": 11, "prev_revision": 10, "events": 3}),
    b"\x01" + msgpack.packb({"revision": 11, "prev_revision": 10, "events": [{"type": "PUT"}]}),
    b"\x01" + msgpack.packb({"progress_revision": -4, "last_event_revision": 1}),
])
def test_a_forged_live_frame_is_a_hole_not_a_crash(payload):
    st = WC.WatchState(b"k", b"")
    st.delivered, st.need_catchup = 10, False
    st.on_message([st.topic, payload], 0.0)
    assert st.need_catchup and st.malformed == 1 and not st.ready and st.delivered == 10


@pytest.mark.parametrize("reply", [
    {}, {"revisions": 5, "last_revision": 3}, {"revisions": [7], "last_revision": 3},
    {"revisions": [{"revision": 12, "events": [{"kv": {}}]}], "last_revision": 12},
    {"revisions": [], "last_revision": "x"},
])
def test_a_forged_history_reply_raises_internal(reply):
    st = WC.WatchState(b"k", b"")
    st.delivered = 10
    with pytest.raises(Internal, match="malformed history reply"):
        st.on_history(reply)
    assert st.delivered == 10 and not st.ready
    assert st.history_failed(Internal("x")) == WC.HIST_FAILOVER


def test_state_silence_probe_failover_and_compaction():
    st = WC.WatchState(b"k", b"")
    st.attached(WC.ResponseHeader(1, 2, 0, 3), now=100.0)
    assert st.idle(100.0 + WC.SILENCE_S / 2) == WC.IDLE_WAIT
    assert st.idle(101.0 + WC.SILENCE_S) == WC.IDLE_PROBE and st.take_resubscribe()
    assert st.idle(101.0 + WC.SILENCE_S + WC.PROBE_S / 2) == WC.IDLE_WAIT
    assert st.idle(102.0 + WC.SILENCE_S + WC.PROBE_S) == WC.IDLE_FAILOVER
    covering = WC.WatchState(b"k" * 300, b"", auth=True)  # refused covering channel: history
    covering.attached(WC.ResponseHeader(), now=0.0)
    covering.need_catchup = False
    covering.idle(WC.SILENCE_S + 1)
    assert covering.idle(WC.SILENCE_S + WC.PROBE_S + 2) == WC.IDLE_CATCH_UP and covering.need_catchup
    err = QkvError.from_wire({"code": "compacted", "message": "gone", "compact_revision": 9})
    assert st.history_failed(err) == WC.HIST_ENDED and st.done
    assert st.ready[-1].canceled


# --- the asyncio watcher (protocol/client/aio_watch.py) -------------------------------------
def arun(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def adrain(w, until_rev: int, timeout: float = 10.0) -> list[tuple[int, list[bytes]]]:
    out: list[tuple[int, list[bytes]]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not out or out[-1][0] < until_rev:
        left = deadline - loop.time()
        assert left > 0, f"timed out at {out[-1:] or 'nothing'} waiting for {until_rev}"
        resp = await w.get(timeout=left)
        if resp is not None and resp.events:
            out.append((resp.revision, [e.kv.key for e in resp.events]))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds through /proc")
def test_async_1000_watchers_share_one_sub(srv):
    async def main():
        async with AsyncClient([srv.endpoint], timeout=3) as c:
            await c.put("warm", "up")
            fds = open_fds()
            watchers = [await c.watch(f"k/{i:04d}") for i in range(1000)]
            assert AW.hub_count(c) == 1
            assert open_fds() - fds < 60, open_fds() - fds
            revs = {i: (await c.put(f"k/{i:04d}", "v")).header.revision for i in range(1000)}
            for i, w in enumerate(watchers):
                assert await adrain(w, revs[i]) == [(revs[i], [f"k/{i:04d}".encode()])]
            for w in watchers[:999]:
                w.cancel()
            assert AW.hub_count(c) == 1
            await watchers[999].aclose()
            assert AW.hub_count(c) == 0
        wait_for(lambda: not srv.channels, 10, "every subscription gone")

    arun(main())


def test_async_same_topic_different_revisions_cancel_and_overflow(srv):
    async def main():
        async with AsyncClient([srv.endpoint], timeout=3) as c:
            first = (await c.put("t", "1")).header.revision
            old = await c.watch("t", start_revision=first)
            new = c.watch("t")
            slow = c.watch("t", rcvhwm=3)
            async with new, slow:
                assert await slow.get(timeout=0.1) is None  # attached and caught up
                expected = [(first, [b"t"])]
                for i in range(60):
                    expected.append(((await c.put("t", str(i))).header.revision, [b"t"]))
                last = expected[-1][0]
                assert_gap_free(await adrain(old, last), expected)
                assert_gap_free(await adrain(new, last), expected[1:])
                assert slow._inbox.dropped > 0 and len(slow._inbox.frames) <= 3
                assert_gap_free(await adrain(slow, last), expected[1:])
                assert slow.catchups >= 2
                old.cancel()  # the others keep the topic
                with pytest.raises(StopAsyncIteration):
                    await old.get(timeout=1)
                r = (await c.put("t", "x")).header.revision
                assert await adrain(new, r) == [(r, [b"t"])]
                assert srv.channels == {W.watch_topic(b"t")}
            assert AW.hub_count(c) == 0

    arun(main())


def test_async_failover_iteration_callback_and_watch_once(pair, monkeypatch):
    s0, s1 = pair
    monkeypatch.setattr(WC, "SILENCE_S", 3.0)  # > the 2 s heartbeat
    monkeypatch.setattr(WC, "PROBE_S", 1.0)

    async def main():
        async with AsyncClient([s0.endpoint, s1.endpoint], timeout=3) as c, \
                AsyncClient([s1.endpoint], timeout=3) as w1:
            seen: list[int] = []
            got = asyncio.Event()

            async def on(resp):
                seen.extend(resp.revision for _ in resp.events)
                if len(seen) == 10:
                    got.set()

            cb = c.watch("f/", prefix=True, start_revision=1).start(on)
            mover = await c.watch("f/", prefix=True, start_revision=1)
            stayer = await c.watch("f/", prefix=True, start_revision=1)
            revs = [(await c.put(f"f/{i}", "v")).header.revision for i in range(5)]
            async for resp in stayer:  # async for
                if resp.revision == revs[-1]:
                    break
            await mover._fail_over()
            assert mover._hub.endpoint == s1.endpoint and stayer._hub.endpoint == s0.endpoint
            assert AW.hub_count(c) == 2
            s0.stop()  # the others probe, then follow
            # Writes after the stop go through s1 alone (w1): c may send one to s0 before it
            # sees the connection drop, and a write sent without a reply is an unknown outcome.
            revs += [(await w1.put(f"f/{i}", "w")).header.revision for i in range(5, 10)]
            await asyncio.wait_for(got.wait(), 20)
            assert seen == revs
            assert [r for r, _ in await adrain(mover, revs[-1], timeout=20)] == revs
            assert [r for r, _ in await adrain(stayer, revs[-1], timeout=20)] == revs[5:]
            assert AW.hub_count(c) == 1
            assert stayer.resumes >= 1
            await cb.aclose()
            task = asyncio.create_task(c.watch_once("once", timeout=10))
            while W.watch_topic(b"once") not in s1.channels:  # subscribed (from now)
                await asyncio.sleep(0.01)
            await w1.put("once", "1")
            assert (await task).kv.value == b"1"
            with pytest.raises(Timeout):
                await c.watch_once("never", timeout=0.3)
            for w in (mover, stayer):
                await w.aclose()
            assert AW.hub_count(c) == 0

    arun(main())


def test_async_client_close_ends_watchers(srv):
    async def main():
        c = AsyncClient([srv.endpoint], timeout=3)
        w = await c.watch("z")
        await c.close()
        with pytest.raises(StopAsyncIteration):
            await w.get(timeout=5)
        assert AW.hub_count(c) == 0

    arun(main())


def test_async_watch_under_auth_and_curve():
    from test_client_auth import setup_users

    from protocol import errors

    async def main(srv):
        async with AsyncClient([srv.endpoint], timeout=3, server_key=srv.server_key, user="eve",
                               password="evepw") as c:
            with pytest.raises(errors.PermissionDenied):
                await c.watch("/a/", prefix=True)
            async with c.watch("/e/", prefix=True) as w:
                await c.put("/e/1", "x")
                assert await adrain(w, 0) and w.delivered >= 1
                srv.forget_tokens()
                r = (await c.put("/e/2", "y")).header.revision
                assert await adrain(w, r) == [(r, [b"/e/2"])]
        histories = [q for q in srv.requests if q["op"] == "history"]
        assert histories and all(q.get("token") for q in histories)

    with FakeServer(curve=True) as srv:
        setup_users(srv)
        arun(main(srv))


def test_a_watcher_dropped_without_cancel_lets_go_of_its_subscription(srv, client):
    import gc

    keep = client.watch("kept")
    w = client.watch("dropped")
    wait_for(lambda: len(srv.channels) == 2, 5, "two subscriptions")
    del w
    gc.collect()
    wait_for(lambda: srv.channels == {W.watch_topic(b"kept")}, 5, "the dropped one unsubscribed")
    assert W.hub_count(client) == 1
    del keep
    gc.collect()
    assert W.hub_count(client) == 0


# --- at most max_watch_subscriptions distinct topics per hub --------------------------------
# A node grants one connection --max-watch-subscriptions topics (SPEC section 5 "Bounds"),
# refuses the rest and closes a connection holding too many refused ones: past the client's
# max_watch_subscriptions a watcher of a new topic opens another hub on that endpoint.
class _FakeHub:
    def __init__(self, endpoint: str) -> None:
        self.endpoint, self.stopping = endpoint, False
        self.topics: dict[bytes, int] = {}


def _attach(hubs: dict, endpoint: str, topic: bytes, limit: int) -> _FakeHub:
    return WC.hub_use(hubs, endpoint, topic, limit) or WC.hub_install(hubs, _FakeHub(endpoint), topic, limit)


def test_hub_table_holds_at_most_limit_distinct_topics_per_hub():
    hubs: dict = {}
    got = [_attach(hubs, "e", b"t%d" % i, 3) for i in range(7)]
    assert len(hubs["e"]) == 3 and [len(h.topics) for h in hubs["e"]] == [3, 3, 1]
    assert got[0] is got[2] and got[3] is got[5] and got[6] is hubs["e"][2]
    # a watcher of a topic a hub already has shares it (not counted again), even a full hub
    assert _attach(hubs, "e", b"t0", 3) is got[0] and got[0].topics[b"t0"] == 2
    assert _attach(hubs, "e", b"t5", 3) is got[3]
    assert _attach(hubs, "other", b"t0", 3) is not got[0]  # per endpoint
    # releasing: one of two t0 watchers keeps the room taken; the last one frees it
    assert not WC.hub_release(hubs, got[0], b"t0") and len(got[0].topics) == 3
    assert not WC.hub_release(hubs, got[0], b"t0") and len(got[0].topics) == 2
    assert _attach(hubs, "e", b"new", 3) is got[0] and len(hubs["e"]) == 3
    # a hub racing another one made meanwhile: hub_install hands back the one that fits
    made = _FakeHub("e")
    assert WC.hub_install(hubs, made, b"t6", 3) is got[6] and made not in hubs["e"]
    # a stopping hub is skipped; a hub's last use takes it out of the table
    got[6].stopping = True
    assert _attach(hubs, "e", b"t6", 3) not in (got[6], got[0], got[3])
    assert not WC.hub_release(hubs, got[6], b"t6") and WC.hub_release(hubs, got[6], b"t6")
    assert got[6] not in hubs["e"] and len(hubs["e"]) == 3


def _hub_topics(table: dict, endpoint: str) -> list[int]:
    return sorted(len(h.topics) for h in table.get(endpoint, ()) if not h.stopping)


def test_watchers_past_max_watch_subscriptions_open_another_hub(srv):
    with pytest.raises(ValueError):
        Client([srv.endpoint], max_watch_subscriptions=0)
    with Client([srv.endpoint], timeout=3, max_watch_subscriptions=3) as c:
        assert c._derive([srv.endpoint], 1).max_watch_subscriptions == 3
        ws = {i: c.watch(f"m/{i}") for i in range(7)}
        assert W.hub_count(c) == 3 and _hub_topics(W._hubs(c), srv.endpoint) == [1, 3, 3]
        twins = [c.watch("m/0"), c.watch("m/6")]  # topics held already: no new hub
        assert W.hub_count(c) == 3 and _hub_topics(W._hubs(c), srv.endpoint) == [1, 3, 3]
        wait_for(lambda: len(srv.channels) == 7, 5, "7 subscriptions")
        revs = {i: c.put(f"m/{i}", "v").header.revision for i in range(7)}
        for i, w in ws.items():
            assert drain(w, revs[i]) == [(revs[i], [f"m/{i}".encode()])]
        for w, i in zip(twins, (0, 6)):
            assert drain(w, revs[i]) == [(revs[i], [f"m/{i}".encode()])]
        ws.pop(1).cancel()  # frees room on a full hub: the next new topic goes there
        ws[7] = c.watch("m/7")
        assert W.hub_count(c) == 3 and _hub_topics(W._hubs(c), srv.endpoint) == [1, 3, 3]
        r = c.put("m/7", "v").header.revision
        assert drain(ws[7], r) == [(r, [b"m/7"])]
        for w in list(ws.values()) + twins:
            w.cancel()
        assert W.hub_count(c) == 0
    wait_for(lambda: not srv.channels, 5, "every subscription gone")


def test_async_watchers_past_max_watch_subscriptions_open_another_hub(srv):
    async def main():
        with pytest.raises(ValueError):
            AsyncClient([srv.endpoint], max_watch_subscriptions=0)
        async with AsyncClient([srv.endpoint], timeout=3, max_watch_subscriptions=3) as c:
            assert c._derive([srv.endpoint], 1).max_watch_subscriptions == 3
            ws = {i: await c.watch(f"m/{i}") for i in range(7)}
            assert AW.hub_count(c) == 3 and _hub_topics(AW._hubs(c), srv.endpoint) == [1, 3, 3]
            twins = [await c.watch("m/0"), await c.watch("m/6")]
            assert AW.hub_count(c) == 3 and _hub_topics(AW._hubs(c), srv.endpoint) == [1, 3, 3]
            revs = {i: (await c.put(f"m/{i}", "v")).header.revision for i in range(7)}
            for i, w in ws.items():
                assert await adrain(w, revs[i]) == [(revs[i], [f"m/{i}".encode()])]
            for w, i in zip(twins, (0, 6)):
                assert await adrain(w, revs[i]) == [(revs[i], [f"m/{i}".encode()])]
            ws.pop(1).cancel()
            ws[7] = await c.watch("m/7")
            assert AW.hub_count(c) == 3 and _hub_topics(AW._hubs(c), srv.endpoint) == [1, 3, 3]
            r = (await c.put("m/7", "v")).header.revision
            assert await adrain(ws[7], r) == [(r, [b"m/7"])]
            for w in list(ws.values()) + twins:
                await w.aclose()
            assert AW.hub_count(c) == 0
        wait_for(lambda: not srv.channels, 5, "every subscription gone")

    arun(main())
