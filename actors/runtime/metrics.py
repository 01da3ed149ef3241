"""Every metric a node exports, defined in one place (prometheus_client).

A node is several processes (the supervisor and its actors). prometheus_client's
multiprocess mode joins them: the supervisor points PROMETHEUS_MULTIPROC_DIR at a private
dir (<run dir>/metrics, emptied at start), every process writes its values there (mmapped
files named by pid), and the metrics actor sums the files at each scrape
(`MultiProcessCollector`). Without the variable (tests that run an actor's parts in one
process) the metrics live in the process's default registry and cost the same.

Rules:
- etcd's names, types, units and buckets wherever the meaning matches, so etcd's dashboards
  and alerts work; our own under `qkv_`.
- A gauge has one writer (the actor named beside it) and `multiprocess_mode="livesum"`:
  every process holds a 0 for it, a dead process's value leaves with it
  (`process_died`), so the sum is the writer's value.
- Counters and histograms sum over every process, the dead included: a restarted actor's
  counts are not lost.
- No metric is touched from a pure core (raft/, mvcc/, lessor, membership, ...): the actor
  shells count what the cores return. Gauges are set from a timer or on a change, never per
  request.
- etcd counters whose Go name has no `_total` (`etcd_network_snapshot_send_success`, ...):
  prometheus_client always appends `_total` to a Counter, so these are gauges that only
  go up, in mode "sum" (a dead process's count stays in the sum, as a counter's does):
  same name and values as etcd's, TYPE gauge instead of counter (`rate()` works the same).
- Label values are bounded sets: peer ids (the member table), op names and error codes
  (the gateway maps anything else to "other"), actor roles.
- Hot paths (per request, per peer message): take a labelled child once (`.labels()` is
  a dict lookup plus a lock) and keep it; see tests/unit/test_metric_names.py for the names
  and types, and README "Metrics and alerts" for what to alert on.
"""
from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The mode is chosen when prometheus_client is first imported; a process that set the
# variable itself afterwards (the supervisor) gets it here, before any metric exists.
if MULTIPROC_ENV in os.environ:
    values.ValueClass = values.get_value_class()


def _exp_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """prometheus.ExponentialBuckets of etcd's Go code."""
    return tuple(start * factor ** i for i in range(count))


