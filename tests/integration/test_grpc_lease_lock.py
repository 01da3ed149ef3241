"""etcd's Lease, v3lock and v3election services through the gRPC gateway (issue 18, part B):
grpc stubs for the exact answers and statuses (each checked side by side with etcd 3.4.23),
and Debian's etcdctl 3.4 for the commands that use them (skipped where it is missing)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading

import grpc
import pytest

from protocol.etcdpb import (
    rpc_pb2, rpc_pb2_grpc, v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc,
)
from tests.nodeproc import Cluster, NodeProcess, wait_for

ETCDCTL = "/usr/bin/etcdctl"
needs_etcdctl = pytest.mark.skipif(not os.access(ETCDCTL, os.X_OK),
                                   reason="etcdctl 3.4 is not installed (apt-get install etcd-client)")
T = 10  # each RPC's deadline


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("node"), grpc=True).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def stubs(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        yield (rpc_pb2_grpc.LeaseStub(ch), rpc_pb2_grpc.KVStub(ch), v3lock_pb2_grpc.LockStub(ch),
               v3election_pb2_grpc.ElectionStub(ch))


def status_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def grant(lease, ttl: int = 30) -> int:
    return lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=T).ID


def hexid(lease_id: int) -> bytes:
    return format(lease_id, "x").encode()


def keys(kv, prefix: bytes) -> list[bytes]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    return [x.key for x in kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end), timeout=T).kvs]


# --- Lease ---------------------------------------------------------------------------------
def test_lease_unary_calls_answer_as_etcd(stubs):
    lease, kv, _, _ = stubs
    g = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=0x1234), timeout=T)
    assert (g.ID, g.TTL) == (0x1234, 30) and g.header.cluster_id and g.header.member_id
    assert lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=-5), timeout=T).TTL >= 1  # raised to the minimum
    assert status_of(lambda: lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=0x1234), timeout=T)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    assert status_of(lambda: lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001), timeout=T)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    for lid in (999, 0):
        assert status_of(lambda: lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=T)) == (
            grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

    put = kv.Put(rpc_pb2.PutRequest(key=b"lk/a", value=b"1", lease=0x1234), timeout=T)
    ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0x1234, keys=True), timeout=T)
    assert (ttl.ID, ttl.grantedTTL, list(ttl.keys)) == (0x1234, 30, [b"lk/a"]) and 0 < ttl.TTL <= 30
    missing = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=999, keys=True), timeout=T)
    assert (missing.ID, missing.TTL, missing.grantedTTL, list(missing.keys)) == (999, -1, 0, [])
    assert 0x1234 in [x.ID for x in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=T).leases]

    r = lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=0x1234), timeout=T)
    assert r.header.revision == put.header.revision + 1  # the revocation's delete
    assert keys(kv, b"lk/") == []


def test_keepalive_stream_answers_each_request_in_order(stubs):
    lease = stubs[0]
    lid = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=20), timeout=T).ID
    ids = [lid, 999, 0, -1, lid]
    out = list(lease.LeaseKeepAlive(iter(rpc_pb2.LeaseKeepAliveRequest(ID=i) for i in ids), timeout=T))
    assert [(x.ID, x.TTL) for x in out] == [(lid, 20), (999, 0), (0, 0), (-1, 0), (lid, 20)]
    assert all(x.header.member_id for x in out)


def test_a_keepalive_flood_is_answered_one_by_one(stubs):
    """A client that sends a burst of keep-alives gets every answer, in order: the stream
    is served one request at a time (gRPC's flow control holds the sender), nothing piles up."""
    lease = stubs[0]
    lid = grant(lease, 40)
    out = lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lid)] * 500), timeout=120)
    assert [(x.ID, x.TTL) for x in out] == [(lid, 40)] * 500


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_keepalive_and_timetolive_through_a_follower(tmp_path, secure):
    """Only the Raft leader serves them (SPEC): a follower's gRPC gateway sends them to the
    leader, as etcd's members forward them; with CURVE on the client ports too (the gRPC
    gateway dials the leader's client port with the cluster's server key)."""
    cluster = Cluster(tmp_path, grpc=True, secure=secure).start()
    try:
        leader = cluster.leader()
        follower = next(n for n in cluster.nodes if n is not leader)
        with grpc.insecure_channel(follower.grpc_endpoint) as ch:
            lease = rpc_pb2_grpc.LeaseStub(ch)
            lid = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=15), timeout=T).ID
            out = list(lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lid)] * 3), timeout=T))
            assert [(x.ID, x.TTL) for x in out] == [(lid, 15)] * 3
            ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid), timeout=T)
            assert ttl.grantedTTL == 15 and 0 < ttl.TTL <= 15
            # etcd fills the header on the member asked, not on the leader that answered
            assert {x.header.member_id for x in out} | {ttl.header.member_id} == {follower.member_id}
    finally:
        cluster.stop()


