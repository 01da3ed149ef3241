"""The metrics a node exports (actors/runtime/metrics.py): etcd's names, types and buckets
where the meaning matches, `qkv_` for ours; the pure cores and the supervisor's module-level
imports stay free of them; the Grafana dashboard only names metrics we define."""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from actors.runtime import metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]

# name as exposed -> (TYPE line, etcd's buckets as ExponentialBuckets(start, factor, count) or None)
ETCD = {
    "etcd_server_has_leader": ("gauge", None),
    # go-grpc-prometheus's, which etcd exports (the gRPC gateway, actors/grpcgw/)
    "grpc_server_started_total": ("counter", None),
    "grpc_server_handled_total": ("counter", None),
    "grpc_server_msg_received_total": ("counter", None),
    "grpc_server_msg_sent_total": ("counter", None),
    "etcd_server_is_leader": ("gauge", None),
    "etcd_server_leader_changes_seen_total": ("counter", None),
    "etcd_server_heartbeat_send_failures_total": ("counter", None),
    "etcd_server_proposals_committed_total": ("gauge", None),  # a gauge in etcd too
    "etcd_server_proposals_applied_total": ("gauge", None),
    "etcd_server_proposals_pending": ("gauge", None),
    "etcd_server_proposals_failed_total": ("counter", None),
    "etcd_server_slow_apply_total": ("counter", None),
    "etcd_server_read_indexes_failed_total": ("counter", None),
    "etcd_server_quota_backend_bytes": ("gauge", None),
    "etcd_server_version": ("gauge", None),
    "etcd_disk_wal_fsync_duration_seconds": ("histogram", (0.001, 2, 14)),
    "etcd_disk_backend_commit_duration_seconds": ("histogram", (0.001, 2, 14)),
    "etcd_disk_backend_snapshot_duration_seconds": ("histogram", (0.01, 2, 17)),
    "etcd_disk_backend_defrag_duration_seconds": ("histogram", (0.1, 2, 13)),
    "etcd_mvcc_db_total_size_in_bytes": ("gauge", None),
    "etcd_mvcc_db_total_size_in_use_in_bytes": ("gauge", None),
    "etcd_debugging_mvcc_keys_total": ("gauge", None),
    "etcd_debugging_mvcc_watcher_total": ("gauge", None),
    "etcd_debugging_mvcc_slow_watcher_total": ("gauge", None),
    "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds": ("histogram", (100, 2, 14)),
    "etcd_debugging_mvcc_db_compaction_keys_total": ("counter", None),
    "etcd_debugging_lease_granted_total": ("counter", None),
    "etcd_debugging_lease_revoked_total": ("counter", None),
    "etcd_debugging_lease_renewed_total": ("counter", None),
    "etcd_debugging_lease_ttl_total": ("histogram", (1, 2, 14)),
    "etcd_debugging_server_lease_expired_total": ("counter", None),
    "etcd_network_peer_round_trip_time_seconds": ("histogram", (0.0001, 2, 14)),
    "etcd_network_peer_sent_bytes_total": ("counter", None),
    "etcd_network_peer_received_bytes_total": ("counter", None),
    "etcd_network_peer_sent_failures_total": ("counter", None),
    # etcd's Go counters without `_total`: gauges here (metrics.py "Rules"), same names
    "etcd_network_snapshot_send_success": ("gauge", None),
    "etcd_network_snapshot_send_failures": ("gauge", None),
    "etcd_network_snapshot_send_total_duration_seconds": ("histogram", (0.1, 2, 10)),
    "etcd_network_snapshot_receive_success": ("gauge", None),
    "etcd_network_snapshot_receive_failures": ("gauge", None),
    "etcd_network_snapshot_receive_total_duration_seconds": ("histogram", (0.1, 2, 10)),
}
# The issue's list (section 1), as exposed.
ISSUE = ["etcd_server_has_leader", "etcd_server_is_leader", "etcd_server_leader_changes_seen_total",
         "etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
         "etcd_server_proposals_pending", "etcd_server_proposals_failed_total",
         "etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds",
         "etcd_mvcc_db_total_size_in_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes",
         "etcd_debugging_mvcc_keys_total", "etcd_network_peer_round_trip_time_seconds",
         "etcd_network_peer_sent_bytes_total", "etcd_network_peer_received_bytes_total",
         "etcd_server_slow_apply_total", "etcd_debugging_mvcc_watcher_total",
         "etcd_debugging_lease_granted_total", "etcd_debugging_lease_revoked_total",
         "etcd_debugging_lease_renewed_total", "etcd_debugging_lease_ttl_total",
         "qkv_requests_total", "qkv_request_duration_seconds", "qkv_actor_restarts_total",
         "qkv_watch_channels", "qkv_watch_subscribers", "qkv_watch_slow_subscribers",
         "qkv_compaction_duration_seconds", "etcd_network_snapshot_send_success",
         "etcd_network_snapshot_receive_success"]