def process_died(pid: int) -> None:
    """The supervisor reaped `pid`: drop its live gauges from the sums."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


# --- consensus (actors/consensus/actor.py, transport.py) ---------------------------------
has_leader = Gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                   multiprocess_mode="livesum")
is_leader = Gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                  multiprocess_mode="livesum")
leader_changes = Counter("etcd_server_leader_changes_seen", "The number of leader changes seen.")
heartbeat_send_failures = Counter("etcd_server_heartbeat_send_failures",
                                  "The total number of leader heartbeat send failures (likely overloaded from slow disk).")
proposals_committed = Gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                            multiprocess_mode="livesum")
wal_fsync_seconds = Histogram("etcd_disk_wal_fsync_duration_seconds",
                              "The latency distributions of fsync called by WAL.", buckets=_exp_buckets(0.001, 2, 14))
peer_rtt_seconds = Histogram("etcd_network_peer_round_trip_time_seconds",
                             "Round-Trip-Time histogram between peers (measured by the leader: a Raft heartbeat "
                             "to its response).", ["To"], buckets=_exp_buckets(0.0001, 2, 14))
peer_sent_bytes = Counter("etcd_network_peer_sent_bytes", "The total number of bytes sent to peers.", ["To"])
peer_received_bytes = Counter("etcd_network_peer_received_bytes", "The total number of bytes received from peers.",
                              ["From"])
peer_sent_failures = Counter("etcd_network_peer_sent_failures", "The total number of send failures from peers.",
                             ["To"])
# Raft snapshots sent to a lagging follower / received from the leader (actors/consensus/transfers.py).
snapshot_send_success = Gauge("etcd_network_snapshot_send_success", "Total number of successful snapshot sends",
                              ["To"], multiprocess_mode="sum")
snapshot_send_failures = Gauge("etcd_network_snapshot_send_failures", "Total number of snapshot send failures",
                               ["To"], multiprocess_mode="sum")
snapshot_send_seconds = Histogram("etcd_network_snapshot_send_total_duration_seconds",
                                  "Total latency distributions of v3 snapshot sends", ["To"],
                                  buckets=_exp_buckets(0.1, 2, 10))
snapshot_receive_success = Gauge("etcd_network_snapshot_receive_success", "Total number of successful snapshot receives",
                                 ["From"], multiprocess_mode="sum")
snapshot_receive_failures = Gauge("etcd_network_snapshot_receive_failures", "Total number of snapshot receive failures",
                                  ["From"], multiprocess_mode="sum")
snapshot_receive_seconds = Histogram("etcd_network_snapshot_receive_total_duration_seconds",
                                     "Total latency distributions of v3 snapshot receives", ["From"],
                                     buckets=_exp_buckets(0.1, 2, 10))

# --- storage (actors/storage/actor.py) -----------------------------------------------------
proposals_applied = Gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                          multiprocess_mode="livesum")
slow_apply = Counter("etcd_server_slow_apply",
                     "The total number of slow apply requests (likely overloaded from slow disk).")
backend_commit_seconds = Histogram("etcd_disk_backend_commit_duration_seconds",
                                   "The latency distributions of commit called by backend.",
                                   buckets=_exp_buckets(0.001, 2, 14))
backend_snapshot_seconds = Histogram("etcd_disk_backend_snapshot_duration_seconds",
                                     "The latency distribution of backend snapshots.",
                                     buckets=_exp_buckets(0.01, 2, 17))
backend_defrag_seconds = Histogram("etcd_disk_backend_defrag_duration_seconds",
                                   "The latency distribution of backend defragmentation.",
                                   buckets=_exp_buckets(0.1, 2, 13))
db_total_size = Gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.",
                      multiprocess_mode="livesum")
db_total_size_in_use = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                             "Total size of the underlying database logically in use in bytes.", multiprocess_mode="livesum")
keys_total = Gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", multiprocess_mode="livesum")
lease_granted = Counter("etcd_debugging_lease_granted", "The total number of granted leases.")
lease_revoked = Counter("etcd_debugging_lease_revoked", "The total number of revoked leases.")
lease_renewed = Counter("etcd_debugging_lease_renewed", "The number of renewed leases seen by the leader.")
lease_expired = Counter("etcd_debugging_server_lease_expired", "The total number of expired leases.")
lease_ttl = Histogram("etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs.", buckets=_exp_buckets(1, 2, 14))
compaction_seconds = Histogram("qkv_compaction_duration_seconds", "Time one compaction took, from start to its last slice.",
                               buckets=_exp_buckets(0.001, 2, 16))
compaction_ms = Histogram("etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
                          "Bucketed histogram of db compaction total duration.", buckets=_exp_buckets(100, 2, 14))
compaction_keys = Counter("etcd_debugging_mvcc_db_compaction_keys", "Total number of db keys compacted.")

# --- watch (actors/watch/actor.py) -----------------------------------------------------------
watchers_total = Gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", multiprocess_mode="livesum")
slow_watchers_total = Gauge("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.",
                            multiprocess_mode="livesum")
watch_channels = Gauge("qkv_watch_channels", "Watch channels (distinct subscribed topics) the broadcaster publishes.",
                       multiprocess_mode="livesum")
watch_subscribers = Gauge("qkv_watch_subscribers", "Connections to the watch port.", multiprocess_mode="livesum")
watch_slow_subscribers = Gauge("qkv_watch_slow_subscribers",
                               "Watch connections that read slower than events are published (their kernel send "
                               "queue stayed over SLOW_OUTQ_BYTES for two samples); past their queue they lose "
                               "messages and catch up from history.", multiprocess_mode="livesum")
watch_messages = Counter("qkv_watch_messages_published", "Messages the broadcaster published (events and progress).")
watch_catchups = Counter("qkv_watch_history_catchups",
                         "Holes in the broadcaster's own event stream filled from storage's history.")
watch_rebinds = Counter("qkv_watch_rebinds", "Times the watch port was bound again (subscribers reconnect).")

# --- gateway (actors/gateway/actor.py) -----------------------------------------------------
requests = Counter("qkv_requests", "Client requests answered, by op and error code (\"ok\" for none).", ["op", "code"])
request_seconds = Histogram("qkv_request_duration_seconds", "Time from a request's arrival to its reply, by op.", ["op"],
                            buckets=_exp_buckets(0.0001, 2, 16))
proposals_pending = Gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                          multiprocess_mode="livesum")
proposals_failed = Counter("etcd_server_proposals_failed", "The total number of failed proposals seen.")
read_indexes_failed = Counter("etcd_server_read_indexes_failed", "The total number of failed read indexes seen.")
quota_backend_bytes = Gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                            multiprocess_mode="livesum")
server_version = Gauge("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.",
                       ["server_version"], multiprocess_mode="livesum")
client_replies_dropped = Counter("qkv_client_replies_dropped",
                                 "Replies not sent: the client over --max-client-queue-bytes, or gone.", ["reason"])
client_requests_refused = Counter("qkv_client_requests_refused",
                                  "Requests refused with too_many_requests (the connection's bounds).")

# --- gRPC gateway (actors/grpcgw/) ------------------------------------------------------------
# go-grpc-prometheus's names and labels, as etcd exports them. grpc_type: unary,
# client_stream, server_stream, bidi_stream; grpc_service: etcdserverpb.KV, ...; grpc_code:
# the status name (OK, InvalidArgument, ...).
grpc_started = Counter("grpc_server_started", "Total number of RPCs started on the server.",
                       ["grpc_type", "grpc_service", "grpc_method"])
grpc_handled = Counter("grpc_server_handled", "Total number of RPCs completed on the server, regardless of success or failure.",
                       ["grpc_type", "grpc_service", "grpc_method", "grpc_code"])
grpc_msg_received = Counter("grpc_server_msg_received", "Total number of RPC stream messages received on the server.",
                            ["grpc_type", "grpc_service", "grpc_method"])
grpc_msg_sent = Counter("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
                        ["grpc_type", "grpc_service", "grpc_method"])

# --- supervisor (nodes/supervisor.py) --------------------------------------------------------
actor_restarts = Counter("qkv_actor_restarts", "Actor processes restarted by the supervisor, by role.", ["role"])


# --- hot paths: counts kept in process memory, written in one go ------------------------------
class HistogramTally:
    """Observations of one labelled histogram child kept in memory and written by `flush`
    (from a timer): per observation a bisect and two adds, instead of two mmap writes under
    prometheus_client's lock (~5 us each observe in multiprocess mode, tests/bench/
    bench_metrics.py). Uses the child's `_upper_bounds`, `_buckets` and `_sum` (the values
    `Histogram.observe` writes; prometheus_client 0.26, checked by
    tests/unit/test_metric_names.py)."""

    __slots__ = ("child", "bounds", "counts", "total", "pending")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds = list(child._upper_bounds)  # ascending, the last is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.pending = False

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= bound
        self.total += amount
        self.pending = True

    def flush(self) -> None:
        if not self.pending:
            return
        child, counts = self.child, self.counts
        child._sum.inc(self.total)
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)
                counts[i] = 0
        self.total = 0.0
        self.pending = False


class CounterTally:
    """Increments of a labelled counter kept in memory by label values and written by
    `flush` (from a timer): one mmap write per label set and flush, not per event."""

    __slots__ = ("metric", "children", "counts")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}
        self.counts: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + amount

    def flush(self) -> None:
        if not self.counts:
            return
        counts, self.counts = self.counts, {}
        for labels, n in counts.items():
            child = self.children.get(labels)
            if child is None:
                child = self.children[labels] = self.metric.labels(*labels)
            child.inc(n)