# --- v3lock ----------------------------------------------------------------------------------
def test_lock_is_held_then_handed_to_the_next_waiter(stubs):
    lease, kv, lock, _ = stubs
    a, b = grant(lease), grant(lease)
    held = lock.Lock(v3lock_pb2.LockRequest(name=b"m", lease=a), timeout=T)
    [kva] = kv.Range(rpc_pb2.RangeRequest(key=held.key), timeout=T).kvs
    assert held.key == b"m/" + hexid(a) and held.header.revision == kva.create_revision and kva.lease == a
    again = lock.Lock(v3lock_pb2.LockRequest(name=b"m", lease=a), timeout=T)  # same lease: same hold
    assert again.key == held.key and again.header.revision == held.header.revision

    waiting = lock.Lock.future(v3lock_pb2.LockRequest(name=b"m", lease=b), timeout=30)
    wait_for(lambda: len(keys(kv, b"m/")) == 2, 10, "the waiter's key")
    assert not waiting.done()
    unlocked = lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=T)
    got = waiting.result(timeout=20)
    assert got.key == b"m/" + hexid(b) and got.header.revision >= unlocked.header.revision
    assert keys(kv, b"m/") == [got.key]


def test_lock_errors_are_unknown_with_etcds_message(stubs):
    _, kv, lock, _ = stubs
    for bad in (777, -7):
        assert status_of(lambda: lock.Lock(v3lock_pb2.LockRequest(name=b"m", lease=bad), timeout=T)) == (
            grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
    assert status_of(lambda: lock.Unlock(v3lock_pb2.UnlockRequest(key=b""), timeout=T)) == (
        grpc.StatusCode.UNKNOWN, "etcdserver: key is not provided")
    rev = kv.Range(rpc_pb2.RangeRequest(key=b"nothing"), timeout=T).header.revision
    # an Unlock of a key that does not exist is OK and changes nothing
    assert lock.Unlock(v3lock_pb2.UnlockRequest(key=b"nothing"), timeout=T).header.revision == rev


def test_lock_with_lease_0_gets_a_session_lease(stubs):
    lease, kv, lock, _ = stubs
    got = lock.Lock(v3lock_pb2.LockRequest(name=b"z", lease=0), timeout=T)
    [kvs] = kv.Range(rpc_pb2.RangeRequest(key=got.key), timeout=T).kvs
    assert got.key == b"z/" + format(kvs.lease, "x").encode()
    ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=kvs.lease), timeout=T)
    assert ttl.grantedTTL == 60  # etcd's session TTL


def test_a_cancelled_waiter_deletes_its_key(stubs):
    lease, kv, lock, _ = stubs
    a, b = grant(lease), grant(lease)
    held = lock.Lock(v3lock_pb2.LockRequest(name=b"c", lease=a), timeout=T).key
    waiting = lock.Lock.future(v3lock_pb2.LockRequest(name=b"c", lease=b), timeout=60)
    wait_for(lambda: len(keys(kv, b"c/")) == 2, 10, "the waiter's key")
    waiting.cancel()
    wait_for(lambda: keys(kv, b"c/") == [held], 10, "the cancelled waiter's key deleted")
    assert status_of(lambda: lock.Lock(v3lock_pb2.LockRequest(name=b"c", lease=b), timeout=1))[0] == (
        grpc.StatusCode.DEADLINE_EXCEEDED)
    wait_for(lambda: keys(kv, b"c/") == [held], 10, "the timed-out waiter's key deleted")


