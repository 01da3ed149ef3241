"""Leases on real nodes (SPEC section 3, "Leases"): shapes, attach/detach, expiry in one
revision seen by watchers, leader failover with and without keep-alives, restarts.
Every wait has a deadline; figures are printed, never asserted on beyond the contract."""
from __future__ import annotations

import itertools
import threading
import time

import zmq

from nodeproc import err, ok, wait_for
from protocol.client import Client
from protocol.codec import pack, unpack

ELECTION_S = 1.0  # the default --election-timeout


def grant(node, ttl, lease_id=0):
    req = {"op": "lease_grant", "ttl": ttl}
    if lease_id:
        req["ID"] = lease_id
    return ok(node.request(req))


def live_keys(node, prefix: bytes) -> set[bytes]:
    r = ok(node.request({"op": "range", "key": prefix, "range_end": prefix[:-1] + bytes([prefix[-1] + 1]),
                         "keys_only": True, "serializable": True}, timeout=2))
    return {kv["key"] for kv in r["kvs"]}


class Batch:
    """Many requests in flight on one DEALER per endpoint; replies matched by id."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.socks: dict[str, zmq.Socket] = {}

    def sock(self, url: str) -> zmq.Socket:
        if url not in self.socks:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(url)
            self.socks[url] = s
        return self.socks[url]

    def call(self, url: str, reqs: list[dict], timeout: float = 2.0) -> list[dict | None]:
        s = self.sock(url)
        ids = []
        for req in reqs:
            rid = next(self._ids)
            ids.append(rid)
            s.send(pack({**req, "id": rid}))
        want = set(ids)
        got: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while want - got.keys():
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000) + 1):
                break
            rep = unpack(s.recv())
            if rep.get("id") in want:
                got[rep["id"]] = rep
        return [got.get(i) for i in ids]

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


class KeepAlive(threading.Thread):
    """Keeps leases alive at whoever leads: follows `not_leader` answers, moves on to the
    next member on a timeout. Records the last acknowledged keep-alive of every lease."""

    def __init__(self, nodes, lease_ids, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.urls = {n.member_id: n.client_url for n in nodes}
        self.order = [n.client_url for n in nodes]
        self.target = self.order[0]
        self.ids = list(lease_ids)
        self.interval = interval
        self.last_ok = {i: time.monotonic() for i in self.ids}
        self.not_found: set[int] = set()
        self.rounds_ok = 0
        self.redirects = 0
        self.max_gap = 0.0  # the longest time a lease went without an acknowledged keep-alive
        self.stop_flag = threading.Event()

    def run(self) -> None:
        batch = Batch()
        try:
            while not self.stop_flag.is_set():
                pending = [i for i in self.ids if i not in self.not_found]
                replies = batch.call(self.target, [{"op": "lease_keepalive", "ID": i} for i in pending], timeout=1.0)
                now = time.monotonic()
                redirect = None
                all_ok = True
                for lease_id, rep in zip(pending, replies):
                    if rep is not None and rep.get("ok"):
                        self.max_gap = max(self.max_gap, now - self.last_ok[lease_id])
                        self.last_ok[lease_id] = now
                        continue
                    all_ok = False
                    if rep is None:
                        continue
                    code = rep["error"]["code"]
                    if code == "lease_not_found":
                        self.not_found.add(lease_id)
                    elif code == "not_leader" and rep["error"].get("leader_id") in self.urls:
                        redirect = self.urls[rep["error"]["leader_id"]]
                if all_ok:
                    self.rounds_ok += 1
                    self.stop_flag.wait(self.interval)
                elif redirect is not None and redirect != self.target:
                    self.target = redirect
                    self.redirects += 1
                elif any(r is None for r in replies) or all(r is not None and not r.get("ok") for r in replies):
                    self.target = self.order[(self.order.index(self.target) + 1) % len(self.order)]
                    self.stop_flag.wait(0.05)
        finally:
            batch.close()

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)


# --- one node ------------------------------------------------------------------------------
def test_lease_shapes_on_one_node(node_factory):
    node = node_factory()
    g = grant(node, 1)
    assert g["ttl"] == 2, "raised to ceil(1.5 x election timeout)"
    lease_id = g["ID"]
    assert 0 < lease_id < 2**63
    assert g["header"]["revision"] == 1, "a grant does not change the revision"
    g2 = grant(node, 30, lease_id=777)
    assert g2["ID"] == 777 and g2["ttl"] == 30
    err(node.request({"op": "lease_grant", "ttl": 5, "ID": 777}), "lease_exists")

    ok(node.request({"op": "put", "key": b"l/a", "value": b"1", "lease": 777}))
    ok(node.request({"op": "put", "key": b"l/b", "value": b"1", "lease": 777}))
    e = err(node.request({"op": "put", "key": b"l/c", "value": b"1", "lease": 12345}), "lease_not_found")
    assert e["lease"] == 12345

    ka = ok(node.request({"op": "lease_keepalive", "ID": 777}))
    assert ka["ID"] == 777 and ka["ttl"] == 30
    err(node.request({"op": "lease_keepalive", "ID": 4242}), "lease_not_found")

    ttl = ok(node.request({"op": "lease_timetolive", "ID": 777, "keys": True}))
    assert ttl["ID"] == 777 and ttl["granted_ttl"] == 30 and 28 <= ttl["ttl"] <= 30
    assert ttl["keys"] == [b"l/a", b"l/b"]
    assert ok(node.request({"op": "lease_timetolive", "ID": 777}))["keys"] == []
    missing = ok(node.request({"op": "lease_timetolive", "ID": 4242}))
    assert missing["ttl"] == -1

    leases = ok(node.request({"op": "lease_leases"}))["leases"]
    assert sorted(x["ID"] for x in leases) == sorted([lease_id, 777])

    # A later put without a lease detaches; ignore_lease keeps.
    ok(node.request({"op": "put", "key": b"l/b", "value": b"2", "ignore_lease": True}))
    ok(node.request({"op": "put", "key": b"l/a", "value": b"2"}))
    assert ok(node.request({"op": "lease_timetolive", "ID": 777, "keys": True}))["keys"] == [b"l/b"]
    kv = ok(node.request({"op": "range", "key": b"l/a"}))["kvs"][0]
    assert kv["lease"] == 0

    before = ok(node.request({"op": "status"}))["header"]["revision"]
    rv = ok(node.request({"op": "lease_revoke", "ID": 777}))
    assert rv["header"]["revision"] == before + 1
    assert live_keys(node, b"l/") == {b"l/a"}
    err(node.request({"op": "lease_revoke", "ID": 777}), "lease_not_found")
    assert ok(node.request({"op": "lease_timetolive", "ID": 777}))["ttl"] == -1
    # Internal ops cannot be sent by clients.
    err(node.request({"op": "lease_expire", "ID": lease_id}), "unknown_op")
    err(node.request({"op": "lease_checkpoint", "checkpoints": [[lease_id, 1]]}), "unknown_op")


def test_expiry_in_one_revision_seen_by_watcher(node_factory):
    node = node_factory()
    client = Client([node.client_url])
    try:
        lease_id = grant(node, 2)["ID"]
        for i in range(5):
            ok(node.request({"op": "put", "key": b"e/%d" % i, "value": b"v", "lease": lease_id}))
        ok(node.request({"op": "put", "key": b"e/keep", "value": b"v"}))
        seen: list = []
        watcher = client.watch(b"e/", prefix=True)
        watcher.start(lambda resp: seen.append((time.monotonic(), resp)))
        for _ in range(3):  # keep it alive a while: it must not expire meanwhile
            ok(node.request({"op": "lease_keepalive", "ID": lease_id}))
            last_keepalive = time.monotonic()
            wait_for(lambda: time.monotonic() > last_keepalive + 1.0, 5, "a second")
        assert len(live_keys(node, b"e/")) == 6
        wait_for(lambda: any(ev.type == "DELETE" for _, r in seen for ev in r.events), 10, "the deletes")
        deleted_at, resp = next((t, r) for t, r in seen if any(ev.type == "DELETE" for ev in r.events))
        late = deleted_at - last_keepalive
        print(f"lease of TTL 2 s expired {late:.2f}s after its last keep-alive")
        assert late <= 2 + ELECTION_S
        assert late >= 2 - 0.05
        assert sorted(ev.kv.key for ev in resp.events) == [b"e/%d" % i for i in range(5)]
        assert {ev.type for ev in resp.events} == {"DELETE"}
        rev = resp.revision
        hist = ok(node.request({"op": "history", "key": b"e/", "range_end": b"e0", "start_revision": rev,
                                "end_revision": rev}))
        assert [len(r["events"]) for r in hist["revisions"]] == [5], "one revision holds every delete"
        assert live_keys(node, b"e/") == {b"e/keep"}
        assert ok(node.request({"op": "lease_timetolive", "ID": lease_id}))["ttl"] == -1
        watcher.cancel()
    finally:
        client.close()


def test_leases_survive_actor_restarts_and_node_restart(node_factory):
    node = node_factory()
    lease_id = grant(node, 60)["ID"]
    ok(node.request({"op": "put", "key": b"s/a", "value": b"v", "lease": lease_id}))
    for role in ("storage", "consensus", "gateway"):
        old = node.kill_actor(role)
        wait_for(lambda: node.actor_pids().get(role) not in (None, old) and node.serves(), 20,
                 f"{role} to restart")
        r = wait_for(lambda: (lambda x: x if x and x.get("ok") else None)(
            node.request({"op": "lease_timetolive", "ID": lease_id, "keys": True}, timeout=1)), 10,
            f"timetolive after a restart of {role}")
        assert r["keys"] == [b"s/a"] and r["granted_ttl"] == 60 and r["ttl"] > 50, role
        ok(node.request({"op": "lease_keepalive", "ID": lease_id}))
    node.stop()
    node.start()
    r = wait_for(lambda: (lambda x: x if x and x.get("ok") else None)(
        node.request({"op": "lease_timetolive", "ID": lease_id, "keys": True}, timeout=1)), 10, "timetolive")
    assert r["keys"] == [b"s/a"] and r["ttl"] > 50
    assert [x["ID"] for x in ok(node.request({"op": "lease_leases"}))["leases"]] == [lease_id]
    ok(node.request({"op": "lease_revoke", "ID": lease_id}))
    assert live_keys(node, b"s/") == set()


# --- clusters --------------------------------------------------------------------------------
def test_follower_says_not_leader_with_the_leaders_urls(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    lease_id = grant(follower, 10)["ID"]  # a grant goes through the log from any member
    ok(follower.request({"op": "put", "key": b"f/a", "value": b"v", "lease": lease_id}))
    e = wait_for(lambda: (lambda r: r["error"] if r and not r["ok"] and r["error"].get("leader_client_urls")
                          else None)(follower.request({"op": "lease_keepalive", "ID": lease_id})), 10,
                 "not_leader with urls")
    assert e["code"] == "not_leader" and e["leader_id"] == leader.member_id
    assert e["leader_client_urls"] == [leader.client_url]
    err(follower.request({"op": "lease_timetolive", "ID": lease_id}), "not_leader")
    ok(leader.request({"op": "lease_keepalive", "ID": lease_id}))
    assert [x["ID"] for x in ok(follower.request({"op": "lease_leases"}))["leases"]] == [lease_id]


def _grant_many(node, count: int, ttl: int, prefix: bytes) -> dict[int, float]:
    batch = Batch()
    try:
        granted_at: dict[int, float] = {}
        replies = batch.call(node.client_url, [{"op": "lease_grant", "ttl": ttl}] * count, timeout=10)
        now = time.monotonic()
        for rep in replies:
            granted_at[ok(rep)["ID"]] = now
        puts = [{"op": "put", "key": prefix + b"%d" % i, "value": b"v", "lease": lease_id}
                for i, lease_id in enumerate(granted_at)]
        for rep in batch.call(node.client_url, puts, timeout=10):
            ok(rep)
        return granted_at
    finally:
        batch.close()


def test_kill_leader_while_leases_are_kept_alive_none_expires(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    ttl = 4
    granted = _grant_many(leader, 100, ttl, b"ka/")
    ka = KeepAlive(cluster.nodes, granted, interval=0.5)
    ka.start()
    try:
        wait_for(lambda: ka.rounds_ok >= 2, 10, "keep-alives to flow")
        leader.kill()
        killed = time.monotonic()
        survivors = [n for n in cluster.nodes if n is not leader]
        new_leader = cluster.leader(survivors, timeout=15)
        elected = time.monotonic() - killed
        rounds = ka.rounds_ok
        # Well past every deadline the old leader knew of, with keep-alives at the new one.
        wait_for(lambda: time.monotonic() > killed + ttl + 3 * ELECTION_S and ka.rounds_ok > rounds + 3,
                 30, "keep-alives at the new leader past the old deadlines")
    finally:
        ka.stop()
    print(f"new leader after {elected:.2f}s; keep-alive redirects {ka.redirects}; longest time without "
          f"an acknowledged keep-alive {ka.max_gap:.2f}s (TTL {ttl}s)")
    assert not ka.not_found, f"{len(ka.not_found)} leases expired"
    assert live_keys(new_leader, b"ka/") == {b"ka/%d" % i for i in range(100)}
    leases = {x["ID"] for x in ok(new_leader.request({"op": "lease_leases"}))["leases"]}
    assert set(granted) <= leases


def test_kill_leader_while_leases_are_not_kept_alive_all_expire(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    ttl = 3
    granted = _grant_many(leader, 100, ttl, b"nk/")
    survivors = [n for n in cluster.nodes if n is not leader]
    watch_node = survivors[0]
    expected = {b"nk/%d" % i for i in range(100)}
    # Its reads are serializable: a key it has not applied yet is not "gone".
    wait_for(lambda: live_keys(watch_node, b"nk/") == expected, ttl - 1, "the survivor to apply every put")
    leader.kill()
    killed = time.monotonic()
    gone_at: dict[bytes, float] = {}

    def all_gone() -> bool:
        try:
            live = live_keys(watch_node, b"nk/")
        except AssertionError:
            return False
        now = time.monotonic()
        for k in expected - live:
            gone_at.setdefault(k, now)
        return not live

    wait_for(all_gone, ttl + 20, "every key to expire", interval=0.05)
    first_grant = min(granted.values())
    lateness = sorted(t - first_grant for t in gone_at.values())
    print(f"leader killed {killed - first_grant:.2f}s after the grants; keys gone after "
          f"{lateness[0]:.2f}..{lateness[-1]:.2f}s (TTL {ttl}s, TTL + 2 election timeouts = "
          f"{ttl + 2 * ELECTION_S:.1f}s)")
    assert lateness[0] >= ttl - 0.1, "no lease expires before its TTL"
    assert lateness[-1] <= ttl + 2 * ELECTION_S + 1.5
    new_leader = cluster.leader(survivors)
    assert not {x["ID"] for x in ok(new_leader.request({"op": "lease_leases"}))["leases"]} & set(granted)


def test_leases_survive_whole_cluster_restart(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    lease_id = grant(leader, 60)["ID"]
    short_id = grant(leader, 3)["ID"]
    ok(leader.request({"op": "put", "key": b"r/a", "value": b"v", "lease": lease_id}))
    ok(leader.request({"op": "put", "key": b"r/b", "value": b"v", "lease": short_id}))
    for n in cluster.nodes:
        n.kill()
    cluster.start()
    leader = cluster.leader()
    r = ok(leader.request({"op": "lease_timetolive", "ID": lease_id, "keys": True}))
    assert r["keys"] == [b"r/a"] and r["granted_ttl"] == 60
    leases = {x["ID"] for x in ok(leader.request({"op": "lease_leases"}))["leases"]}
    assert lease_id in leases
    # The short lease, never kept alive, still expires after the restart.
    wait_for(lambda: live_keys(leader, b"r/") == {b"r/a"}, 20, "the short lease to expire")
    ok(leader.request({"op": "lease_keepalive", "ID": lease_id}))


def test_checkpoints_expire_a_lease_under_repeated_leader_changes(cluster_factory, monkeypatch):
    """etcd #9888: without checkpoints every new leader restarts a lease's TTL, so a lease
    outlives any number of leader changes that come faster than its TTL."""
    monkeypatch.setenv("QKV_LEASE_CHECKPOINT_S", "0.3")
    cluster = cluster_factory(3)
    leader = cluster.leader()
    ttl = 6
    g = grant(leader, ttl)
    granted = time.monotonic()
    ok(leader.request({"op": "put", "key": b"c/a", "value": b"v", "lease": g["ID"]}))
    moves = 0
    deadline = granted + 60
    while live_keys(leader, b"c/") and time.monotonic() < deadline:
        # A new leader about every 1.5 s: far less than the TTL.
        target = next(n for n in cluster.nodes if n is not leader)
        moved = leader.request({"op": "move_leader", "target_id": target.member_id}, timeout=5)
        if moved and moved.get("ok"):
            moves += 1
        leader = cluster.leader()
        start = time.monotonic()
        wait_for(lambda: time.monotonic() > start + 1.5 or not live_keys(leader, b"c/"), 5, "a tenure")
    took = time.monotonic() - granted
    print(f"lease of TTL {ttl}s expired after {took:.2f}s and {moves} leader changes")
    assert not live_keys(leader, b"c/"), f"still alive after {moves} leader changes"
    assert moves >= 3
    assert took >= ttl - 0.1


def test_isolated_leader_revokes_nothing(cluster_factory):
    """etcd #15247 / #12528: a leader cut off from its quorum must not revoke leases that
    the rest of the cluster keeps alive (here: it cannot, since revocations must commit)."""
    cluster = cluster_factory(3)
    old = cluster.leader()
    followers = [n for n in cluster.nodes if n is not old]
    ttl = 2
    lease_id = grant(old, ttl)["ID"]
    ok(old.request({"op": "put", "key": b"i/a", "value": b"v", "lease": lease_id}))
    wait_for(lambda: all(live_keys(n, b"i/") == {b"i/a"} for n in followers), 10, "the key everywhere")
    ka = KeepAlive(followers, [lease_id], interval=0.3)
    cluster.partition([old], followers)
    ka.start()
    try:
        cut = time.monotonic()
        new = cluster.leader(followers, timeout=15)
        # The isolated old member never deletes the key, long past the TTL.
        wait_for(lambda: time.monotonic() > cut + 3 * ttl and ka.rounds_ok > 3
                 and live_keys(old, b"i/") == {b"i/a"}, 30, "time to pass at the old leader")
        assert live_keys(old, b"i/") == {b"i/a"}
        cluster.heal()
        wait_for(lambda: cluster.leader() is not None, 15, "a leader after the heal")
        wait_for(lambda: ka.rounds_ok > 6, 15, "keep-alives after the heal")
    finally:
        ka.stop()
    assert not ka.not_found
    for n in cluster.nodes:
        wait_for(lambda: live_keys(n, b"i/") == {b"i/a"}, 10, f"the key on {n.name}")
    assert new is not old
