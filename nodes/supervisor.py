"""The supervisor: owns the data dir and the config, starts the four actors as separate
processes (`python -m actors <role>`, never fork), restarts any that dies, and stops them
all on SIGTERM/SIGINT.

Rules:
- one supervisor per data dir (an flock on `<data-dir>/LOCK`);
- the data dir remembers its cluster token and member name (`<data-dir>/member.json`); a
  node started with other values refuses to start;
- a data dir whose consensus log is damaged, or whose store has applied entries past the
  end of the log, is refused before any actor runs (nodes/preflight.py);
- a member that joins an existing cluster (`--initial-cluster-state existing`, fresh data
  dir) asks its peers for the membership first and takes the id `member add` gave it;
  member.json keeps that identity for its restarts;
- a member removed from the cluster stops for good: consensus leaves `<data-dir>/removed`,
  the supervisor stops the node when it sees it, and refuses to start on that data dir;
- each actor is in its own process group, so a terminal's Ctrl-C reaches only the
  supervisor, which then stops the actors in order;
- an actor that dies is restarted at once, then with a growing delay if it keeps dying;
- actors exit by themselves when the supervisor disappears (see actors/runtime/actor.py);
- systemd (Type=notify): READY=1 once every actor is ready, STOPPING=1 at the stop; with
  WATCHDOG_USEC, WATCHDOG=1 every half of it, only while the node is healthy: every actor
  has a process, said it is ready, and its event loop sent a heartbeat within
  HEARTBEAT_STALE_S (a wedged or SIGSTOPped actor stops the pings, and systemd restarts the
  node after WatchdogSec=); a STATUS= line (role, term, applied index, alarms, or what is
  wrong) whenever it changes, at most once every STATUS_INTERVAL_S.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import zmq

from actors.runtime import log as runtime_log
from actors.runtime import messages as M
from actors.runtime import wire
from nodes import preflight
from nodes.config import VERSION, Config
from nodes.endpoints import IPC_PATH_MAX, Endpoints, run_dir_for
from nodes.perms import PRIVATE_UMASK, UnsafeDirError, make_private_dir, secure_data_dir
from protocol import errors
from protocol.codec import unpack_msg
from protocol.errors import Malformed

_READY_TYPES = frozenset((M.READY, M.HEARTBEAT))  # what the readiness PULL may receive (runtime/wire.py)

ROLES = ("consensus", "storage", "watch", "gateway")  # start order; stopped in reverse
METRICS_ROLE = "metrics"  # started last, only when --listen-metrics-urls names a URL
GRPC_ROLE = "grpc"  # etcd's gRPC API (actors/grpcgw/), only when --listen-grpc-urls names a URL
STOP_GRACE_S = 4.0
RESTART_DELAY_MAX_S = 5.0
JOIN_TIMEOUT_S = 15.0
REMOVED_MARKER = "removed"  # written by consensus when this member is removed
HEARTBEAT_STALE_S = 2.0  # an actor silent this long is "not answering" (it beats every 0.25 s)
STATUS_INTERVAL_S = 1.0  # STATUS= is sent at most this often
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 * 1024**2), "MALLOC_TRIM_THRESHOLD_": str(8 * 1024**2)}


class StartupError(Exception):
    """The node cannot start; the message says why in one line. `exit_code` 1: it may
    start later by itself (a port or the data dir in use); DATA_DIR_REFUSED: it never will
    until an operator acts (deploy/qkv.service does not restart it)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


DATA_DIR_REFUSED = 78  # EX_CONFIG: a damaged data dir (nodes/preflight.py)


@dataclass
class Child:
    role: str
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    ready: bool = False
    history: list[float] = field(default_factory=list)
    last_heartbeat: float = 0.0  # monotonic time of its last READY or HEARTBEAT
    status: M.HeartbeatStatus = field(default_factory=lambda: M.HeartbeatStatus())


