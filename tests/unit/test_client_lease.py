"""Client leases against the fake gateway (tests/fakeserver.py): API shapes, the
keep-alive thread, leader redirects and failover of keep-alives, and qkvctl's lease
commands with etcdctl 3.4's output."""
from __future__ import annotations

import io
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import FakeServer, FakeStore  # noqa: E402
from protocol.client import Client  # noqa: E402
from protocol.client.cli import run  # noqa: E402
from protocol.client.types import (  # noqa: E402
    LeaseGrantResponse, LeaseLeasesResponse, LeaseTimeToLiveResponse,
)
from protocol.errors import LeaseExists, LeaseNotFound  # noqa: E402


def test_grant_timetolive_keepalive_revoke(client, srv):
    g = client.lease_grant(10)
    assert isinstance(g, LeaseGrantResponse) and g.id > 0 and g.ttl == 10
    assert g.header.cluster_id and g.header.revision == 1
    assert client.lease_grant(0).ttl == srv.store.min_ttl  # raised to the server minimum
    client.put("a", "1", lease=g.id)
    client.put("b", "2", lease=g.id)
    ttl = client.lease_time_to_live(g.id, keys=True)
    assert isinstance(ttl, LeaseTimeToLiveResponse)
    assert ttl.id == g.id and ttl.granted_ttl == 10 and 8 <= ttl.ttl <= 10 and ttl.keys == [b"a", b"b"]
    assert client.lease_time_to_live(g.id).keys == []
    assert client.lease_keepalive_once(g.id) == (g.id, 10)
    leases = client.lease_leases()
    assert isinstance(leases, LeaseLeasesResponse) and g.id in [l.id for l in leases.leases]
    rev = client.lease_revoke(g.id).header.revision
    assert client.get("a").count == 0 and client.get("b").count == 0
    assert client.get("a").header.revision == rev == 4  # both keys in one revision
    assert client.lease_time_to_live(g.id).ttl == -1
    with pytest.raises(LeaseNotFound):
        client.lease_keepalive_once(g.id)
    with pytest.raises(LeaseNotFound):
        client.lease_revoke(g.id)
    with pytest.raises(LeaseNotFound):
        client.put("c", "x", lease=g.id)


def test_grant_with_an_id_and_lease_exists(client, srv):
    g = client.lease_grant(5, id=0x1234)
    assert g.id == 0x1234
    with pytest.raises(LeaseExists):
        client.lease_grant(5, id=0x1234)
    # the lease id travels as "ID", never as the envelope's "id"
    req = [r for r in srv.requests if r.get("op") == "lease_grant"][0]
    assert req["ID"] == 0x1234 and req["id"] != 0x1234


def test_lease_context_manager_keeps_alive_and_revokes(client, srv):
    with client.lease(2) as lease:  # 2 s: a keep-alive every ~0.67 s
        client.put("svc/me", "addr", lease=lease.id)
        time.sleep(3.2)  # well past the TTL
        assert lease.alive and lease.keepalives >= 3
        assert client.get("svc/me").count == 1
        assert client.lease_time_to_live(lease.id).ttl >= 1
    assert not lease.alive and lease.lost_reason == "revoked"
    assert client.get("svc/me").count == 0
    assert client.lease_time_to_live(lease.id).ttl == -1


def test_lease_lost_when_revoked_elsewhere(client):
    lost = []
    lease = client.lease(2, on_lost=lost.append)
    try:
        client.lease_revoke(lease.id)
        assert lease.done.wait(3)
        assert "not found" in lease.lost_reason and lost == [lease]
    finally:
        lease.close()


def test_lease_lost_when_no_keepalive_gets_through(srv, make_client):
    with make_client([srv.endpoint], timeout=1) as c:
        lease = c.lease(2)
        try:
            srv.drop_replies = True  # the member is gone: nothing answers
            t0 = time.monotonic()
            assert lease.done.wait(4)
            # lost by the client's own deadline (<= the server's): not later than the TTL
            assert time.monotonic() - t0 <= 2.5 and "deadline" in lease.lost_reason
        finally:
            srv.drop_replies = False
            lease.close()


def test_keepalives_follow_not_leader_hint(make_client):
    store = FakeStore()
    with FakeServer(store=store) as leader, FakeServer(store=store) as follower:
        follower.leader_urls = [leader.endpoint]
        with make_client([follower.endpoint], timeout=3) as c:
            lid = c.lease_grant(10).id
            assert c.lease_keepalive_once(lid) == (lid, 10)
            assert leader.ops_received("lease_keepalive") == 1
            assert follower.ops_received("lease_keepalive") == 1  # answered not_leader
            assert c.lease_time_to_live(lid).ttl > 0
            # the router remembers the leader: no more detours
            c.lease_keepalive_once(lid)
            assert follower.ops_received("lease_keepalive") == 1


def test_keepalives_survive_failover_to_another_endpoint(make_client):
    """The member serving keep-alives dies; the thread moves to the other endpoint
    (a new leader) and the lease never lapses."""
    store = FakeStore()
    a, b = FakeServer(store=store).start(), FakeServer(store=store).start()
    try:
        b.leader_urls = [a.endpoint]  # b is a follower while a leads
        with make_client([a.endpoint, b.endpoint], timeout=2) as c:
            with c.lease(2) as lease:
                c.put("k", "v", lease=lease.id)
                time.sleep(1.0)
                assert a.ops_received("lease_keepalive") >= 1
                a.drop_replies = True     # a dies (its replies never come)
                b.leader_urls = None      # and b becomes the leader
                time.sleep(3.5)           # > TTL: only keep-alives through b keep it
                assert lease.alive, lease.lost_reason
                assert b.ops_received("lease_keepalive") >= 2
                assert store.leases.get(lease.id) is not None
                assert c.get("k", serializable=True).count == 1
            assert lease.id not in store.leases
    finally:
        a.stop()
        b.stop()