LABELS = {
    "etcd_network_peer_round_trip_time_seconds": ("To",),
    "etcd_network_peer_sent_bytes_total": ("To",),
    "etcd_network_peer_sent_failures_total": ("To",),
    "etcd_network_peer_received_bytes_total": ("From",),
    "etcd_network_snapshot_send_success": ("To",),
    "etcd_network_snapshot_receive_success": ("From",),
    "qkv_requests_total": ("op", "code"),
    "qkv_request_duration_seconds": ("op",),
    "qkv_actor_restarts_total": ("role",),
}
# What may not import metrics (nor prometheus_client): the pure cores and their neighbours.
NO_METRICS = ["actors/consensus/raft", "actors/storage/mvcc", "actors/storage/auth",
              "actors/storage/lessor.py", "actors/storage/hashjobs.py", "actors/consensus/transfers.py",
              "actors/consensus/membership.py", "actors/consensus/ready.py", "actors/watch/channels.py",
              "actors/watch/gate.py", "actors/storage/backend.py", "actors/consensus/wal.py"]


def defined() -> list:
    return [v for v in vars(metrics).values() if isinstance(v, (Counter, Gauge, Histogram))]


def exposed_name(m) -> str:
    return m._name + "_total" if m._type == "counter" else m._name


def exposed() -> dict[str, object]:
    return {exposed_name(m): m for m in defined()}


def exp_buckets(start: float, factor: float, count: int) -> list[float]:
    return [start * factor ** i for i in range(count)] + [float("inf")]


def test_every_metric_is_etcds_or_ours():
    names = exposed()
    assert len(names) == len(defined()), "two metrics expose the same name"
    for name, m in names.items():
        assert name.startswith(("etcd_", "qkv_", "grpc_server_")), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if name.startswith("qkv_") and m._type == "histogram":
            assert name.endswith("_seconds"), f"{name}: durations in seconds"


@pytest.mark.parametrize("name", sorted(ETCD))
def test_etcd_name_type_and_buckets(name):
    m = exposed().get(name)
    assert m is not None, f"{name} is not defined"
    kind, buckets = ETCD[name]
    assert m._type == kind
    if buckets is not None:
        assert m._upper_bounds == pytest.approx(exp_buckets(*buckets))


def test_the_issues_list_is_there():
    missing = [n for n in ISSUE if n not in exposed()]
    assert not missing


def test_labels():
    names = exposed()
    for name, labels in LABELS.items():
        assert tuple(names[name]._labelnames) == labels, name


def test_gauges_have_one_writer_or_sum():
    """A gauge is the writer's value (livesum: a dead process's leaves with it), or a
    counter in etcd's spelling (sum: kept after the process dies)."""
    for name, m in exposed().items():
        if m._type != "gauge":
            continue
        mode = m._multiprocess_mode
        if name.startswith("etcd_network_snapshot_"):
            assert mode == "sum", name
        else:
            assert mode == "livesum", name


