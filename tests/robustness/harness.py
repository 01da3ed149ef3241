"""One robustness run: a real cluster, recording clients, a fault schedule, then checks.

`run(scenario, seed, duration_s, workdir)` starts a cluster, runs traffic while the
scenario's nemesis injects faults, heals everything, lets the cluster converge, and
checks: the KV history is linearizable (linearizability.py), every member has the same
keyspace hash at the same revision, and every acknowledged write is accounted for (a
final linearizable read of every key is part of the history). On failure it keeps the
history, the seed, the fault schedule and the nodes' logs in one folder and prints the
command that replays the same schedule.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from grpc_traffic import GrpcKV, GrpcWatchClient  # noqa: E402
from linearizability import Op, check_history, describe  # noqa: E402
from netns import make_cluster  # noqa: E402
from traffic import KEYS, RecordingClient  # noqa: E402
from watch_check import check_watches, session_to_json, summary  # noqa: E402
from watch_traffic import RecordingWatcher  # noqa: E402

from nodeproc import Cluster, NodeProcess, wait_for  # noqa: E402
from protocol.client import Client  # noqa: E402


class Nemesis:
    """Fault actions on a cluster; each returns a description for the schedule."""

    def __init__(self, cluster: Cluster, rng: random.Random, seed: int = 0) -> None:
        self.cluster = cluster
        self.rng = rng
        self.rotation = seed  # crash points rotate with the seed: consecutive seeds cover them all
        self.paused: list[int] = []
        self.failpointed: list[NodeProcess] = []
        self.snapshot_target: tuple[NodeProcess, int] | None = None

    def _live(self) -> list[NodeProcess]:
        return [n for n in self.cluster.nodes if n.proc is not None and n.proc.poll() is None]

    def _leader(self) -> NodeProcess:
        try:
            return self.cluster.leader(self._live(), timeout=5)
        except AssertionError:
            return self.rng.choice(self._live())

    def kill_leader(self) -> str:
        n = self._leader()
        n.kill()
        return f"kill -9 node {n.name} (leader)"

    def kill_node(self) -> str:
        n = self.rng.choice(self._live())
        n.kill()
        return f"kill -9 node {n.name}"

    def kill_all(self) -> str:
        for n in self._live():
            n.kill()
        return "kill -9 every node"

    def kill_actor(self) -> str:
        n = self.rng.choice(self._live())
        role = self.rng.choice(["consensus", "storage", "gateway", "watch"])
        try:
            n.kill_actor(role)
        except KeyError:
            return f"kill -9 {role} of {n.name}: not running"
        return f"kill -9 {role} of {n.name}"

    def kill_grpc(self) -> str:
        """kill -9 the grpc actor (etcd's gRPC API) of one member: its streams and calls
        in flight break; the supervisor restarts it."""
        n = self.rng.choice(self._live())
        try:
            n.kill_actor("grpc")
        except KeyError:
            return f"kill -9 grpc of {n.name}: not running"
        return f"kill -9 grpc of {n.name}"

    def pause_node(self) -> str:
        n = self.rng.choice(self._live())
        pids = list(n.actor_pids().values())
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.paused = pids
        return f"SIGSTOP node {n.name}"

    def pause_actor(self) -> str:
        n = self.rng.choice(self._live())
        role = self.rng.choice(["consensus", "storage", "gateway", "watch"])
        try:
            pid = n.actor_pids()[role]
        except KeyError:
            return f"SIGSTOP {role} of {n.name}: not running"
        os.kill(pid, signal.SIGSTOP)
        self.paused.append(pid)
        return f"SIGSTOP {role} of {n.name}"

    def _restart_with_failpoints(self, n: NodeProcess, spec: str) -> None:
        n.kill()
        n.env["QKV_FAILPOINTS"] = spec
        self.failpointed.append(n)
        n.start(wait=False)

    def crash_fsync(self) -> str:
        return self._crash_point(["before_log_fsync", "after_log_fsync"])

    def crash_storage(self) -> str:
        return self._crash_point(["before_storage_commit", "after_storage_commit", "during_compaction"])

    def _crash_point(self, names: list[str]) -> str:
        """Restart a node whose actor kills itself at a crash point inside the code, again
        and again (the supervisor restarts it, with the same environment) until healed."""
        n = self.rng.choice(self._live())
        name = self._next_point(names)
        nth = 1 if name == "during_compaction" else self.rng.randint(5, 60)
        self._restart_with_failpoints(n, f"{name}@{nth}")
        return f"crash point {name}@{nth} on {n.name} (restarted with QKV_FAILPOINTS)"

    def snapshot_follower(self, point: str | None = None) -> str:
        """Cut a follower off until the leader has compacted its log past it, so healing
        needs a snapshot; optionally with a crash point in the snapshot's send, receive or
        install (set on every member: any of them may lead by then)."""
        lead = self._leader()
        f = self.rng.choice([n for n in self.cluster.nodes if n is not lead])
        desc = f"partition: follower {f.name} alone until it needs a snapshot"
        if point:
            for n in self.cluster.nodes:
                self._restart_with_failpoints(n, f"{point}@1")
            for n in self.cluster.nodes:
                n.wait_ready(60)
            desc += f", crash point {point}@1 on every member"
        applied = _status(f).get("raft_applied_index", 0)
        self.cluster.partition([f], [n for n in self.cluster.nodes if n is not f])
        self.snapshot_target = (f, applied)
        return desc

    def snapshot_crash(self) -> str:
        return self.snapshot_follower(self._next_point(["snapshot_send", "snapshot_receive", "snapshot_install"]))

    def _next_point(self, names: list[str]) -> str:
        name = names[self.rotation % len(names)]
        self.rotation += 1
        return name

    def snapshot_needed(self) -> bool:
        """True once some live member compacted its log past the isolated follower."""
        if self.snapshot_target is None:
            return True
        f, applied = self.snapshot_target
        for n in self.cluster.nodes:
            if n is f:
                continue
            for event in _log_events(n, "log_compacted"):
                if int(event.get("index", 0)) > applied:
                    return True
        return False

    def auth_churn(self) -> str:
        """Change the traffic user's permissions a few times (each change bumps the auth
        revision: requests checked at the old one are refused and retried, the watch
        ports rebind), ending where it began: readwrite on the traffic's prefix."""
        lead = self._leader()
        n = self.rng.randint(2, 5)
        for i in range(n):
            _root_call(lead, {"op": "role_grant_permission", "name": "traffic",
                              "perm": {"perm_type": "READ", "key": b"other/%d" % i, "range_end": b""}})
        for i in range(n):
            _root_call(lead, {"op": "role_revoke_permission", "name": "traffic", "key": b"other/%d" % i,
                              "range_end": b""})
        return f"auth churn: {2 * n} permission changes for the traffic user via {lead.name}"

    def isolate_leader(self) -> str:
        lead = self._leader()
        self.cluster.partition([lead], [n for n in self.cluster.nodes if n is not lead])
        return f"partition: leader {lead.name} alone"

    def isolate_follower(self) -> str:
        lead = self._leader()
        f = self.rng.choice([n for n in self.cluster.nodes if n is not lead])
        self.cluster.partition([f], [n for n in self.cluster.nodes if n is not f])
        return f"partition: follower {f.name} alone"

    def one_way(self) -> str:
        a, b = self.rng.sample(self.cluster.nodes, 2)
        self.cluster.cut_one_way(a, b)
        return f"one-way: {a.name} -> {b.name} cut"

    def bridge(self) -> str:
        a, b, c = self.rng.sample(self.cluster.nodes, 3)
        self.cluster.partition([a], [c])
        return f"bridge: {a.name} | {c.name} cut, {b.name} sees both"

    def heal(self) -> str:
        for pid in self.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []
        for n in self.failpointed:  # restart without crash points
            n.kill()
            n.env.pop("QKV_FAILPOINTS", None)
        self.failpointed = []
        self.snapshot_target = None
        # Partitions go first: a dead node's fault file is then clean when it starts, and
        # an isolated member cannot serve linearizable reads, which the wait below needs.
        self.cluster.heal()
        for n in self.cluster.nodes:
            if n.proc is None or n.proc.poll() is not None:
                n.start(wait=False)
        for n in self.cluster.nodes:
            n.wait_ready(60)
        return "heal: SIGCONT, restart dead nodes, remove partitions"


