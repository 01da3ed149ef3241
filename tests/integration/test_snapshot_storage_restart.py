"""A storage actor that dies while a snapshot is being made or installed is restarted alone
by the supervisor; its consensus actor must not wait for the answer the dead process took
with it (actors/consensus/actor.py, "Snapshots")."""
from __future__ import annotations

import signal

from nodeproc import ok, put_burst, wait_for


def test_a_follower_whose_storage_dies_in_a_snapshot_install_gets_the_snapshot_again(cluster_factory):
    cluster = cluster_factory(3, args=["--snapshot-count", "1000"])
    leader = cluster.leader()
    lagging = next(n for n in cluster.nodes if n is not leader)
    others = [n for n in cluster.nodes if n is not lagging]
    lagging.stop()
    behind = ok(leader.request({"op": "status"}))["raft_index"]  # a quiet cluster: it holds no more
    put_burst(leader.client_url, 3000, b"load/", window=200, value=b"x" * 100)
    wait_for(lambda: all(n.compacted_past(behind) for n in others), 60,
             f"the log compacted past index {behind} on the running members")
    # It comes back cut off, so its storage can be frozen before the snapshot arrives.
    cluster.partition([lagging], others)
    seen = len(lagging.log_text())
    lagging.start(wait=False)
    # Consensus tells a new storage process by the connection its fetches come from: freeze
    # this one only once consensus has heard from it.
    wait_for(lambda: '"storage_connected"' in lagging.log_text()[seen:], 30, "the member's storage to connect")
    cluster._write_faults(lagging, [], [])  # its own side first: its status needs its storage
    lagging.kill_actor("storage", signal.SIGSTOP)
    for n in others:
        cluster._write_faults(n, [], [])
    wait_for(lambda: '"snapshot_received"' in lagging.log_text()[seen:], 60, "the snapshot to arrive")
    # The INSTALL waits in the frozen process: kill it; the supervisor starts another.
    lagging.kill_actor("storage")
    wait_for(lambda: '"snapshot_installed"' in lagging.log_text()[seen:], 60, "the snapshot installed after all")
    lagging.wait_ready(30)
    assert len(cluster.converged_hashes()) == 1
