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
"""
from __future__ import annotations

import os

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


# --- consensus -----------------------------------------------------------------------
has_leader = Gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                   multiprocess_mode="livesum")
is_leader = Gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                  multiprocess_mode="livesum")
leader_changes = Counter("etcd_server_leader_changes_seen", "The number of leader changes seen.")
proposals_committed = Gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                            multiprocess_mode="livesum")
proposals_pending = Gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                          multiprocess_mode="livesum")
proposals_failed = Counter("etcd_server_proposals_failed", "The total number of failed proposals seen.")
wal_fsync_seconds = Histogram("etcd_disk_wal_fsync_duration_seconds",
                              "The latency distributions of fsync called by WAL.", buckets=_exp_buckets(0.001, 2, 14))
peer_rtt_seconds = Histogram("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers",
                             ["To"], buckets=_exp_buckets(0.0001, 2, 14))
peer_sent_bytes = Counter("etcd_network_peer_sent_bytes", "The total number of bytes sent to peers.", ["To"])
peer_received_bytes = Counter("etcd_network_peer_received_bytes", "The total number of bytes received from peers.",
                              ["From"])

# --- storage -------------------------------------------------------------------------
proposals_applied = Gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                          multiprocess_mode="livesum")
slow_apply = Counter("etcd_server_slow_apply", "The total number of slow apply requests (likely overloaded from slow disk).")
backend_commit_seconds = Histogram("etcd_disk_backend_commit_duration_seconds",
                                   "The latency distributions of commit called by backend.",
                                   buckets=_exp_buckets(0.001, 2, 14))
db_total_size = Gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.",
                      multiprocess_mode="livesum")
db_total_size_in_use = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                             "Total size of the underlying database logically in use in bytes.", multiprocess_mode="livesum")
keys_total = Gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", multiprocess_mode="livesum")
lease_granted = Counter("etcd_debugging_lease_granted", "The total number of granted leases.")
lease_revoked = Counter("etcd_debugging_lease_revoked", "The total number of revoked leases.")
lease_renewed = Counter("etcd_debugging_lease_renewed", "The number of renewed leases seen by the leader.")
lease_ttl = Histogram("etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs.", buckets=_exp_buckets(1, 2, 14))
compaction_seconds = Histogram("qkv_compaction_duration_seconds", "Time one compaction took, from start to its last slice.",
                               buckets=_exp_buckets(0.001, 2, 16))

# --- watch ---------------------------------------------------------------------------
watchers_total = Gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", multiprocess_mode="livesum")

# --- gateway -------------------------------------------------------------------------
requests = Counter("qkv_requests", "Client requests answered, by op and error code (\"ok\" for none).", ["op", "code"])
request_seconds = Histogram("qkv_request_duration_seconds", "Time from a request's arrival to its reply, by op.", ["op"],
                            buckets=_exp_buckets(0.0001, 2, 16))

# --- supervisor ----------------------------------------------------------------------
actor_restarts = Counter("qkv_actor_restarts", "Actor processes restarted by the supervisor, by role.", ["role"])