def test_a_waiter_whose_lease_goes_fails(stubs):
    lease, kv, lock, _ = stubs
    a, b = grant(lease), grant(lease)
    lock.Lock(v3lock_pb2.LockRequest(name=b"x", lease=a), timeout=T)
    waiting = lock.Lock.future(v3lock_pb2.LockRequest(name=b"x", lease=b), timeout=30)
    wait_for(lambda: len(keys(kv, b"x/")) == 2, 10, "the waiter's key")
    lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=b), timeout=T)
    with pytest.raises(grpc.RpcError) as info:
        waiting.result(timeout=20)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNKNOWN, "mutex: session is expired")


# --- v3election --------------------------------------------------------------------------------
def test_election_campaign_proclaim_leader_resign(stubs):
    lease, kv, _, el = stubs
    a = grant(lease)
    assert status_of(lambda: el.Leader(v3election_pb2.LeaderRequest(name=b"e"), timeout=T)) == (
        grpc.StatusCode.UNKNOWN, "election: no leader")
    c = el.Campaign(v3election_pb2.CampaignRequest(name=b"e", lease=a, value=b"v1"), timeout=T)
    r = c.header.revision
    assert (c.leader.name, c.leader.key, c.leader.rev, c.leader.lease) == (b"e", b"e/" + hexid(a), r, a)
    again = el.Campaign(v3election_pb2.CampaignRequest(name=b"e", lease=a, value=b"v2"), timeout=T)
    assert (again.leader.rev, again.header.revision) == (r, r)  # the first txn's header; v2 proclaimed
    got = el.Leader(v3election_pb2.LeaderRequest(name=b"e"), timeout=T)
    assert (got.kv.key, got.kv.value, got.kv.create_revision, got.header.revision) == (c.leader.key, b"v2", r, r + 1)

    assert el.Proclaim(v3election_pb2.ProclaimRequest(leader=c.leader, value=b"v3"), timeout=T).header.revision == r + 2
    stale = v3election_pb2.LeaderKey(name=b"e", key=c.leader.key, rev=r + 99, lease=a)
    assert status_of(lambda: el.Proclaim(v3election_pb2.ProclaimRequest(leader=stale, value=b"x"), timeout=T)) == (
        grpc.StatusCode.UNKNOWN, "election: not leader")
    for call in (el.Proclaim, el.Resign):
        req = v3election_pb2.ProclaimRequest(value=b"x") if call is el.Proclaim else v3election_pb2.ResignRequest()
        assert status_of(lambda: call(req, timeout=T)) == (grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
    assert el.Resign(v3election_pb2.ResignRequest(leader=stale), timeout=T).header.revision == r + 2  # not ours: OK
    assert el.Resign(v3election_pb2.ResignRequest(leader=c.leader), timeout=T).header.revision == r + 3
    assert keys(kv, b"e/") == []


def test_campaign_waits_for_the_leader_and_observe_follows(stubs):
    lease, kv, _, el = stubs
    a, b = grant(lease), grant(lease)
    ka, kb = b"o/" + hexid(a), b"o/" + hexid(b)
    seen: list[tuple[bytes, bytes]] = []
    observe = el.Observe(v3election_pb2.LeaderRequest(name=b"o"), timeout=60)

    def read() -> None:
        try:
            for resp in observe:
                seen.append((resp.kv.key, resp.kv.value))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        first = el.Campaign(v3election_pb2.CampaignRequest(name=b"o", lease=a, value=b"a1"), timeout=T)
        wait_for(lambda: seen == [(ka, b"a1")], 10, "the first leader observed")
        second = el.Campaign.future(v3election_pb2.CampaignRequest(name=b"o", lease=b, value=b"b1"), timeout=30)
        wait_for(lambda: len(keys(kv, b"o/")) == 2, 10, "the second candidate's key")
        el.Proclaim(v3election_pb2.ProclaimRequest(leader=first.leader, value=b"a2"), timeout=T)
        wait_for(lambda: seen[-1:] == [(ka, b"a2")], 10, "the proclamation observed")
        assert not second.done()
        el.Resign(v3election_pb2.ResignRequest(leader=first.leader), timeout=T)
        won = second.result(timeout=20)
        assert won.leader.key == kb
        wait_for(lambda: seen[-1:] == [(kb, b"b1")], 10, "the next leader observed")
        assert seen == [(ka, b"a1"), (ka, b"a2"), (kb, b"b1")]
    finally:
        observe.cancel()
        reader.join(10)


def test_a_cancelled_campaign_resigns(stubs):
    lease, kv, _, el = stubs
    a, b = grant(lease), grant(lease)
    el.Campaign(v3election_pb2.CampaignRequest(name=b"r", lease=a, value=b"a"), timeout=T)
    assert status_of(lambda: el.Campaign(v3election_pb2.CampaignRequest(name=b"r", lease=b, value=b"b"),
                                         timeout=1))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: keys(kv, b"r/") == [b"r/" + hexid(a)], 10, "the cancelled candidate's key deleted")