def test_exposition_in_multiprocess_mode(tmp_path):
    """What a scrape of the multiprocess dir shows: every name above, with its TYPE."""
    code = """
import sys
from actors.runtime import metrics as m
m.requests.labels("put", "ok").inc()
m.request_seconds.labels("put").observe(0.001)
m.actor_restarts.labels("watch").inc()
m.peer_rtt_seconds.labels("a").observe(0.001)
for g in (m.peer_sent_bytes, m.peer_sent_failures, m.snapshot_send_success, m.snapshot_send_failures):
    g.labels("a").inc()
for g in (m.peer_received_bytes, m.snapshot_receive_success, m.snapshot_receive_failures):
    g.labels("b").inc()
m.snapshot_send_seconds.labels("a").observe(1)
m.snapshot_receive_seconds.labels("b").observe(1)
m.server_version.labels("x").set(1)
m.client_replies_dropped.labels("client_gone").inc()
m.has_leader.set(1)
for g in (m.grpc_started, m.grpc_msg_received, m.grpc_msg_sent):
    g.labels("unary", "etcdserverpb.KV", "Range").inc()
m.grpc_handled.labels("unary", "etcdserverpb.KV", "Range", "OK").inc()
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
reg = CollectorRegistry()
MultiProcessCollector(reg, path=sys.argv[1])
sys.stdout.write(generate_latest(reg).decode())
"""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    types = {}
    for line in out.stdout.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    families = {f.name: f for f in text_string_to_metric_families(out.stdout)}
    for name, (kind, _) in ETCD.items():
        assert types.get(name) == kind, (name, types.get(name))  # the text format's TYPE line
        family = name[:-len("_total")] if kind == "counter" else name  # the parser's family name
        assert family in families, name
    assert "etcd_network_snapshot_send_success" in out.stdout
    assert "etcd_network_snapshot_send_success_total" not in out.stdout
    assert 'qkv_requests_total{code="ok",op="put"} 1.0' in out.stdout
    assert "etcd_server_has_leader 1.0" in out.stdout


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("rel", NO_METRICS)
def test_pure_cores_import_no_metrics(rel):
    target = ROOT / rel
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files
    for f in files:
        bad = {i for i in _imports(f) if i.startswith("prometheus_client") or i == "actors.runtime.metrics"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_supervisor_imports_no_metrics_at_module_level():
    """prometheus_client picks its mode at its first import: the supervisor must import it
    only after prepare() set PROMETHEUS_MULTIPROC_DIR (nodes/supervisor.py)."""
    code = ("import sys, nodes.supervisor, nodes.cli\n"
            "bad = [m for m in sys.modules if m.startswith('prometheus_client') or m == 'actors.runtime.metrics']\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the Grafana dashboard ---------------------------------------------------------------------
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:etcd|qkv)_[a-z0-9_]+)", expr))


def _defined_series() -> set[str]:
    series = set()
    for name, m in exposed().items():
        series.add(name)
        if m._type == "histogram":
            series.update(name + s for s in _SERIES_SUFFIXES)
    return series


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def test_dashboard_is_valid_and_names_only_our_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash.get("schemaVersion")
    series = _defined_series()
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - series
        assert not unknown, f"{expr!r} names {unknown}, not defined in actors/runtime/metrics.py"
        used |= names
    for want in ("etcd_server_has_leader", "etcd_disk_wal_fsync_duration_seconds_bucket",
                 "etcd_mvcc_db_total_size_in_bytes", "qkv_requests_total"):
        assert want in used
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_checker_catches_an_unknown_metric():
    assert _metric_names('rate(etcd_server_nonexistent_total[1m])') - _defined_series() == {
        "etcd_server_nonexistent_total"}


def test_tallies_write_what_observe_and_inc_would():
    """HistogramTally / CounterTally (the hot paths' in-memory counts) leave the same samples
    as Histogram.observe / Counter.inc: they rely on prometheus_client's child internals."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    bounds = (0.001, 0.01, 0.1)
    h_a = Histogram("t_seconds", "t", ["op"], buckets=bounds, registry=reg_a)
    h_b = Histogram("t_seconds", "t", ["op"], buckets=bounds, registry=reg_b)
    c_a = Counter("t_requests", "t", ["op", "code"], registry=reg_a)
    c_b = Counter("t_requests", "t", ["op", "code"], registry=reg_b)
    tally = metrics.HistogramTally(h_b.labels("put"))
    counts = metrics.CounterTally(c_b)
    for amount in (0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 7.0):
        h_a.labels("put").observe(amount)
        tally.observe(amount)
        c_a.labels("put", "ok").inc()
        counts.inc(("put", "ok"))
    c_a.labels("get", "timeout").inc(3)
    counts.inc(("get", "timeout"), 3)
    assert generate_latest(reg_a) != generate_latest(reg_b)  # nothing written before flush
    tally.flush()
    counts.flush()
    tally.flush()  # a second flush with nothing new adds nothing
    counts.flush()
    strip = lambda text: b"\n".join(line for line in text.splitlines() if b"_created" not in line)  # noqa: E731
    assert strip(generate_latest(reg_a)) == strip(generate_latest(reg_b))
