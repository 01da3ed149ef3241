"""One real node does work and its metrics move, read straight from the node's
multiprocess dir (<run dir>/metrics) the way the metrics actor serves them."""
from __future__ import annotations

import zmq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from nodeproc import err, ok, put_burst, wait_for
from nodes.endpoints import Endpoints, run_dir_for


def scrape(node) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=Endpoints(run_dir_for(node.data_dir)).metrics_dir)
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_node_at_work_moves_its_metrics(node_factory):
    node = node_factory()
    before = wait_for(lambda: (s := scrape(node)) and value(s, "etcd_server_has_leader") == 1 and s, 10,
                      "has_leader 1")
    assert value(before, "etcd_server_is_leader") == 1
    assert value(before, "etcd_server_leader_changes_seen_total") >= 1
    assert value(before, "etcd_server_quota_backend_bytes") == 2 * 1024 ** 3

    # A watcher (a bare SUB, SPEC section 5) so the watch gauges have something to count.
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(node.watch_url)
        key, end = b"m/", b"m0"
        sub.subscribe(b"W1" + bytes([0]) + len(key).to_bytes(4, "big") + key + len(end).to_bytes(4, "big") + end)

        for i in range(40):
            ok(node.request({"op": "put", "key": b"m/%d" % i, "value": b"x" * 100}))
        ok(node.request({"op": "range", "key": b"m/1"}))
        ok(node.request({"op": "range", "key": b"m/", "range_end": b"m0", "serializable": True}))
        err(node.request({"op": "range", "key": b"m/1", "revision": 10 ** 9}), "future_revision")
        lease = ok(node.request({"op": "lease_grant", "ttl": 30}))["ID"]
        ok(node.request({"op": "lease_keepalive", "ID": lease}))
        ok(node.request({"op": "lease_revoke", "ID": lease}))
        rev = ok(node.request({"op": "put", "key": b"m/last", "value": b"y"}))["header"]["revision"]
        ok(node.request({"op": "compact", "revision": rev, "physical": True}))

        def moved():
            s = scrape(node)
            return s if (value(s, "etcd_server_proposals_applied_total") >= rev
                         and value(s, "etcd_server_proposals_committed_total") >= rev
                         and value(s, "qkv_watch_subscribers") >= 1
                         and value(s, "qkv_compaction_duration_seconds_count") >= 1) else None

        after = wait_for(moved, 15, "the gauges to follow (1 s timers)")
    finally:
        sub.close(0)

    def grew(name: str, by: float = 1, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) >= by, (
            name, labels, value(before, name, **labels), value(after, name, **labels))

    grew("etcd_server_proposals_committed_total", 40)
    grew("etcd_server_proposals_applied_total", 40)
    grew("etcd_disk_wal_fsync_duration_seconds_count", 1)
    grew("etcd_disk_backend_commit_duration_seconds_count", 1)
    grew("qkv_requests_total", 41, op="put", code="ok")
    grew("qkv_requests_total", 1, op="range", code="ok")
    grew("qkv_requests_total", 1, op="range", code="future_revision")
    grew("qkv_request_duration_seconds_count", 41, op="put")
    grew("etcd_debugging_lease_granted_total")
    grew("etcd_debugging_lease_renewed_total")
    grew("etcd_debugging_lease_revoked_total")
    grew("etcd_debugging_lease_ttl_total_count")
    grew("etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count")
    assert value(after, "etcd_debugging_mvcc_keys_total") == 41
    assert value(after, "etcd_mvcc_db_total_size_in_bytes") > 0
    assert 0 < value(after, "etcd_mvcc_db_total_size_in_use_in_bytes") <= value(after, "etcd_mvcc_db_total_size_in_bytes")
    assert value(after, "etcd_debugging_mvcc_watcher_total") >= 1
    assert value(after, "qkv_watch_channels") >= 1
    assert value(after, "etcd_server_proposals_failed_total") == 0
    assert value(after, "etcd_server_has_leader") == 1

    # An actor killed and restarted: counted by role; its counters stay in the sums and
    # its gauges are the new process's.
    node.kill_actor("storage")
    wait_for(lambda: value(scrape(node), "qkv_actor_restarts_total", role="storage") == 1, 15,
             "the restart to be counted")
    node.wait_ready()
    ok(node.request({"op": "put", "key": b"m/after", "value": b"z"}))
    final = wait_for(lambda: (s := scrape(node)) and value(s, "etcd_debugging_mvcc_keys_total") == 42 and s, 15,
                     "the new storage's gauges")
    assert value(final, "etcd_server_proposals_applied_total") >= rev + 1  # one writer: not doubled
    assert value(final, "etcd_disk_backend_commit_duration_seconds_count") > \
        value(after, "etcd_disk_backend_commit_duration_seconds_count")  # the dead one's kept