# --- etcdctl ---------------------------------------------------------------------------------
def etcdctl(node, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, "--endpoints", node.grpc_endpoint, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"})


@needs_etcdctl
def test_etcdctl_lease_commands(node):
    g = etcdctl(node, "lease", "grant", "100")
    assert g.returncode == 0 and g.stdout.endswith(" granted with TTL(100s)\n"), g
    lid = g.stdout.split()[1]
    assert etcdctl(node, "put", "k1", "v", "--lease", lid).stdout == "OK\n"
    out = etcdctl(node, "lease", "timetolive", "--keys", lid).stdout
    assert out.startswith(f"lease {lid} granted with TTL(100s), remaining(") and out.endswith(
        "s), attached keys([k1])\n"), out
    listed = etcdctl(node, "lease", "list").stdout.splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases" and lid in listed[1:]
    assert etcdctl(node, "lease", "keep-alive", "--once", lid).stdout == f"lease {lid} keepalived with TTL(100)\n"
    missing = etcdctl(node, "lease", "keep-alive", "--once", "123")
    assert (missing.returncode, missing.stderr) == (2, "Error: etcdserver: requested lease not found\n")
    assert etcdctl(node, "lease", "revoke", lid).stdout == f"lease {lid} revoked\n"
    again = etcdctl(node, "lease", "revoke", lid)
    assert again.returncode == 1 and again.stderr.endswith(
        "Error: failed to revoke lease (etcdserver: requested lease not found)\n"), again
    assert etcdctl(node, "lease", "timetolive", lid).stdout == f"lease {lid} already expired\n"
    big = etcdctl(node, "lease", "grant", "9000000001")
    assert big.returncode == 1 and big.stderr.endswith("Error: failed to grant lease (etcdserver: too large lease TTL)\n")


@needs_etcdctl
def test_etcdctl_lock_runs_a_command_under_the_lock(node):
    done = etcdctl(node, "lock", "mylock", "--", "sh", "-c", 'echo "$ETCD_LOCK_KEY"')
    assert done.returncode == 0 and done.stdout.startswith("mylock/"), done
    key = done.stdout.strip()
    with grpc.insecure_channel(node.grpc_endpoint) as ch:  # unlocked on exit
        assert not rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=key.encode()), timeout=T).kvs


@needs_etcdctl
def test_etcdctl_elect_campaigns_and_resigns_on_sigint(node):
    proc = subprocess.Popen([ETCDCTL, "--endpoints", node.grpc_endpoint, "elect", "myelection", "p1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ETCDCTL_API": "3"})
    try:
        assert proc.stdout is not None
        key = proc.stdout.readline().strip()
        assert key.startswith("myelection/") and proc.stdout.readline() == "p1\n"
        with grpc.insecure_channel(node.grpc_endpoint) as ch:
            el = v3election_pb2_grpc.ElectionStub(ch)
            got = el.Leader(v3election_pb2.LeaderRequest(name=b"myelection"), timeout=T)
            assert (got.kv.key, got.kv.value) == (key.encode(), b"p1")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
            assert status_of(lambda: el.Leader(v3election_pb2.LeaderRequest(name=b"myelection"), timeout=T))[1] == (
                "election: no leader")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- as the caller, under auth -------------------------------------------------------------------