def _status(n: NodeProcess) -> dict:
    reply = n.request({"op": "status"}, timeout=2.0)
    return reply if reply and reply.get("ok") else {}


def _log_events(n: NodeProcess, name: str) -> list[dict]:
    """The node's JSON log lines whose event is `name`."""
    out = []
    for line in n.log_text().splitlines():
        if name in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
    return out


# name -> (cluster size, fault actions in turn)
SCENARIOS: dict[str, tuple[int, list[str]]] = {
    "kill-leader": (3, ["kill_leader"]),
    "kill-actor": (3, ["kill_actor", "kill_actor", "kill_actor"]),
    "kill-all": (3, ["kill_all"]),
    "pause-node": (3, ["pause_node"]),
    "pause-actor": (3, ["pause_actor", "pause_actor"]),
    "isolate-leader": (3, ["isolate_leader"]),
    "isolate-follower": (3, ["isolate_follower"]),
    "one-way": (3, ["one_way"]),
    "bridge": (3, ["bridge"]),
    "snapshot-follower": (3, ["snapshot_follower"]),
    "crash-fsync": (3, ["crash_fsync", "crash_fsync"]),
    "crash-storage": (3, ["crash_storage", "crash_storage"]),
    "crash-snapshot": (3, ["snapshot_crash"]),
    "mixed": (3, ["kill_actor", "isolate_leader", "kill_node"]),
    "single-kill": (1, ["kill_actor", "kill_all"]),
    "single-pause": (1, ["pause_actor", "pause_node"]),
    "single-crash": (1, ["crash_fsync", "crash_storage"]),
    # CURVE on every port and auth on: traffic and watchers run as a user with readwrite on
    # their prefix only, while permissions change under them (auth_old_revision retries,
    # watch port rebinds) and members die.
    "secure": (3, ["auth_churn", "kill_leader", "auth_churn", "kill_actor"]),
    # Every member also serves etcd's gRPC API; the traffic and the watchers use it alone
    # (grpc_traffic.py), while members, actors and the grpc actor itself are killed.
    "grpc-kill": (3, ["kill_leader", "kill_grpc", "kill_actor"]),
    # The same traffic while the leader is cut off (its grpc actor must not serve a stale
    # linearizable read), then a whole member is paused (its streams stall, not end).
    "grpc-partition": (3, ["isolate_leader", "kill_grpc", "pause_node"]),
}
SECURE_SCENARIOS = frozenset({"secure"})
GRPC_SCENARIOS = frozenset({"grpc-kill", "grpc-partition"})
TRAFFIC_USER, TRAFFIC_PASSWORD = "traffic", "traffic-password"
ROOT_PASSWORD = "root-password"
RANDOM_ACTIONS = sorted({a for name, (_, acts) in SCENARIOS.items()
                         if name not in SECURE_SCENARIOS | GRPC_SCENARIOS for a in acts})


