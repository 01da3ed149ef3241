"""The metrics actor on real nodes: /metrics scraped and parsed with prometheus_client's own
parser, and /health, /livez, /readyz answered as etcd answers them (leader lost, alarm
raised).

Which assertions need the instrumentation (branch `instrument`: the actors set and count
the metrics of actors/runtime/metrics.py) is said beside them; without it the names of
unlabelled metrics are exported (every process defines them) but their values stay 0."""
from __future__ import annotations

import http.client
import os
import signal
import time
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from load import Writer
from nodeproc import NodeProcess, free_port, wait_for
from protocol import errors
from protocol.client import Client

# The etcd names of the issue, as exported sample names (a counter's samples end in _total,
# a histogram's in _bucket/_count/_sum).
ETCD_SAMPLES = (
    "etcd_server_has_leader", "etcd_server_is_leader", "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending", "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_count", "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_mvcc_db_total_size_in_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total", "etcd_server_slow_apply_total", "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_lease_granted_total", "etcd_debugging_lease_revoked_total",
    "etcd_debugging_lease_renewed_total", "etcd_debugging_lease_ttl_total_count",
)
# Labelled by peer: exported once a peer was measured (instrument).
PEER_SAMPLES = ("etcd_network_peer_round_trip_time_seconds_count", "etcd_network_peer_sent_bytes_total",
                "etcd_network_peer_received_bytes_total")


