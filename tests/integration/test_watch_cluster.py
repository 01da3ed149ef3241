"""The watch across a 3-node cluster: a watcher survives the loss of its node by resuming
on another one (no gap, no duplicate), and never goes back in time when it lands on a
node that is behind (etcd bug #15271)."""
from __future__ import annotations

import time

from nodeproc import wait_for
from protocol.client import Client
from test_watch_support import Consumer, Load, check_exact, check_ordered, truth, wait_delivered

PFX, END = b"w/", b"w0"


def test_watch_resumes_on_another_node_when_its_node_is_killed(cluster_factory, make_client):
    """Run with both clients (``client_kind``: threaded, asyncio through tests/aioclient.py)."""
    cluster = cluster_factory(3)
    leader = cluster.leader()
    victim, other = [n for n in cluster.nodes if n is not leader]
    client = make_client([victim.client_url, other.client_url, leader.client_url])
    try:
        consumer = Consumer(client.watch(PFX, prefix=True, start_revision=1))
        consumer.start()
        load = Load(leader.client_url, total=6000, window=64)
        load.start()
        wait_for(lambda: consumer.last_revision() > 1000, 30, "events through the victim")
        victim.kill()
        load.join(120)
        assert not load.failed, load.failed
        expected = truth(leader.request, PFX, END, 1, load.max_revision)
        wait_delivered(consumer, load.max_revision, 40)
        time.sleep(0.3)
        consumer.stop()
        assert consumer.error is None
        assert consumer.watcher.resumes >= 1
        check_ordered(consumer.responses)
        check_exact(consumer.responses, expected)
    finally:
        client.close()


def test_watch_never_goes_back_in_time_on_a_lagging_node(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    first, lagging = [n for n in cluster.nodes if n is not leader]
    cluster.partition([lagging], [leader, first])  # `lagging` falls behind
    client = Client([first.client_url, lagging.client_url])
    try:
        consumer = Consumer(client.watch(PFX, prefix=True, start_revision=1))
        consumer.start()
        load = Load(leader.client_url, total=2000, window=32)
        load.start()
        load.join(60)
        assert not load.failed, load.failed
        wait_delivered(consumer, load.max_revision, 20)
        ahead = consumer.last_revision()
        first.kill()  # the watcher moves to `lagging`, whose store is far behind it
        wait_for(lambda: consumer.watcher.resumes >= 1, 30, "the watcher to move")
        time.sleep(1.0)  # it sees the lagging node's old revisions: it must deliver none
        assert consumer.last_revision() == ahead
        cluster.heal()  # leader + lagging form a quorum again; lagging catches up
        new_leader = cluster.leader([leader, lagging], timeout=20)
        load2 = Load(new_leader.client_url, prefix="w/b", total=2000, window=32)
        load2.start()
        load2.join(60)
        assert not load2.failed, load2.failed
        expected = truth(new_leader.request, PFX, END, 1, load2.max_revision)
        wait_delivered(consumer, load2.max_revision, 40)
        time.sleep(0.3)
        consumer.stop()
        assert consumer.error is None
        revs = [r for r, _ in consumer.responses]
        assert all(a < b for a, b in zip(revs, revs[1:])), "went back in time"
        check_exact(consumer.responses, expected)
    finally:
        client.close()