def _root_call(node: NodeProcess, req: dict) -> dict:
    reply = node.request(req, timeout=10)
    if not reply or not reply.get("ok"):
        raise AssertionError(f"{req.get('op')} failed: {reply}")
    return reply


def enable_auth(cluster: Cluster) -> dict:
    """Root user and role, a traffic user with readwrite on the traffic's prefix, auth on;
    the raw requests of the harness then carry root's token. Returns the Client options
    of the traffic user."""
    lead = cluster.leader()
    for req in ({"op": "user_add", "name": "root", "password": ROOT_PASSWORD},
                {"op": "role_add", "name": "root"},
                {"op": "user_grant_role", "name": "root", "role": "root"},
                {"op": "user_add", "name": TRAFFIC_USER, "password": TRAFFIC_PASSWORD},
                {"op": "role_add", "name": "traffic"},
                {"op": "role_grant_permission", "name": "traffic",
                 "perm": {"perm_type": "READWRITE", "key": b"key/", "range_end": b"key0"}},
                {"op": "user_grant_role", "name": TRAFFIC_USER, "role": "traffic"},
                {"op": "auth_enable"}):
        _root_call(lead, req)
    cluster.security.user, cluster.security.password = "root", ROOT_PASSWORD
    cluster.security.token = _root_call(lead, {"op": "authenticate", "name": "root",
                                               "password": ROOT_PASSWORD})["token"]
    return {**cluster.client_options, "user": TRAFFIC_USER, "password": TRAFFIC_PASSWORD}


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Like wait_for, but a condition that may never hold is an outcome, not an error."""
    try:
        wait_for(predicate, timeout, "condition", interval=0.5)
        return True
    except AssertionError:
        return False


def run(scenario: str, seed: int, duration_s: float, workdir: Path, clients: int = 6, watchers_n: int = 3,
        report_root: Path | None = None, log: Callable[[str], None] = print,
        network: str = "faults") -> dict:
    rng = random.Random(seed)
    if scenario == "random":
        size, actions = 3, rng.sample(RANDOM_ACTIONS, 3)
    else:
        size, actions = SCENARIOS[scenario]
    # "faults": partitions through the peer transport's fault layer; "netns": each node in
    # its own network namespace, links cut for real (netns.py).
    secure = scenario in SECURE_SCENARIOS
    grpc = scenario in GRPC_SCENARIOS  # the traffic through etcd's gRPC API (grpc_traffic.py)
    cluster = make_cluster(workdir, size, ["--snapshot-count", "500"], network, secure=secure, grpc=grpc)
    history: list[Op] = []
    watchers: list[RecordingWatcher] = []
    lock = threading.Lock()
    stop = threading.Event()
    schedule: list[tuple[float, str]] = []
    started = time.monotonic()
    result: dict = {"scenario": scenario, "seed": seed, "duration_s": duration_s, "network": network}
    try:
        cluster.start()
        endpoints = [n.client_url for n in cluster.nodes]
        options = enable_auth(cluster) if secure else {}
        if grpc:
            traffic_to, kv_client, watch_client = [n.grpc_endpoint for n in cluster.nodes], GrpcKV, GrpcWatchClient
        else:
            traffic_to, kv_client, watch_client = endpoints, Client, Client
        workers = [RecordingClient(i, traffic_to, seed * 100 + i, history, lock, stop, client_options=options,
                                   connect=kv_client) for i in range(clients)]
        watchers = [RecordingWatcher(i, traffic_to, seed * 100 + 50 + i, stop, client_options=options,
                                     connect=watch_client) for i in range(watchers_n)]
        for w in [*workers, *watchers]:
            w.start()
        nemesis = Nemesis(cluster, rng, seed)
        # Faults spread over the first 70% of the run, each held for a while, then healed.
        slot = duration_s * 0.7 / max(1, len(actions))
        for action in actions:
            t_fault = time.monotonic()
            schedule.append((round(t_fault - started, 3), getattr(nemesis, action)()))
            hold = slot * (0.5 + rng.random() * 0.4)
            wait_for(lambda: time.monotonic() - t_fault > hold, hold + 5, "the fault to be held", interval=0.1)
            if nemesis.snapshot_target is not None:  # hold until healing needs a snapshot
                needed = _poll(nemesis.snapshot_needed, 60)
                schedule.append((round(time.monotonic() - started, 3),
                                 "log compacted past the follower" if needed else "no snapshot needed after 60 s"))
                if nemesis.failpointed:  # reconnect with the crash points still armed
                    cluster.heal()
                    hit = _poll(lambda: any(_log_events(n, "actor_died") for n in cluster.nodes), 20)
                    schedule.append((round(time.monotonic() - started, 3),
                                     "partition removed, crash points armed: "
                                     + ("an actor died at one" if hit else "none hit in 20 s")))
            schedule.append((round(time.monotonic() - started, 3), nemesis.heal()))
        wait_for(lambda: time.monotonic() - started > duration_s, duration_s + 60, "the end of the run",
                 interval=0.1)
        stop.set()
        for w in [*workers, *watchers]:
            w.join(15)
        # Final linearizable reads of every key: an acknowledged write that went missing
        # shows up here as a read no linearization explains.
        with Client(endpoints, timeout=10, **options) as c:
            for key in KEYS + [k for w in workers for k in w.lease_keys]:
                t0 = time.monotonic()
                resp = c.get(key)
                kv = resp.kvs[0] if resp.kvs else None
                history.append(Op(99, "get", key, t0, time.monotonic(), revision=resp.header.revision,
                                  found=(kv.value, kv.mod_revision, kv.version) if kv else None))
        hashes = cluster.converged_hashes()
        # No member may have raised an alarm (CORRUPT from the leader's hash checks, NOSPACE).
        alarms = sorted({str(a) for n in cluster.nodes for a in (_status(n).get("alarms") or [])})
        violations = check_history(history)
        sessions = [s for w in watchers for s in w.sessions]
        watch_violations = check_watches(sessions, history, [r for w in workers for r in w.compactions])
        counts: dict[str, int] = {}
        for w in workers:
            for k, v in w.counts.items():
                if isinstance(v, int):
                    counts[k] = counts.get(k, 0) + v
        harness_errors = [w.counts.get("last_error") for w in workers if w.counts.get("harness_error")]
        watch_counts: dict[str, int] = {}
        for wr in watchers:
            for k, v in wr.counts.items():
                if isinstance(v, int):
                    watch_counts[k] = watch_counts.get(k, 0) + v
        result.update(
            ops_checked=len(history),
            uncertain=sum(1 for op in history if op.completed is None),
            counts=counts,
            violations=[describe(v) for v in violations] + [f"watch: {v}" for v in watch_violations],
            watch=summary(sessions),
            watch_counts=watch_counts,
            hashes_equal=len(hashes) == 1,
            alarms=alarms,
            harness_errors=harness_errors,
            schedule=schedule,
        )
        result["snapshots_installed"] = sum(len(_log_events(n, "snapshot_installed")) for n in cluster.nodes)
        result["actor_deaths"] = sum(len(_log_events(n, "actor_died")) for n in cluster.nodes)
        result["ok"] = (not violations and not watch_violations and len(hashes) == 1 and not alarms
                        and not harness_errors)
    except Exception as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}", schedule=schedule,
                      ops_checked=len(history))
    finally:
        stop.set()
        if not result.get("ok") and report_root is not None:
            result["report"] = str(_save_report(report_root, result, history, cluster, watchers))
        cluster.discard()  # everything is checked and saved: a clean stop would only cost time
    return result


def _save_report(root: Path, result: dict, history: list[Op], cluster: Cluster,
                 watchers: list[RecordingWatcher]) -> Path:
    folder = root / f"{result['scenario']}-seed{result['seed']}-{int(time.time())}"
    folder.mkdir(parents=True, exist_ok=True)
    replay = (f".venv/bin/python tests/robustness/run.py --scenario {result['scenario']} "
              f"--seed {result['seed']} --duration {result['duration_s']} --network {result['network']}")
    result["replay"] = replay
    (folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
    with open(folder / "history.jsonl", "w") as f:
        for op in history:
            d = asdict(op)
            for k in ("key", "value"):
                if isinstance(d.get(k), bytes):
                    d[k] = d[k].decode(errors="replace")
            if d.get("found"):
                d["found"] = [d["found"][0].decode(errors="replace"), d["found"][1], d["found"][2]]
            f.write(json.dumps(d) + "\n")
    with open(folder / "watch-sessions.jsonl", "w") as f:
        for w in watchers:
            for session in w.sessions:
                f.write(json.dumps(session_to_json(session), default=str) + "\n")
    for n in cluster.nodes:
        if n.log_path.exists():
            shutil.copy(n.log_path, folder / f"{n.name}.log")
    (folder / "REPLAY").write_text(replay + "\n")
    return folder
