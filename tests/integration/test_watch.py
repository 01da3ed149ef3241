"""The watch guarantees against a real node, one test each (issue 4): ordered, unique,
reliable (slow consumer, broadcaster kill -9, node restart), atomic, resumable,
bookmarkable, never back in time, compaction-safe; plus a consumer written from SPEC
section 5 alone with a bare SUB socket, and `qkvctl watch`."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from nodeproc import wait_for
from protocol.client import Client, Op
from test_watch_support import (
    Consumer, Load, check_exact, check_ordered, check_unique, truth, wait_delivered,
)

PFX, END = b"w/", b"w0"


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(node) -> Client:
        c = Client([node.client_url])
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def run_load(node, **kw) -> Load:
    load = Load(node.client_url, **kw)
    load.start()
    return load


def finish(node, consumer: Consumer, load: Load, start: int = 2, key: bytes = PFX,
           range_end: bytes = END, timeout: float = 30, load_may_fail: bool = False) -> list:
    load.join(120)
    # (writes in flight when an actor is killed may time out: the truth is the history)
    assert load_may_fail or not load.failed, load.failed
    expected = truth(node.request, key, range_end, start, load.max_revision)
    if expected:
        wait_delivered(consumer, expected[-1][0], timeout)
    time.sleep(0.2)  # anything more would be a duplicate or an extra
    consumer.stop()
    assert consumer.error is None, consumer.error
    return expected


def test_1_ordered(node_factory, clients):
    node = node_factory()
    c = clients(node)
    consumer = Consumer(c.watch(PFX, prefix=True))
    consumer.start()
    load = run_load(node, total=5000, window=128, keys=50, txn_every=7)
    expected = finish(node, consumer, load)
    check_ordered(consumer.responses)
    check_exact(consumer.responses, expected)


def test_2_unique_across_history_and_live(node_factory, clients):
    node = node_factory()
    c = clients(node)
    load = run_load(node, total=8000, window=128, keys=100)
    wait_for(lambda: load.max_revision > 2000, 30, "load")
    # history [1, ...] and the live messages overlap while the load runs: no duplicate
    consumer = Consumer(c.watch(PFX, prefix=True, start_revision=1))
    consumer.start()
    time.sleep(0.3)
    consumer.watcher.request_progress()  # a progress message in the middle changes nothing
    expected = finish(node, consumer, load)
    check_unique(consumer.responses)
    check_exact(consumer.responses, expected)


def test_3_reliable_slow_consumer_with_tiny_rcvhwm(node_factory, clients):
    # a small send queue in the broadcaster too, so the slow consumer really loses messages
    node = node_factory(env={"QKV_WATCH_SNDHWM": "1000", "QKV_WATCH_SNDBUF": "32768"})
    c = clients(node)
    watcher = c.watch(PFX, prefix=True, rcvhwm=10, rcvbuf=32768)
    consumer = Consumer(watcher, sleep_s=0.001, sleep_every=10)
    consumer.start()
    load = run_load(node, total=100_000, window=256, keys=1000, value_size=100)
    expected = finish(node, consumer, load, timeout=60)
    assert len(expected) == 100_000
    check_ordered(consumer.responses)
    check_unique(consumer.responses)
    check_exact(consumer.responses, expected)
    print(f"slow consumer: {watcher.catchups} catch-ups from history")
    assert watcher.catchups >= 2  # it did lose live messages, and history filled the holes


def test_3_reliable_when_the_broadcaster_is_killed(node_factory, make_client):
    """Run with both clients (``client_kind``: threaded, asyncio through tests/aioclient.py)."""
    node = node_factory()
    c = make_client([node.client_url])
    consumer = Consumer(c.watch(PFX, prefix=True))
    consumer.start()
    load = run_load(node, total=30_000, window=128, keys=500)
    for _ in range(2):
        wait_for(lambda: consumer.last_revision() > load.max_revision - 100 and load.max_revision > 3000,
                 30, "delivery")
        old = node.kill_actor("watch")
        wait_for(lambda: node.actor_pids().get("watch") not in (None, old), 10, "watch restart")
        time.sleep(0.5)
    expected = finish(node, consumer, load)
    check_ordered(consumer.responses)
    check_exact(consumer.responses, expected)


def test_3_reliable_when_the_node_restarts(node_factory, clients):
    """The watcher sees its node go silent, retries, and resumes from the last revision
    it delivered once a node serves again: no gap, no duplicate. (Across a cluster it
    moves to another endpoint the same way.)"""
    node = node_factory()
    c = clients(node)
    consumer = Consumer(c.watch(PFX, prefix=True, start_revision=1))
    consumer.start()
    load = run_load(node, total=3000, window=64)
    load.join(60)
    wait_delivered(consumer, load.max_revision, 20)
    node.kill()
    node.start()
    load = run_load(node, total=3000, window=64)
    expected = finish(node, consumer, load, start=1, timeout=40)
    check_ordered(consumer.responses)
    check_exact(consumer.responses, expected)


def test_4_atomic_txn_arrives_as_one_response(node_factory, clients):
    node = node_factory()
    c = clients(node)
    consumer = Consumer(c.watch(PFX, prefix=True))
    consumer.start()
    load = run_load(node, total=3000, window=64, txn_every=2, txn_keys=5)
    expected = finish(node, consumer, load)
    assert sum(1 for _, evs in expected if len(evs) == 5) >= 1000
    check_exact(consumer.responses, expected)  # each revision with all its events, once
    # and a txn seen through a narrower watch carries just that watch's part of it
    c.txn([], [Op.put(k, "x") for k in ("a1", "a2", "b1")])
    with c.watch("a", prefix=True, start_revision=load.max_revision + 1) as w:
        resp = w.get(5)
        assert [e.kv.key for e in resp.events] == [b"a1", b"a2"]


def test_5_resumable_from_any_revision(node_factory, clients):
    node = node_factory()
    c = clients(node)
    load = run_load(node, total=3000, window=64, keys=20, txn_every=5)
    load.join(60)
    c.delete("w/000003")
    c.delete("w/000010", "w/000015")
    last = c.get("x").header.revision
    expected = truth(node.request, PFX, END, 1, last)
    rng = random.Random(4)
    for r in [0, 1, 2, last - 1, last] + rng.sample(range(3, last - 1), 15):
        with c.watch(PFX, prefix=True, start_revision=r + 1) as w:
            got = []
            while (got[-1][0] if got else r) < last:
                resp = w.get(5)
                assert resp is not None, f"from {r}: stalled at {got[-1][0] if got else r}"
                got.append((resp.revision, [(e.type, e.kv.key, e.kv.mod_revision) for e in resp.events]))
            assert w.get(0.2) is None
        assert got == [g for g in expected if g[0] > r], f"resume after {r}"


def test_6_bookmarkable_progress_means_everything_below_was_delivered(node_factory, clients):
    node = node_factory()
    c = clients(node)
    watchers = [Consumer(c.watch(PFX, prefix=True, progress_notify=True)),
                Consumer(c.watch("w/000007", progress_notify=True)),
                Consumer(c.watch(PFX, prefix=True, progress_notify=True, filters=("NOPUT",)))]
    for w in watchers:
        w.start()
    load = run_load(node, total=6000, window=64, keys=50, rate=3000)
    time.sleep(1)
    for w in watchers:
        w.watcher.request_progress()
    load.join(60)
    time.sleep(2.5)  # the heartbeat brings a progress notification at the end
    for w, (key, end) in zip(watchers, [(PFX, END), (b"w/000007", b""), (PFX, END)]):
        w.stop()
        assert w.error is None
        expected = truth(node.request, key, end, 2, load.max_revision)
        if w is watchers[2]:
            expected = [g for g in expected if any(t == "DELETE" for t, _, _ in g[1])]
        assert len(w.progress) >= 3
        for rev, count in w.progress:
            want = [g for g in expected if g[0] <= rev]
            assert w.responses[:count] == want, f"progress at {rev}"
        assert w.progress[-1][0] >= load.max_revision


def test_7_never_back_in_time_across_broadcaster_and_storage_restarts(node_factory, clients):
    node = node_factory()
    c = clients(node)
    consumers = [Consumer(c.watch(PFX, prefix=True, start_revision=1)),
                 Consumer(c.watch("w/000001"))]
    for w in consumers:
        w.start()
    load = run_load(node, total=20_000, window=128, keys=200)
    for role in ("watch", "storage", "watch"):
        wait_for(lambda: load.max_revision > 2000, 30, "load")
        old = node.kill_actor(role)
        wait_for(lambda: node.actor_pids().get(role) not in (None, old), 10, f"{role} restart")
        time.sleep(0.7)
    load.join(120)
    for w, (key, end, start) in zip(consumers, [(PFX, END, 1), (b"w/000001", b"", 2)]):
        expected = finish(node, w, load, start=start, key=key, range_end=end, load_may_fail=True)
        revs = [r for r, _ in w.responses]
        assert all(a < b for a, b in zip(revs, revs[1:])), "went back in time"
        check_exact(w.responses, expected)


def test_8_compaction_while_watches_run_drops_nothing(node_factory, clients):
    node = node_factory(env={"QKV_WATCH_SNDHWM": "2000", "QKV_WATCH_SNDBUF": "32768"})
    c = clients(node)
    consumers = [Consumer(c.watch(PFX, prefix=True)),
                 Consumer(c.watch("w/000004", prev_kv=True)),
                 Consumer(c.watch("w/", "\x00"))]
    # and one that falls behind and catches up from history while compaction runs
    slow = Consumer(c.watch(PFX, prefix=True, rcvhwm=1, rcvbuf=4096), sleep_s=0.001, sleep_every=2)
    for w in consumers + [slow]:
        w.start()
    load = run_load(node, total=15_000, window=128, keys=100)
    stop = threading.Event()
    compacted: list[int] = []

    def compactor():
        cc = Client([node.client_url])
        while not stop.is_set():
            rev = load.max_revision
            if rev > (compacted[-1] if compacted else 1):
                cc.compact(rev)  # right up to the newest revision, again and again
                compacted.append(rev)
            time.sleep(0.05)
        cc.close()

    t = threading.Thread(target=compactor, daemon=True)
    t.start()
    load.join(120)
    stop.set()
    t.join(10)
    assert not load.failed, load.failed
    assert len(compacted) > 10
    # the truth, from a watch that started before any compaction: its own history is
    # gone, so compare against what every consumer must have: each revision of the load
    for w, match in zip(consumers, [lambda k: k.startswith(PFX), lambda k: k == b"w/000004",
                                    lambda k: k >= b"w/"]):
        if w is consumers[1]:
            wait_for(lambda: len(w.responses) >= 150 or w.ended or w.error, 30, "single key")
        else:
            wait_delivered(w, load.max_revision, 30)
        time.sleep(0.2)
        w.stop()
        assert w.error is None and w.ended is None, w.ended
        check_ordered(w.responses)
        check_unique(w.responses)
        revs = [r for r, _ in w.responses]
        if w is consumers[1]:
            assert len(revs) == 150  # seq % 100 == 4 for seq in 1..15000
        else:
            assert revs == list(range(revs[0], load.max_revision + 1)) and revs[0] <= 3
    # the slow one delivered every revision up to where it stands, and if history was
    # compacted under it, it was told so (canceled, with the compact revision): no silent gap
    wait_for(lambda: slow.ended or slow.error or slow.last_revision() >= load.max_revision, 30, "slow")
    slow.stop()
    assert slow.error is None
    revs = [r for r, _ in slow.responses]
    assert revs == list(range(2, 2 + len(revs)))
    if slow.ended is not None:
        assert slow.ended.canceled and slow.ended.compact_revision > (revs[-1] if revs else 1) + 1
    print(f"slow watcher: delivered {len(revs)}, ended={slow.ended is not None}, "
          f"catch-ups {slow.watcher.catchups}")
    # a watch from the compact revision itself works; below it ends with `compacted`
    last = compacted[-1]
    with c.watch(PFX, prefix=True, start_revision=last) as w:
        assert w.get(5).revision == last
    with c.watch(PFX, prefix=True, start_revision=last - 1) as w:
        resp = w.get(5)
        assert resp.canceled and resp.compact_revision == last
        with pytest.raises(StopIteration):
            w.get(1)


def test_bare_sub_socket_consumer_following_spec_section_5(node_factory):
    """A consumer written from SPEC section 5 alone: zmq SUB + msgpack + the DEALER."""
    node = node_factory()
    for i in range(10):
        node.request({"op": "put", "key": b"w/%d" % i, "value": b"x"})
    status = node.request({"op": "status"})
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(status["watch_urls"][0])
    key, end = b"w/", b"w0"
    topic = b"W1" + bytes([0]) + len(key).to_bytes(4, "big") + key + len(end).to_bytes(4, "big") + end
    sub.subscribe(topic)  # 1. subscribe first
    load = run_load(node, total=3000, window=32)
    delivered: list[int] = []
    done = 0  # every matching event <= done has been delivered

    def catch_up():
        nonlocal done
        while True:  # 2. history from done+1, page by page
            reply = node.request({"op": "history", "key": key, "range_end": end,
                                  "start_revision": done + 1})
            assert reply["ok"], reply
            for g in reply["revisions"]:
                if g["revision"] > done:
                    delivered.append(g["revision"])
                    done = g["revision"]
            done = max(done, reply["last_revision"])
            if not reply["more"]:
                return

    catch_up()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not sub.poll(500):
            continue
        t, payload = sub.recv_multipart()
        assert t == topic and payload[0] == 1
        body = msgpack.unpackb(payload[1:], raw=False)
        if "progress_revision" in body:  # 3b. progress: a hole, or nothing missed up to R
            if body["last_event_revision"] > done:
                catch_up()
            else:
                done = max(done, body["progress_revision"])
            if load.max_revision and not load.is_alive() and done >= load.max_revision:
                break
            continue
        if body["revision"] <= done:  # 3a. duplicate
            continue
        if body["prev_revision"] > done:  # hole
            catch_up()
            continue
        delivered.append(body["revision"])
        done = body["revision"]
    sub.close()
    assert delivered == list(range(2, load.max_revision + 1))


def qkvctl_cmd(node) -> list[str]:
    exe = Path(sys.executable).with_name("qkvctl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from protocol.client.cli import main; main()"]
    return cmd + ["--endpoints", node.client_url]


def test_qkvctl_watch_prints_like_etcdctl(node_factory, clients):
    node = node_factory()
    c = clients(node)
    c.put("foo", "bar")
    proc = subprocess.Popen(qkvctl_cmd(node) + ["watch", "fo", "--prefix", "--prev-kv", "--rev", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc_json = subprocess.Popen(qkvctl_cmd(node) + ["watch", "foo", "-w", "json", "--rev", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # --rev 2: history has every event whenever the watches start; each command's lines are
    # read as they come, and it is stopped once it printed all three events.
    got: dict[subprocess.Popen, list[bytes]] = {proc: [], proc_json: []}

    def read(p: subprocess.Popen) -> None:
        for line in iter(p.stdout.readline, b""):
            got[p].append(line)

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in got]
    for t in readers:
        t.start()
    try:
        c.put("foo", "baz")
        c.delete("foo")
        wait_for(lambda: len(got[proc]) >= 13 and len(got[proc_json]) >= 3, 20,
                 "qkvctl watch printing the three events")
    finally:
        for p in got:
            p.send_signal(signal.SIGINT)
        for p in got:
            p.wait(timeout=10)
        for t in readers:
            t.join(10)  # at the end of their output
        err = proc.stderr.read()
        proc_json.stderr.read()
    out, out_json = b"".join(got[proc]), b"".join(got[proc_json])
    assert out.decode() == "PUT\nfoo\nbar\nPUT\nfoo\nbar\nfoo\nbaz\nDELETE\nfoo\nbaz\nfoo\n\n", err
    lines = [json.loads(line) for line in out_json.decode().splitlines()]
    assert [len(x["Events"]) for x in lines] == [1, 1, 1]
    assert lines[2]["Events"][0]["type"] == 1 and lines[0]["Events"][0]["kv"]["key"] == "Zm9v"
