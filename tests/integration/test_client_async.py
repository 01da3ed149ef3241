"""Issue 16's acceptance tests of the client library against real nodes: 1,000 asyncio
tasks through one AsyncClient, endpoint auto-sync surviving the removal of the only
endpoint a client was given, failover during an election sending a bounded number
of requests per second instead of spinning, and 2,500 watches of one client sharing three
SUB sockets, each gap-free on its own key. (The behavioural tests shared by both
clients are the existing ones, parametrized by ``client_kind``: tests/conftest.py.)"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict

from aioclient import SyncAsyncClient
from nodeproc import put_burst, wait_for
from test_watch_support import truth

from protocol import errors
from protocol.client import Client
from protocol.client.aio import AsyncClient
from tests.bench.bench_client import async_ordered


def test_1000_tasks_through_one_async_client_every_op_answered_in_order(node_factory):
    """1,000 concurrent tasks x 100 ops (put of its own key, then a get that must see
    it) through ONE AsyncClient. The threaded figure beside it: tests/bench/bench_client.py."""
    node = node_factory()
    tasks, ops = 1000, 100

    async def main() -> dict:
        async with AsyncClient([node.client_url], timeout=60) as c:
            return await async_ordered(c, tasks, ops)

    r = asyncio.run(main())
    assert r["ops"] == tasks * ops
    print(f"asyncio: {tasks} tasks x {ops} ops through one AsyncClient: {r['per_s']:.0f} ops/s "
          f"({r['ops']} ops in {r['seconds']:.1f} s)")


def _remove(c: Client, member_id: int) -> bool:
    try:
        c.member_remove(member_id)
        return True
    except (errors.UnhealthyCluster, errors.ConfChangeInProgress):
        return False


def test_auto_sync_keeps_a_client_working_after_its_only_endpoint_is_removed(cluster_factory):
    """Both clients are given ONE member of three, with auto-sync every 0.5 s: they learn
    the other two from member_list, and keep serving once their member is removed (and
    has stopped); the removed URL leaves their endpoint lists."""
    cluster = cluster_factory(3)
    leader = cluster.leader()
    given = next(n for n in cluster.nodes if n is not leader)
    everyone = {n.client_url for n in cluster.nodes}
    clients = {"thread": Client([given.client_url], timeout=5, auto_sync_interval=0.5),
               "asyncio": SyncAsyncClient([given.client_url], timeout=5, auto_sync_interval=0.5)}
    try:
        for kind, c in clients.items():
            c.put(f"sync/{kind}", "before")  # (an AsyncClient starts its auto-sync task on its loop)
            wait_for(lambda: set(c.endpoints) == everyone, 20, f"{kind}: the endpoints synced from member_list")
        with Client([n.client_url for n in cluster.nodes if n is not given], timeout=10) as admin:
            wait_for(lambda: _remove(admin, given.member_id), 20, "the member's removal", interval=0.2)
        wait_for(lambda: given.proc.poll() is not None, 20, "the removed member to stop")
        for kind, c in clients.items():
            for i in range(20):
                c.put(f"sync/{kind}", str(i))
                assert c.get(f"sync/{kind}").kvs[0].value == str(i).encode()
            wait_for(lambda: given.client_url not in c.endpoints and len(c.endpoints) == 2, 20,
                     f"{kind}: the removed member to leave the endpoint list")
            assert c.get(f"sync/{kind}").kvs[0].value == b"19"
    finally:
        for c in clients.values():
            c.close()


WORKERS = 8
DURATION_S = 5.0
# Above backoff_max: a call waits out the pauses within its deadline and sends again (a
# call whose deadline falls before the pause ends raises at once, sending nothing).
CALL_TIMEOUT_S = 2.0


def _bound(n: int, elapsed: float) -> int:
    """The client's bound (protocol/client/core.py): the backoff is the client's, shared by
    all its workers, so the first 6 failed rounds (6n sends, paced ever more slowly) are
    the warm-up, plus one send in flight per worker; from then on at most 2n requests per
    second (defaults: backoff_base 0.05, backoff_max 1.0); one more round of slack."""
    return 6 * n + WORKERS + int(2 * n * elapsed) + n


def test_failover_during_an_election_sends_a_bounded_number_of_requests(cluster_factory):
    """Every member cut off from the others: no leader anywhere, every member refuses
    writes with no_leader at once. Clients writing in a loop from 8 threads (tasks) for
    ~5 s send at most the bounded number of requests, instead of spinning."""
    cluster = cluster_factory(3)
    cluster.leader()
    urls = [n.client_url for n in cluster.nodes]
    cluster.partition(*([n] for n in cluster.nodes))

    def leaderless() -> bool:
        for n in cluster.nodes:
            st = n.request({"op": "status"}, timeout=1)
            if not st or not st.get("ok") or st.get("leader"):
                return False
        return True

    wait_for(leaderless, 30, "every member to lose its leader")
    counts = {}

    with Client(urls, timeout=CALL_TIMEOUT_S) as c:
        stop = threading.Event()
        calls = [0]

        def work(i: int) -> None:
            while not stop.is_set():
                calls[0] += 1
                try:
                    c.put(f"bound/{i}", "x")
                except errors.QkvError:
                    pass

        before = c.requests_sent
        ts = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        stop.wait(DURATION_S)
        stop.set()
        for t in ts:
            t.join()
        counts["thread"] = (c.requests_sent - before, time.monotonic() - t0, calls[0])

    async def run_async() -> tuple[int, float, int]:
        async with AsyncClient(urls, timeout=CALL_TIMEOUT_S) as c:
            loop = asyncio.get_running_loop()
            end = loop.time() + DURATION_S
            n_calls = 0

            async def work(i: int) -> None:
                nonlocal n_calls
                while loop.time() < end:
                    n_calls += 1
                    try:
                        await c.put(f"bound/{i}", "x")
                    except errors.QkvError:
                        pass

            before = c.requests_sent
            t0 = time.monotonic()
            await asyncio.gather(*(work(i) for i in range(WORKERS)))
            return c.requests_sent - before, time.monotonic() - t0, n_calls

    counts["asyncio"] = asyncio.run(run_async())
    for kind, (sent, elapsed, n_calls) in counts.items():
        print(f"{kind}: {sent} requests sent in {elapsed:.1f} s ({n_calls} calls from {WORKERS} workers; "
              f"bound {_bound(len(urls), elapsed)})")
    for kind, (sent, elapsed, _) in counts.items():
        assert 0 < sent <= _bound(len(urls), elapsed), (kind, sent)


N_WATCHES = 2500


def test_2500_watches_of_one_client_share_three_subs_and_each_sees_its_own_key(node_factory, make_client,
                                                                           client_kind):
    """One client (of each kind) holds 2,500 watches on distinct keys of a node with its
    default limits: 3 SUB sockets for its one endpoint (not 2,500: libzmq's 1,023 sockets per
    context), holding at most the 1,000 subscriptions a node grants one connection (SPEC
    section 5, "Bounds"; past them it refuses silently), and every watcher gets exactly its
    own key's events, in order, none missing."""
    from protocol.client import aio_watch, watch

    node = node_factory()
    c = make_client([node.client_url], timeout=30)
    fds = len(os.listdir("/proc/self/fd"))
    keys = [b"w5k/%06d" % (i + 1) for i in range(N_WATCHES)]  # put_burst's keys
    watchers = [c.watch(k) for k in keys]
    for w in watchers:  # attached and caught up before the puts (a first history read spanning
        assert w.get(timeout=0) is None  # all the puts would be 2,500 long scans)
    hubs = (aio_watch if client_kind == "asyncio" else watch).hub_count(getattr(c, "_obj", c))
    grown = len(os.listdir("/proc/self/fd")) - fds
    print(f"{client_kind}: {N_WATCHES} watches, {hubs} hub(s), {grown} more fds")
    assert hubs == -(-N_WATCHES // 1000) and grown < 100
    start = watchers[0].start_revision
    put_burst(node.client_url, N_WATCHES, b"w5k/")
    put_burst(node.client_url, N_WATCHES, b"w5k/")
    last = c.get("w5k/", prefix=True).header.revision
    expected: dict[bytes, list] = defaultdict(list)
    for rev, events in truth(node.request, b"w5k/", b"w5k0", start, last):
        assert len(events) == 1
        expected[events[0][1]].append((rev, events))
    assert len(expected) == N_WATCHES and all(len(v) == 2 for v in expected.values())
    deadline = time.monotonic() + 60
    for key, w in zip(keys, watchers):
        got = []
        while len(got) < 2:
            resp = w.get(timeout=max(0.0, deadline - time.monotonic()))
            assert resp is not None, f"{key!r}: {len(got)} of 2 events delivered"
            got.append((resp.revision, [(e.type, e.kv.key, e.kv.mod_revision) for e in resp.events]))
        assert got == expected[key], key
    for w in watchers:
        assert w.get(timeout=0) is None  # nothing more: no duplicate, no other key's event
        w.cancel()
