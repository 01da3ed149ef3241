"""Issue 11's peer-port attacks against real 3-node clusters, and a secure cluster end to end.

With peer security on, each attack frame is sent by an attacker without a key (NULL), with
its own unknown key, and with a member's stolen key claiming to be another member; the
ones that the typed decoders cover (a bad forwarded entry, snapshot path traversal, an
unknown member op, a bad snapshot id, PEER_REMOVED on the wrong link) also against a
cluster without peer security. Each time: leader and term unchanged, no actor restarted,
the cluster writable, no file written outside the data dirs, no `removed` marker.
Every node is stopped by the fixture, pass or fail."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from peer_attack import FAST, Attacker, keygen, member_keypair, plain_cluster, secure_cluster

from actors.consensus.raft import Message, MessageType
from actors.runtime import messages as M
from nodeproc import NodeProcess, promote_when_ready, wait_for
from protocol import errors
from protocol.client import Client

SPOOFED_ENTRY = msgpack.packb([0, 0, {"op": "put"}, None], use_bin_type=True)
HANDSHAKE_OK = zmq.EVENT_HANDSHAKE_SUCCEEDED
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)


def state(cluster) -> dict:
    lead = cluster.leader()
    st = lead.request({"op": "status"})
    return {"leader": lead.member_id, "term": st["raft_term"],
            "pids": {n.name: n.actor_pids() for n in cluster.nodes}}


def attack_frames(cluster, lead: NodeProcess, follower: NodeProcess, target_dir: Path) -> list[tuple]:
    """(node, msg_type, body) of every attack at the top of issue 11, `follower` spoofed."""
    traversal = "x/" + "../" * 30 + str(target_dir).lstrip("/")
    snap_id_frames = [(n, M.PEER_SNAP_CHUNK, [follower.member_id, sid, 0, "", 0, b"", False, None, None])
                      for n in cluster.nodes for sid in ("/..", "/../../x", "x/../../")]
    return [
        (lead, M.PEER_FORWARD, [follower.member_id, [[1, SPOOFED_ENTRY]]]),
        (lead, M.PEER_FORWARD, [follower.member_id, [[2, msgpack.packb(
            [follower.member_id, 0, {"op": "put"}, None], use_bin_type=True)]]]),
        *[(n, M.PEER_REMOVED, [o.member_id]) for n in cluster.nodes for o in cluster.nodes if o is not n],
        (lead, M.PEER_SNAP_CHUNK, [follower.member_id, traversal, 0, "", 0, b"", False, None, None]),
        (lead, M.PEER_SNAP_CHUNK, [follower.member_id, traversal, 1, "pwned", 0, b"evil", False, None, None]),
        (lead, M.PEER_MEMBER, [follower.member_id, 1, {"op": "member_explode"}]),
        (lead, M.PEER_MEMBER, [follower.member_id, 2, {"op": "member_add"}]),
        *snap_id_frames,
    ]


def vote_frames(lead: NodeProcess, follower: NodeProcess, term: int) -> list[tuple]:
    return [(lead, M.PEER_RAFT, [follower.member_id, [Message(
        MessageType.VOTE, lead.member_id, follower.member_id, term=t, log_term=term, index=10**6).to_wire()]])
        for t in (2**63 - 1, term + 1)]


def send_all(frames: list[tuple], key_mode: str, stolen: tuple[bytes, bytes] | None = None) -> list[str]:
    """Send each frame on its own attacker connection; the handshake outcome of each."""
    outcomes = []
    for node, msg_type, body in frames:
        server_key = None if key_mode == "none" else node.peer_key
        with Attacker(node.peer_url, server_key, stolen if key_mode == "stolen" else None,
                      monitor_events=HANDSHAKE_OK | HANDSHAKE_FAILED) as a:
            mon = a.monitor
            assert mon is not None
            a.send(msg_type, body)  # queued before the handshake: nothing may get through
            outcomes.append(_handshake(mon))
            if outcomes[-1] == "ok":
                a.sock.setsockopt(zmq.LINGER, 2000)  # the close waits until the queued frame left
            a.sock.disable_monitor()
            mon.close(0)
    return outcomes


def _handshake(mon: zmq.Socket) -> str:
    from zmq.utils.monitor import recv_monitor_message

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if mon.poll(100):
            ev = recv_monitor_message(mon)["event"]
            if ev == HANDSHAKE_OK:
                return "ok"
            if ev & HANDSHAKE_FAILED:
                return "failed"
    return "timeout"


def assert_no_effect(cluster, before: dict, target_dir: Path, tmp_path: Path) -> None:
    assert os.listdir(target_dir) == ["canary"], "a snapshot chunk wrote outside its directory"
    assert not list(tmp_path.rglob("pwned"))
    for n in cluster.nodes:
        assert not os.path.exists(os.path.join(n.data_dir, "removed")), f"{n.name} wrote a removed marker"
    with Client([n.client_url for n in cluster.nodes], timeout=10) as c:
        c.put(b"after-attack", b"ok")
        assert c.get(b"after-attack").kvs[0].value == b"ok"
    after = state(cluster)
    assert after["leader"] == before["leader"], "the leader changed"
    assert after["term"] == before["term"], "the term changed"
    assert after["pids"] == before["pids"], "an actor restarted"
    for n in cluster.nodes:
        log = n.log_text()
        assert "actor_died" not in log and "actor_crashed" not in log, log[-2000:]
        assert "member_removed" not in log and "removed_by_peer" not in log


@pytest.fixture
def target_dir(tmp_path):
    d = tmp_path / "victim"
    d.mkdir()
    (d / "canary").write_text("x")
    return d


@pytest.mark.parametrize("key_mode", ["none", "own", "stolen"])
def test_peer_attacks_with_security_on(cluster_factory, tmp_path, target_dir, key_mode):
    cluster = secure_cluster(cluster_factory, tmp_path)
    before = state(cluster)
    lead = cluster.by_id(before["leader"])
    f1, f2 = [n for n in cluster.nodes if n is not lead]
    frames = attack_frames(cluster, lead, f1, target_dir) + vote_frames(lead, f1, before["term"])
    # "stolen": f2's key, claiming to be f1 (a member key replayed under another id).
    stolen = member_keypair(f2.secret_file) if key_mode == "stolen" else None
    frames = [fr for fr in frames if not (key_mode == "stolen" and fr[0] is f2)]  # f2 would not admit itself
    outcomes = send_all(frames, key_mode, stolen)
    if key_mode == "stolen":
        assert set(outcomes) == {"ok"}, outcomes  # the key is trusted: the frames arrive...
        wait_for(lambda: all("peer_spoofed_sender_dropped" in n.log_text() for n in (lead, f1)), 10,
                 "the spoofed frames to be dropped")  # ...and are dropped for their claimed sender
    else:
        assert "ok" not in outcomes, outcomes  # no handshake ever completes: nothing arrives
    assert_no_effect(cluster, before, target_dir, tmp_path)


def test_member_key_under_its_own_id_still_cannot_send_bad_frames(cluster_factory, tmp_path, target_dir):
    """A member's key replayed under its own id passes authentication; the decoders still
    refuse the bad entry, the traversal, the unknown member op, the bad snap ids."""
    cluster = secure_cluster(cluster_factory, tmp_path)
    before = state(cluster)
    lead = cluster.by_id(before["leader"])
    f1 = next(n for n in cluster.nodes if n is not lead)
    frames = [fr for fr in attack_frames(cluster, lead, f1, target_dir) if fr[0] is not f1]
    outcomes = send_all(frames, "stolen", member_keypair(f1.secret_file))
    assert set(outcomes) == {"ok"}, outcomes
    wait_for(lambda: "peer_garbage_dropped" in lead.log_text(), 10, "the leader to drop the frames")
    assert_no_effect(cluster, before, target_dir, tmp_path)


def test_decoder_covered_attacks_with_security_off(cluster_factory, tmp_path, target_dir):
    cluster = plain_cluster(cluster_factory)
    before = state(cluster)
    lead = cluster.by_id(before["leader"])
    f1 = next(n for n in cluster.nodes if n is not lead)
    frames = attack_frames(cluster, lead, f1, target_dir)
    frames += [vote_frames(lead, f1, before["term"])[0]]  # 2^63-1 is refused by the decoder too
    for n in cluster.nodes:
        n.peer_key = None
    outcomes = send_all(frames, "none")
    assert set(outcomes) == {"ok"}, outcomes
    wait_for(lambda: all("peer_garbage_dropped" in n.log_text() for n in cluster.nodes), 10,
             "every node to drop the frames")
    assert_no_effect(cluster, before, target_dir, tmp_path)


# --- a secure cluster end to end -------------------------------------------------------------
def qkvctl(nodes: list[NodeProcess], *args: str) -> str:
    endpoints = ",".join(n.client_url for n in nodes)
    proc = subprocess.run([sys.executable, "-c", "from protocol.client.cli import main; main()",
                           "--endpoints", endpoints, "--command-timeout", "10s", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"qkvctl {args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_secure_cluster_end_to_end(cluster_factory, tmp_path):
    cluster = secure_cluster(cluster_factory, tmp_path)
    live = list(cluster.nodes)
    with Client([n.client_url for n in live], timeout=10) as c:
        for i in range(20):
            c.put(f"k{i}".encode(), b"v")
    # leader kill -9 and failover
    old = cluster.leader()
    old.kill()
    live = [n for n in cluster.nodes if n is not old]
    new = cluster.leader(live, timeout=20)
    assert new is not old
    with Client([n.client_url for n in live], timeout=10) as c:
        def put_after_failover() -> bool:
            try:
                c.put(b"after-failover", b"v")
                return True
            except errors.NoLeader:  # a second election right after the first (a loaded machine)
                return False

        wait_for(put_after_failover, 30, "a write after the failover")
    old.start()
    live = list(cluster.nodes)
    cluster.leader(live, timeout=20)

    # member add of a 4th node with its key, as a learner, then promote
    n4 = NodeProcess(tmp_path, "n4")
    cluster.nodes.append(n4)  # stopped by the fixture
    public, public_file, secret_file = keygen(tmp_path, "n4")
    missing = subprocess.run([sys.executable, "-c", "from protocol.client.cli import main; main()",
                              "--endpoints", live[0].client_url, "member", "add", "n4",
                              f"--peer-urls={n4.peer_url}", "--learner"], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "peer_key" in missing.stdout + missing.stderr
    out = qkvctl(live, "member", "add", "n4", f"--peer-urls={n4.peer_url}", "--learner", f"--peer-key={public_file}")
    env = dict(line.split("=", 1) for line in out.splitlines()[2:] if "=" in line)
    n4.member_id = int(out.split()[1], 16)
    keys = env["QKV_INITIAL_CLUSTER_KEYS"].strip("'")
    assert f"n4={public}" in keys and all(f"{n.name}={n.peer_key}" in keys for n in live)
    n4.args = ["--initial-cluster", env["QKV_INITIAL_CLUSTER"].strip('"'),
               "--initial-advertise-peer-urls", env["QKV_INITIAL_ADVERTISE_PEER_URLS"].strip('"'),
               "--initial-cluster-state", "existing", "--peer-key-file", secret_file,
               "--initial-cluster-keys", keys, "--test-fault-injection", *FAST]
    n4.peer_key, n4.secret_file = public, secret_file
    n4.start(timeout=30)
    with Client([n.client_url for n in live], timeout=10) as c:
        promote_when_ready(c, n4.member_id)
        assert {m.id: m.is_learner for m in c.member_list().members}[n4.member_id] is False
        assert {m.id: m.peer_key for m in c.member_list().members}[n4.member_id] == public
        c.put(b"with-n4", b"v")
    wait_for(lambda: n4.request({"op": "range", "key": b"with-n4", "serializable": True}, timeout=1)
             .get("kvs"), 20, "n4 to replicate")

    # member remove, then n4's key is refused by every member
    with Client([n.client_url for n in live], timeout=10) as c:
        c.member_remove(n4.member_id)
    wait_for(lambda: n4.proc.poll() is not None, 20, "the removed member to stop")
    for n in live:
        outcome = send_all([(n, M.PEER_HELLO, [n4.member_id, {}])], "stolen", member_keypair(secret_file))
        assert outcome == ["failed"], (n.name, outcome)
    with Client([n.client_url for n in live], timeout=10) as c:
        c.put(b"after-remove", b"v")