def test_timetolive_goes_to_the_leader_through_a_hint_with_wildcard_host(make_client):
    store = FakeStore()
    with FakeServer(store=store) as leader, FakeServer(store=store) as follower:
        port = leader.endpoint.rsplit(":", 1)[1]
        follower.leader_urls = [f"tcp://0.0.0.0:{port}"]  # bound to every interface
        with make_client([follower.endpoint], timeout=3) as c:
            lid = c.lease_grant(10).id
            assert c.lease_time_to_live(lid).granted_ttl == 10
            assert leader.ops_received("lease_timetolive") == 1


# -- qkvctl -----------------------------------------------------------------------------------
@pytest.fixture
def ctl(srv, capsys, monkeypatch):
    def call(*argv: str):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
        capsys.readouterr()
        rc = run(["--endpoints", srv.address, "--command-timeout", "2s", *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


def test_qkvctl_lease_commands(ctl, srv):
    rc, out, err = ctl("lease", "grant", "10")
    assert rc == 0 and err == ""
    lid = out.split()[1]
    assert out == f"lease {lid} granted with TTL(10s)\n" and len(lid) == 16
    assert ctl("put", "--lease", lid, "foo", "bar")[0] == 0
    assert ctl("put", "--lease", lid, "zoo", "bar")[0] == 0
    rc, out, _ = ctl("lease", "timetolive", lid)
    assert rc == 0 and out.startswith(f"lease {lid} granted with TTL(10s), remaining(")
    rc, out, _ = ctl("lease", "timetolive", "--keys", lid)
    assert out.endswith("s), attached keys([foo zoo])\n")
    rc, out, _ = ctl("lease", "list")
    assert out == f"found 1 leases\n{lid}\n"
    assert ctl("lease", "keep-alive", "--once", lid)[1] == f"lease {lid} keepalived with TTL(10)\n"
    assert ctl("lease", "revoke", lid) == (0, f"lease {lid} revoked\n", "")
    assert ctl("lease", "timetolive", lid) == (0, f"lease {lid} already expired\n", "")
    assert ctl("get", "foo") == (0, "", "")


def test_qkvctl_lease_errors_and_formats(ctl, srv):
    assert ctl("lease", "revoke", "ffff") == (
        1, "", "Error: failed to revoke lease (etcdserver: requested lease not found)\n")
    assert ctl("lease", "keep-alive", "--once", "ffff") == (
        2, "", "Error: etcdserver: requested lease not found\n")
    assert ctl("lease", "timetolive", "ffff") == (0, "lease 000000000000ffff already expired\n", "")
    assert ctl("lease", "timetolive", "zz") == (
        128, "", 'Error: bad lease ID arg (strconv.ParseInt: parsing "zz": invalid syntax), '
                 "expecting ID in Hex\n")
    assert ctl("lease", "grant", "abc") == (
        128, "", 'Error: bad TTL (strconv.ParseInt: parsing "abc": invalid syntax)\n')
    assert ctl("lease", "revoke") == (128, "", "Error: lease revoke command needs 1 argument\n")
    assert ctl("lease", "grant", "5", "-w", "table") == (
        4, "", "Error: table not supported as output format\n")
    rc, out, _ = ctl("lease", "grant", "5", "-w", "json")
    import json

    j = json.loads(out)
    assert rc == 0 and j["TTL"] == 5 and j["Error"] == "" and j["ID"] > 0 and j["revision"] == 1
    assert list(j)[:4] == ["cluster_id", "member_id", "revision", "raft_term"]
    j = json.loads(ctl("lease", "timetolive", "ffff", "-w", "json")[1])
    assert (j["id"], j["ttl"], j["granted-ttl"], j["keys"]) == (0xFFFF, -1, 0, None)
    j = json.loads(ctl("lease", "list", "-w", "json")[1])
    assert len(j["leases"]) == 1 and set(j["leases"][0]) == {"id"}
    rc, out, _ = ctl("lease", "grant", "7", "-w", "fields")
    lines = out.splitlines()
    assert lines[0].startswith('"ClusterID" : ') and lines[4].startswith('"ID" : ') and lines[5] == '"TTL" : 7'


@pytest.mark.threaded_only  # qkvctl's subprocess; the Client only grants and revokes
def test_qkvctl_keep_alive_until_revoked(srv):
    """`lease keep-alive <id>` prints one line per keep-alive and ends when the lease goes."""
    import subprocess

    with Client([srv.endpoint]) as c:
        lid = c.lease_grant(2).id
        proc = subprocess.Popen([sys.executable, "-c", "from protocol.client.cli import main; main()",
                                 "--endpoints", srv.address, "lease", "keep-alive", f"{lid:x}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            head = [proc.stdout.readline(), proc.stdout.readline()]  # two keep-alives, then revoke
            c.lease_revoke(lid)
            rest, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(head) + rest, err)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr
    assert lines[0] == f"lease {lid:016x} keepalived with TTL(2)" and len(lines) >= 3
    assert lines[-1] == f"lease {lid:016x} expired or revoked."