def test_lock_and_election_requests_are_made_as_the_caller(tmp_path):
    """With auth enabled every native request of a Lock or a Campaign carries the caller's
    token: a user may lock under the prefix it may write and nowhere else, and a waiter is
    handed the lock although the gRPC actor's own watch sees nothing under auth (the
    waiter's poll, read as the caller, decides)."""
    n = NodeProcess(tmp_path, grpc=True).start()
    try:
        def ok(req: dict) -> dict:
            reply = n.request(req)
            assert reply is not None and reply.get("ok"), reply
            return reply

        ok({"op": "user_add", "name": "root", "password": "rootpw"})
        ok({"op": "user_grant_role", "name": "root", "role": "root"})
        ok({"op": "auth_enable"})
        root = ok({"op": "authenticate", "name": "root", "password": "rootpw"})["token"]
        ok({"op": "user_add", "name": "u", "password": "upw", "token": root})
        ok({"op": "role_add", "name": "ru", "token": root})
        ok({"op": "role_grant_permission", "name": "ru", "token": root,
            "perm": {"perm_type": "READWRITE", "key": b"mine/", "range_end": b"mine0"}})
        ok({"op": "user_grant_role", "name": "u", "role": "ru", "token": root})
        tok = ok({"op": "authenticate", "name": "u", "password": "upw"})["token"]
        md = (("token", tok),)
        with grpc.insecure_channel(n.grpc_endpoint) as ch:
            lease, lock = rpc_pb2_grpc.LeaseStub(ch), v3lock_pb2_grpc.LockStub(ch)
            el = v3election_pb2_grpc.ElectionStub(ch)
            a = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=T, metadata=md).ID
            b = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=T, metadata=md).ID
            assert status_of(lambda: lock.Lock(v3lock_pb2.LockRequest(name=b"mine", lease=a), timeout=T)) == (
                grpc.StatusCode.UNKNOWN, "etcdserver: user name is empty")
            assert status_of(lambda: lock.Lock(v3lock_pb2.LockRequest(name=b"theirs", lease=a), timeout=T,
                                               metadata=md)) == (grpc.StatusCode.UNKNOWN, "etcdserver: permission denied")
            held = lock.Lock(v3lock_pb2.LockRequest(name=b"mine", lease=a), timeout=T, metadata=md)
            waiting = lock.Lock.future(v3lock_pb2.LockRequest(name=b"mine", lease=b), timeout=30, metadata=md)
            lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=T, metadata=md)
            assert waiting.result(timeout=20).key == b"mine/" + hexid(b)
            assert status_of(lambda: el.Campaign(v3election_pb2.CampaignRequest(name=b"theirs", lease=a, value=b"v"),
                                                 timeout=T, metadata=md)) == (
                grpc.StatusCode.UNKNOWN, "etcdserver: permission denied")
            c = el.Campaign(v3election_pb2.CampaignRequest(name=b"mine/e", lease=a, value=b"v"), timeout=T,
                            metadata=md)
            assert c.leader.key == b"mine/e/" + hexid(a)
            ka = list(lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=a)]), timeout=T, metadata=md))
            assert [(x.ID, x.TTL) for x in ka] == [(a, 30)]
    finally:
        n.stop()


@needs_etcdctl
def test_etcdctl_elect_listen_prints_the_leader(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        lease = rpc_pb2_grpc.LeaseStub(ch)
        el = v3election_pb2_grpc.ElectionStub(ch)
        a = grant(lease)
        c = el.Campaign(v3election_pb2.CampaignRequest(name=b"listened", lease=a, value=b"first"), timeout=T)
        proc = subprocess.Popen([ETCDCTL, "--endpoints", node.grpc_endpoint, "elect", "-l", "listened"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "ETCDCTL_API": "3"})
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == c.leader.key.decode() + "\n" and proc.stdout.readline() == "first\n"
        finally:
            proc.kill()
            proc.wait()