def watchdog_interval_s(env: dict[str, str] | os._Environ[str], pid: int) -> float | None:
    """How often to send WATCHDOG=1 (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None: no watchdog asked for, a bad value, or it is meant for another
    process (WATCHDOG_PID)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def node_problems(children: dict[str, Child], now: float) -> list[str]:
    """What keeps the node from being healthy, one phrase per actor ([] = healthy)."""
    problems = []
    for role, child in children.items():
        if child.proc is None:
            problems.append(f"{role} restarting")
        elif not child.ready:
            problems.append(f"{role} starting")
        elif now - child.last_heartbeat >= HEARTBEAT_STALE_S:
            problems.append(f"{role} not answering")
    return problems


def status_text(children: dict[str, Child], problems: list[str], announced: bool) -> str:
    """The STATUS= line systemctl status shows, e.g. `leader, term 3, applied 1042,
    revision 1000, alarms: none` or `unhealthy: storage not answering`."""
    if problems:
        return f"{'unhealthy' if announced else 'starting'}: {', '.join(problems)}"
    raft = children["consensus"].status if "consensus" in children else M.HeartbeatStatus()
    store = children["storage"].status if "storage" in children else M.HeartbeatStatus()
    state = raft.get("state", "unknown")
    if state != "leader" and not raft.get("leader"):
        state += " (no leader)"
    alarms = store.get("alarms") or []
    return (f"{state}, term {raft.get('term', 0)}, applied {store.get('applied_index', 0)}, "
            f"revision {store.get('revision', 0)}, alarms: {', '.join(alarms) if alarms else 'none'}")


def _sd_notify(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)  # a listener that does not read never stalls the supervisor for long
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        pass


def _check_port_free(flag: str, url: str) -> None:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host != "*" else "0.0.0.0", int(port)))
        except OSError as exc:
            raise StartupError(f"cannot listen on {flag} {url}: {exc.strerror}") from None


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.endpoints = Endpoints(run_dir_for(self.data_dir))
        self.log = runtime_log.configure(cfg.log_level, cfg.log_format, node=cfg.name, actor="supervisor")
        roles = (ROLES + ((GRPC_ROLE,) if cfg.listen_grpc_urls else ())
                 + ((METRICS_ROLE,) if cfg.listen_metrics_urls else ()))
        self.children = {role: Child(role) for role in roles}  # in start order
        self.stopping = False
        self._lock_fd: int | None = None

    # --- start-up ------------------------------------------------------------------
    def prepare(self) -> None:
        # Everything a node writes is its user's alone (nodes/perms.py); the actors inherit it.
        os.umask(PRIVATE_UMASK)
        try:
            old_mode, fixed = secure_data_dir(self.data_dir)
        except UnsafeDirError as exc:
            raise StartupError(str(exc)) from None
        if old_mode is not None or fixed:
            self.log.warning("data_dir_permissions_fixed", data_dir=self.data_dir,
                             old_mode=f"{old_mode:04o}" if old_mode is not None else None, entries_fixed=fixed,
                             message="the data dir was readable by other users; it is now 0700, its files 0600")
        self._lock_fd = os.open(os.path.join(self.data_dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"data dir {self.data_dir} is in use by another qkv process") from None
            raise
        self._check_removed()
        self._check_member_file()
        try:  # a damaged log or a store ahead of it: refuse before any actor runs
            checked = preflight.check(self.data_dir, self.cfg.member_id)
        except preflight.PreflightError as exc:
            raise StartupError(str(exc), DATA_DIR_REFUSED) from None
        self.log.info("data_dir_checked", **vars(checked))
        for flag, urls in (
            ("--listen-client-urls", self.cfg.listen_client_urls),
            ("--listen-peer-urls", self.cfg.listen_peer_urls),
            ("--listen-watch-urls", self.cfg.listen_watch_urls),
            ("--listen-metrics-urls", self.cfg.listen_metrics_urls),
            ("--listen-grpc-urls", self.cfg.listen_grpc_urls),
        ):
            for url in urls:
                _check_port_free(flag, url)
        longest = max(self.endpoints.ipc_files(), key=len)
        if len(longest) > IPC_PATH_MAX:
            raise StartupError(f"the ipc path {longest} is longer than {IPC_PATH_MAX} characters: "
                               "set TMPDIR to a shorter directory")
        try:
            make_private_dir(self.endpoints.run_dir)
        except UnsafeDirError as exc:
            raise StartupError(str(exc)) from None
        self._prepare_metrics_dir()
        self._warn_ignored_faults()
        for path in self.endpoints.ipc_files():  # a stale ipc file would steal connections
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.config_path = os.path.join(self.endpoints.run_dir, "config.json")
        with open(self.config_path + ".tmp", "w") as f:
            f.write(self.cfg.to_json())
        os.replace(self.config_path + ".tmp", self.config_path)

    def _prepare_metrics_dir(self) -> None:
        """prometheus_client's multiprocess mode: every process of the node writes its
        metrics to files in one private dir (<run dir>/metrics), and a scrape sums them
        (actors/runtime/metrics.py). Files left by an earlier run would be counted again:
        the dir starts empty."""
        shutil.rmtree(self.endpoints.metrics_dir, ignore_errors=True)
        try:
            make_private_dir(self.endpoints.metrics_dir)
        except UnsafeDirError as exc:
            raise StartupError(str(exc)) from None
        # Set before this process first imports prometheus_client (the mode is chosen then),
        # and inherited by the actors.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.endpoints.metrics_dir
        from actors.runtime import metrics  # noqa: F401

    def _warn_ignored_faults(self) -> None:
        if self.cfg.test_fault_injection:
            self.log.warning("test_fault_injection_on", message="--test-fault-injection is for tests only: "
                             f"{self.endpoints.faults_file} and QKV_FAILPOINTS are obeyed")
            return
        if os.environ.get("QKV_FAILPOINTS") or os.path.exists(self.endpoints.faults_file):
            self.log.warning("fault_injection_ignored", message="QKV_FAILPOINTS / faults.json are ignored "
                             "without the test-only --test-fault-injection")

    def _check_removed(self) -> None:
        try:
            with open(os.path.join(self.data_dir, REMOVED_MARKER)) as f:
                info = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            info = {}
        member = info.get("member_id")
        who = f"member {member:x}" if isinstance(member, int) else "this member"
        raise StartupError(
            f"{who} was removed from the cluster; it cannot rejoin with its old identity: "
            f"delete the data dir {self.data_dir} and add it again with `qkvctl member add`")

    def _join(self) -> Config:
        """Ask the peers of --initial-cluster for the membership; find us by peer URL. With
        peer security, each ask is a CURVE client pinned to that peer's key
        (--initial-cluster-keys), and our own key must be the one `member add` was given."""
        from actors.consensus.peer_wire import PeerWireError, decode_join_resp
        from actors.runtime import security

        mine = set(self.cfg.initial_advertise_peer_urls)
        keypair = security.load_keypair(self.cfg.peer_key_file) if self.cfg.peer_security else None
        targets = [(u, m.peer_key) for m in self.cfg.members for u in m.peer_urls if u not in mine
                   and (keypair is None or m.peer_key)]
        if not targets:
            raise StartupError("--initial-cluster-state existing needs the other members in --initial-cluster"
                               + (" and their keys in --initial-cluster-keys" if keypair else ""))
        ctx = zmq.Context()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        why = "no peer answered"
        try:
            while time.monotonic() < deadline:
                for url, key in targets:
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    if keypair is not None:
                        security.make_curve_client(sock, keypair[0], keypair[1], key)
                    sock.connect(url)
                    try:
                        sock.send(wire.pack(M.PeerJoin(0)))
                        if not sock.poll(500):
                            continue
                        msg_type, body = unpack_msg(sock.recv())
                        if msg_type != M.PEER_JOIN_RESP:
                            continue
                        resp = decode_join_resp(body)
                        cluster, members = resp.cluster_id, resp.members
                        found = [m for m in members if mine & set(m[2])]
                    except (PeerWireError, errors.QkvError):  # a bad answer: ask another peer
                        continue
                    finally:
                        sock.close()
                    if found and keypair is not None and found[0][4] != keypair[0].decode():
                        raise StartupError("the peer key given at `member add` is not the public key of "
                                           "--peer-key-file")
                    if found:
                        self.log.info("joined_existing_cluster", member_id=f"{found[0][0]:x}",
                                      cluster_id=f"{cluster:x}", members=len(members))
                        return dataclasses.replace(self.cfg, assigned_member_id=found[0][0],
                                                   assigned_cluster_id=cluster, initial_members=members)
                    why = (f"no member has the peer URLs {sorted(mine)} (add it first with "
                           "`qkvctl member add`)")
                time.sleep(0.2)
        finally:
            ctx.destroy(linger=0)
        raise StartupError(f"cannot join the existing cluster: {why}")

    def _check_member_file(self) -> None:
        path = os.path.join(self.data_dir, "member.json")
        try:
            with open(path) as f:
                stored = json.load(f)
        except FileNotFoundError:
            if self.cfg.initial_cluster_state == "existing":
                self.cfg = self._join()
            mine = {
                "name": self.cfg.name,
                "member_id": self.cfg.member_id,
                "cluster_id": self.cfg.cluster_id,
                "initial_cluster_token": self.cfg.initial_cluster_token,
                "joined": bool(self.cfg.assigned_member_id),
                "initial_members": self.cfg.initial_members,
            }
            with open(path + ".tmp", "w") as f:
                json.dump(mine, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
            return
        if stored.get("name") != self.cfg.name:
            raise StartupError(
                f"--name {self.cfg.name!r} does not match the data dir {self.data_dir} "
                f"(it belongs to name {stored.get('name')!r})")
        if stored.get("joined"):
            # Joined at runtime: the identity is the one the cluster gave, not the flags'.
            self.cfg = dataclasses.replace(
                self.cfg, assigned_member_id=stored["member_id"], assigned_cluster_id=stored["cluster_id"],
                initial_members=stored.get("initial_members") or [])
            return
        mine = {
            "name": self.cfg.name,
            "member_id": self.cfg.member_id,
            "cluster_id": self.cfg.cluster_id,
            "initial_cluster_token": self.cfg.initial_cluster_token,
        }
        for key, flag in (("name", "--name"), ("initial_cluster_token", "--initial-cluster-token")):
            if stored.get(key) != mine[key]:
                raise StartupError(
                    f"{flag} {mine[key]!r} does not match the data dir {self.data_dir} "
                    f"(it belongs to {key} {stored.get(key)!r})"
                )
        if stored.get("cluster_id") != mine["cluster_id"]:
            raise StartupError(
                f"--initial-cluster does not match the data dir {self.data_dir} "
                f"(cluster id {stored.get('cluster_id'):x}, the flags give {mine['cluster_id']:x})"
            )

    # --- children ------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        env = dict(os.environ, QKV_SUPERVISOR_PID=str(os.getpid()))
        # Fixed glibc malloc thresholds (an operator's own settings win). Replies of 1 MiB
        # made and freed in bursts (many clients reading big values) otherwise stay in
        # RSS: glibc's dynamic thresholds rise after the first big free, and the freed
        # blocks then sit in heaps it does not trim (measured, issue 12: the gateway and
        # storage kept 20-60 MiB each after a burst of slow connections). With these, a
        # block of 4 MiB or more is mmapped (returned at free) and a heap top over 8 MiB
        # is trimmed. glibc's default fixed threshold (128 KiB) would do it too, but every
        # 200 KiB-1 MiB value then costs an mmap and its page faults: reads of such values
        # ran 2-3x slower.
        for name, value in MALLOC_ENV.items():
            env.setdefault(name, value)
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "actors", child.role, "--config", self.config_path],
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.ready = False
        child.status = M.HeartbeatStatus()
        self.log.info("actor_spawned", role=child.role, pid=child.proc.pid, restarts=child.restarts)

    def _reap(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            if os.path.exists(os.path.join(self.data_dir, REMOVED_MARKER)):
                self.log.error("member_removed", message="this member was removed from the cluster; "
                               "the node stops and will not start again on this data dir")
                self.stopping = True
                child.proc = None
                return
            self.log.warning("actor_died", role=child.role, pid=child.proc.pid, exit_code=code)
            from actors.runtime import metrics  # imported by prepare(), after the variable was set

            metrics.process_died(child.proc.pid)
            metrics.actor_restarts.labels(child.role).inc()  # restarted below
            child.proc = None
            child.ready = False
            child.restarts += 1
            child.history = [t for t in child.history if now - t < 30] + [now]
            # Restart at once the first time; back off if it keeps dying.
            delay = 0.0 if len(child.history) <= 1 else min(RESTART_DELAY_MAX_S, 0.25 * 2 ** (len(child.history) - 2))
            child.restart_at = now + delay
        for child in self.children.values():
            if child.proc is None and child.restart_at is not None and child.restart_at <= now:
                self._spawn(child)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        ctx = zmq.Context()
        ready_sock = ctx.socket(zmq.PULL)
        ready_sock.setsockopt(zmq.LINGER, 0)
        ready_sock.bind(self.endpoints.supervisor)
        announced = False
        ready_dropped = wire.Dropped(self.log)
        watchdog_s = watchdog_interval_s(os.environ, os.getpid())
        next_ping = 0.0
        problems_seen: list[str] | None = None
        status_sent, status_at = "", -STATUS_INTERVAL_S
        try:
            self.log.info(
                "node_starting", version=VERSION, data_dir=self.data_dir, member_id=f"{self.cfg.member_id:x}",
                client_urls=self.cfg.listen_client_urls, watch_urls=self.cfg.listen_watch_urls,
            )
            for role in self.children:  # ROLES, then grpc and metrics
                self._spawn(self.children[role])
            while not self.stopping:
                if ready_sock.poll(50):
                    for _ in range(1024):  # bounded: a flood cannot keep the loop from its other work
                        try:
                            msg: M.Ready | M.Heartbeat = wire.decode(ready_sock.recv(zmq.NOBLOCK), _READY_TYPES)
                        except zmq.Again:
                            break
                        except Malformed as err:
                            ready_dropped("supervisor.ready", err)
                            continue
                        child = self.children.get(msg.role)
                        if child is None or child.proc is None or child.proc.pid != msg.pid:
                            continue  # an actor since replaced, or not ours
                        child.last_heartbeat = time.monotonic()
                        if isinstance(msg, M.Heartbeat):
                            child.status = msg.status
                        else:
                            child.ready = True
                if not announced and all(c.ready for c in self.children.values()):
                    announced = True
                    self.log.info("node_ready", client_urls=self.cfg.advertise_client_urls)
                    _sd_notify("READY=1")
                self._reap()
                now = time.monotonic()
                problems = node_problems(self.children, now)
                if announced and problems != problems_seen:
                    if problems:
                        self.log.warning("node_unhealthy", problems=problems, watchdog=watchdog_s is not None)
                    elif problems_seen:
                        self.log.info("node_healthy")
                    problems_seen = problems
                if announced and not problems and watchdog_s is not None and now >= next_ping:
                    _sd_notify("WATCHDOG=1")
                    next_ping = now + watchdog_s
                text = status_text(self.children, problems, announced)
                if text != status_sent and now - status_at >= STATUS_INTERVAL_S:
                    _sd_notify("STATUS=" + text)
                    status_sent, status_at = text, now
        finally:
            _sd_notify("STOPPING=1")
            self.stop()
            ctx.destroy(linger=0)
        return 0

    def stop(self) -> None:
        started = time.monotonic()
        live = [(c, c.proc) for c in reversed(self.children.values()) if c.proc is not None]
        for _, proc in live:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = started + STOP_GRACE_S
        for child, proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("actor_killed_on_stop", role=child.role, pid=proc.pid)
                proc.kill()
                proc.wait()
        for path in [*self.endpoints.ipc_files(), self.config_path]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        shutil.rmtree(self.endpoints.metrics_dir, ignore_errors=True)
        try:
            os.rmdir(self.endpoints.run_dir)
        except OSError:
            pass
        self.log.info("node_stopped", took_ms=round((time.monotonic() - started) * 1000))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