def http_get(base_url: str, path: str, method: str = "GET", timeout: float = 20.0) -> tuple[int, dict, bytes]:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def scrape(node: NodeProcess) -> dict[str, float]:
    """Every sample of the node's /metrics, by name and labels, parsed by prometheus_client."""
    status, headers, body = http_get(node.metrics_url, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" in s.labels:
                continue  # buckets: the _count says enough here
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """A metric's value summed over its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def test_cluster_metrics_move_under_load(cluster_factory):
    cluster = cluster_factory(3, metrics=True)
    lead = cluster.leader()
    before = {n.name: scrape(n) for n in cluster.nodes}
    for name, samples in before.items():
        missing = [s for s in ETCD_SAMPLES if not any(k == s or k.startswith(s + "{") for k in samples)]
        assert not missing, f"{name} does not export {missing}"

    writer = Writer(lead.client_url)
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) >= 300, 60, "300 acknowledged writes")
        for n in cluster.nodes:  # health is true under load, on every member
            status, headers, body = http_get(n.metrics_url, "/health")
            assert (status, body) == (200, b'{"health":"true","reason":""}'), (n.name, status, body)
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
    finally:
        writer.stop()

    # --- these need the instrumentation (branch `instrument`) ---
    # Gauges are set from the actors' 1 s timers: scrape until they say it (or the deadline).
    def unmet() -> list[str]:
        failed = []
        for n in cluster.nodes:
            b, a = before[n.name], scrape(n)

            def want(ok: bool, what: str) -> None:
                if not ok:
                    failed.append(f"{n.name}: {what}")

            want(a["etcd_server_has_leader"] == 1, "has_leader 1")
            want(a["etcd_server_is_leader"] == (1 if n is lead else 0), "is_leader")
            for name in ("etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
                         "etcd_disk_wal_fsync_duration_seconds_count",
                         "etcd_disk_backend_commit_duration_seconds_count"):
                want(a[name] > b[name], f"{name} rose ({b[name]} -> {a[name]})")
            want(a["etcd_debugging_mvcc_keys_total"] >= 300, "keys_total >= 300")
            for sample in PEER_SAMPLES[1:]:
                want(total(a, sample) > 0, f"{sample} > 0")
            # the leader measures round trips (its heartbeats' answers; etcd's prober runs on
            # every member, ours is the leader's)
            want(n is not lead or total(a, PEER_SAMPLES[0]) > 0, f"{PEER_SAMPLES[0]} > 0 on the leader")
            want(n is not lead or total(a, "qkv_requests_total") >= 300, "qkv_requests_total >= 300 on the leader")
        return failed

    deadline = time.monotonic() + 20
    while (failed := unmet()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not failed, failed
    # --- end of the instrumented part ---


def test_health_as_members_are_lost(cluster_factory):
    cluster = cluster_factory(3, metrics=True)
    for n in cluster.nodes:
        wait_for(lambda n=n: http_get(n.metrics_url, "/health")[::2] == (200, b'{"health":"true","reason":""}'), 20,
                 f"{n.name}'s /health true")
    assert http_get(cluster.nodes[0].metrics_url, "/readyz")[::2] == (200, b"ok\n")
    # The others go: the last member loses its leader, and says so as etcd does.
    last = cluster.nodes[0]
    for n in cluster.nodes[1:]:
        n.stop()

    def no_leader() -> bool:
        status, _, body = http_get(last.metrics_url, "/health")
        return (status, body) == (503, b'{"health":"false","reason":"RAFT NO LEADER"}\n')

    wait_for(no_leader, 30, "/health false with RAFT NO LEADER")
    status, _, body = http_get(last.metrics_url, "/health?serializable=true")  # local: no leader needed
    assert (status, body) == (200, b'{"health":"true","reason":""}')
    assert http_get(last.metrics_url, "/livez")[::2] == (200, b"ok\n")
    status, _, body = http_get(last.metrics_url, "/readyz")
    assert status == 503
    lines = body.decode().split("\n")
    assert lines[-2:] == ["", ""]
    assert lines[0] == "[+]data_corruption ok" and lines[1] == "[+]serializable_read ok"
    assert lines[2].startswith("[-]linearizable_read failed: etcdserver: "), lines
    assert lines[3] == "[+]non_learner ok"
    assert http_get(last.metrics_url, "/readyz?exclude=linearizable_read")[::2] == (200, b"ok\n")
    assert scrape(last)["etcd_server_health_failures_total"] >= 1


def test_health_with_the_nospace_alarm(node_factory):
    node = node_factory(args=["--quota-backend-bytes", "300000"], metrics=True)
    assert http_get(node.metrics_url, "/health")[::2] == (200, b'{"health":"true","reason":""}')
    with Client([node.client_url], timeout=5) as c:
        written = 0
        while True:
            assert written < 500, "the quota was never enforced"
            try:
                c.put(f"big/{written:04d}", b"v" * 10_000)
                written += 1
            except errors.NoSpace:
                break
        wait_for(lambda: c.alarm_list().alarms, 10, "the NOSPACE alarm")
        status, headers, body = http_get(node.metrics_url, "/health")
        assert (status, body) == (503, b'{"health":"false","reason":"ALARM NOSPACE"}\n')
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert http_get(node.metrics_url, "/health?exclude=NOSPACE")[::2] == (200, b'{"health":"true","reason":""}')
        assert http_get(node.metrics_url, "/health?exclude=CORRUPT")[0] == 503
        # readyz fails on CORRUPT only (etcd's data_corruption check); livez on nothing here
        assert http_get(node.metrics_url, "/readyz?verbose")[::2] == (200, (
            b"[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n"))
        assert http_get(node.metrics_url, "/livez")[::2] == (200, b"ok\n")
        c.alarm_disarm()
    wait_for(lambda: http_get(node.metrics_url, "/health")[0] == 200, 10, "/health true after the disarm")


def test_the_metrics_actor_restarts_and_counts_survive_it(node_factory):
    node = node_factory(start=False, metrics=True)
    second = f"http://127.0.0.1:{free_port()}"
    node.args = ["--listen-metrics-urls", f"{node.metrics_url},{second}"]  # every URL is served
    node.start()
    assert http_get(second, "/livez")[::2] == (200, b"ok\n")
    for _ in range(3):
        assert http_get(node.metrics_url, "/health")[0] == 200
    samples = scrape(node)
    assert samples["etcd_server_health_success_total"] == 3
    # process_*: summed over the supervisor and its five actors (actors/metrics/processes.py)
    pids = [node.proc.pid, *node.actor_pids().values()]
    assert len(pids) == 6
    rss_each = []
    for pid in pids:
        with open(f"/proc/{pid}/statm") as f:
            rss_each.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    assert samples["process_resident_memory_bytes"] > max(rss_each)
    assert 0.5 * sum(rss_each) < samples["process_resident_memory_bytes"] < 2 * sum(rss_each)
    assert samples["process_cpu_seconds_total"] > 0 and samples["process_open_fds"] > 6
    assert http_get(node.metrics_url, "/health", "HEAD")[0] == 405
    old = node.kill_actor("metrics", signal.SIGKILL)
    wait_for(lambda: node.actor_pids().get("metrics") not in (None, old), 20, "a new metrics actor")

    def serves() -> bool:
        try:
            return http_get(node.metrics_url, "/livez", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(serves, 20, "the new metrics actor to serve")
    assert http_get(second, "/livez")[::2] == (200, b"ok\n")
    # a dead process's counters stay in the sum (multiprocess mode); its live gauges go
    assert scrape(node)["etcd_server_health_success_total"] == 3


@pytest.mark.parametrize("value", [""])
def test_no_metrics_actor_without_a_url(node_factory, value):
    node = node_factory(start=False, metrics=True)
    node.args = ["--listen-metrics-urls", value]  # the last value of the flag wins
    node.start()
    assert "metrics" not in node.actor_pids()
    assert sorted(node.actor_pids()) == ["consensus", "gateway", "storage", "watch"]
    with pytest.raises(OSError):
        http_get(node.metrics_url, "/metrics", timeout=2)