def test_a_watch_consumer_that_does_not_read_is_a_slow_subscriber(node_factory):
    node = node_factory()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1)  # libzmq on our side takes little: the node's queue fills
    sub.setsockopt(zmq.RCVBUF, 4096)
    try:
        sub.connect(node.watch_url)
        key, end = b"s/", b"s0"
        sub.subscribe(b"W1" + bytes([0]) + len(key).to_bytes(4, "big") + key + len(end).to_bytes(4, "big") + end)
        wait_for(lambda: value(scrape(node), "qkv_watch_subscribers") >= 1, 10, "the subscriber")
        put_burst(node.client_url, 600, b"s/", value=b"v" * 4096)  # ~2.4 MiB nobody reads
        slow = wait_for(lambda: (s := scrape(node)) and value(s, "qkv_watch_slow_subscribers") >= 1 and s, 15,
                        "the subscriber to count as slow")
        assert value(slow, "etcd_debugging_mvcc_slow_watcher_total") >= 1
    finally:
        sub.close(0)
    wait_for(lambda: value(scrape(node), "qkv_watch_slow_subscribers") == 0, 15, "it to leave the count")


def test_peer_and_snapshot_metrics_on_a_cluster(cluster_factory):
    """Peer bytes and heartbeat round trips by peer; a follower cut off while the leader
    compacts its log gets a snapshot: counted on both sides with its duration."""
    cluster = cluster_factory(3, args=["--snapshot-count", "100"])
    leader = cluster.leader()
    lagging = next(n for n in cluster.nodes if n is not leader)
    lid, fid = f"{leader.member_id:x}", f"{lagging.member_id:x}"
    cluster.partition([lagging], [n for n in cluster.nodes if n is not lagging])
    put_burst(leader.client_url, 600, b"c/")
    wait_for(lambda: leader.compacted_past(300), 30, "the leader to compact its log")
    cluster.heal()

    def sent() -> dict | None:
        s = scrape(leader)
        return s if value(s, "etcd_network_snapshot_send_success", To=fid) >= 1 else None

    on_leader = wait_for(sent, 60, "the leader to send a snapshot")
    assert value(on_leader, "etcd_network_snapshot_send_total_duration_seconds_count", To=fid) >= 1
    assert value(on_leader, "etcd_network_peer_sent_bytes_total", To=fid) > 0
    assert value(on_leader, "etcd_network_peer_received_bytes_total", From=fid) > 0
    assert value(on_leader, "etcd_network_peer_round_trip_time_seconds_count", To=fid) >= 1
    on_follower = wait_for(lambda: (s := scrape(lagging))
                           and value(s, "etcd_network_snapshot_receive_success", From=lid) >= 1 and s, 30,
                           "the follower to count the snapshot it received")
    assert value(on_follower, "etcd_network_snapshot_receive_total_duration_seconds_count", From=lid) >= 1
    assert value(on_follower, "etcd_network_snapshot_receive_failures", From=lid) == 0
    assert value(on_follower, "etcd_server_is_leader") == 0 and value(on_follower, "etcd_server_has_leader") == 1
