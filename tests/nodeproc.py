"""Real quorumkv nodes for tests: free ports, a tmp data dir, and a guaranteed stop.

`NodeProcess` runs `qkv` as a user would, finds its actor processes through /proc, and
on `stop()` makes sure the supervisor and every actor are gone, also when a test fails.
`raw_request` talks to a gateway with a bare DEALER socket (no client library).
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from nodes.endpoints import run_dir_for
from protocol.codec import pack, unpack

ROLES = ("consensus", "storage", "gateway", "watch")
_ids = itertools.count(1)


# Ports handed out come from below Linux's ephemeral range (32768-60999 by default): a port
# the kernel picked for `bind(0)` can be taken, before a node binds it, by the outgoing
# connection of another node (seen: a gateway refused "Address already in use" for 30 s).
# Each process walks its own shuffle (seeded by its pid, so a forked child does not repeat
# its parent's ports).
_ports: dict[int, tuple[list[int], Any]] = {}


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range, never the same twice in
    one test process."""
    pid = os.getpid()
    if pid not in _ports:
        order = list(range(20000, 32768))
        random.Random(pid).shuffle(order)
        _ports[pid] = (order, itertools.count())
    order, counter = _ports[pid]
    for _ in range(len(order)):
        port = order[next(counter) % len(order)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ok(reply: dict[str, Any] | None) -> dict[str, Any]:
    """A raw reply that must be a success."""
    assert reply is not None, "no reply"
    assert reply["ok"], reply
    return reply


def err(reply: dict[str, Any] | None, code: str) -> dict[str, Any]:
    """A raw reply that must be the error `code`; its error map."""
    assert reply is not None, "no reply"
    assert not reply["ok"] and reply["error"]["code"] == code, reply
    return reply["error"]


def promote_when_ready(c: Any, member_id: int) -> None:
    """Promote a learner as soon as the leader finds it caught up."""
    from protocol import errors

    def attempt() -> bool:
        try:
            c.member_promote(member_id)
            return True
        except (errors.LearnerNotReady, errors.ConfChangeInProgress):
            return False

    wait_for(attempt, 30, "the learner to catch up and be promoted", interval=0.2)


class Security:
    """Keys of a secure test cluster: a peer key pair per member and one client-port key
    pair that every member serves with (its public half is what clients trust), plus a
    client key pair for the tests themselves and, once auth is on, a root token."""

    def __init__(self, key_dir: Path, names: list[str]) -> None:
        from actors.runtime import security

        self.key_dir = key_dir
        self.peer: dict[str, tuple[bytes, bytes]] = {}
        self.peer_files: dict[str, str] = {}
        for name in names:
            self.add_member(name)
        _, secret = security.generate(str(key_dir), "server")
        self.server_file = secret
        self.server_public = security.load_keypair(secret)[0]
        self.client = zmq.curve_keypair()
        self.token: str | None = None
        # Who the harness's raw requests are, once auth is on: a lost token (a restarted
        # gateway forgets them) is renewed with these.
        self.user: str | None = None
        self.password: str | None = None

    def add_member(self, name: str) -> bytes:
        """A peer key pair for a member; its public key (Z85)."""
        from actors.runtime import security

        _, secret = security.generate(str(self.key_dir), name)
        self.peer_files[name] = secret
        self.peer[name] = security.load_keypair(secret)
        return self.peer[name][0]

    def initial_keys(self, names: list[str]) -> str:
        return ",".join(f"{n}={self.peer[n][0].decode()}" for n in names)

    def node_args(self, name: str, names: list[str]) -> list[str]:
        return ["--peer-key-file", self.peer_files[name], "--initial-cluster-keys", self.initial_keys(names),
                "--client-key-file", self.server_file]

    @property
    def curve(self) -> tuple[bytes, bytes, bytes]:
        """(public, secret, server public): what a CURVE client socket needs."""
        return (self.client[0], self.client[1], self.server_public)


class TlsFiles:
    """PEM files for the gRPC gateway's https:// URLs, made with `openssl` in `directory`:
    a CA (`ca`), a server certificate for 127.0.0.1 and localhost signed by it
    (`server_cert`, `server_key`), and client certificates on demand (`client(cn)`).
    EC P-256 keys (fast to make). `TlsFiles.available()` says whether openssl is there."""

    OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = self._ca("ca")
        self.server_cert, self.server_key = self.issue("server", "localhost", server=True)

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.OPENSSL, os.X_OK)

    def _openssl(self, *args: str) -> None:
        subprocess.run([self.OPENSSL, *args], check=True, capture_output=True, timeout=30)

    def _ca(self, name: str) -> tuple[str, str]:
        cert, key = str(self.dir / f"{name}.crt"), str(self.dir / f"{name}.key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN=qkv test {name}",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return cert, key

    def other_ca(self, name: str = "other-ca") -> "tuple[str, str]":
        """A second, unrelated CA (its certificates must be refused)."""
        return self._ca(name)

    def issue(self, name: str, cn: str, server: bool = False, ca: tuple[str, str] | None = None) -> tuple[str, str]:
        """A certificate with CN `cn` signed by `ca` (default: this CA); (cert, key) paths."""
        ca_cert, ca_key = ca or (self.ca, self.ca_key)
        cert, key, csr = (str(self.dir / f"{name}.{ext}") for ext in ("crt", "key", "csr"))
        ext = self.dir / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                       else "extendedKeyUsage=clientAuth\n")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
        self._openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                      "-set_serial", str(random.getrandbits(63)), "-days", "2", "-out", cert, "-extfile", str(ext))
        return cert, key

    def client(self, cn: str) -> tuple[str, str]:
        """A client certificate for user `cn` signed by this CA: (cert, key) paths."""
        return self.issue(f"client-{cn}", cn)

    def node_args(self, client_cert_auth: bool = True) -> list[str]:
        """qkv's TLS flags (etcd's) for NodeProcess(grpc_tls=...)."""
        args = ["--cert-file", self.server_cert, "--key-file", self.server_key]
        if client_cert_auth:
            args += ["--trusted-ca-file", self.ca, "--client-cert-auth"]
        return args

    @staticmethod
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


def log_events(text: str, name: str) -> list[dict[str, Any]]:
    """The JSON log records of event `name` in a node's log text, in order."""
    out = []
    for line in text.splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == name:
            out.append(rec)
    return out


def put_burst(url: str, n: int, prefix: bytes, window: int = 128, value: bytes = b"v" * 20) -> None:
    """n puts (keys prefix + 000001...), `window` in flight at once on one DEALER; every
    one must succeed."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sent = done = 0
        while done < n:
            while sent < n and sent - done < window:
                sent += 1
                sock.send(pack({"id": sent, "op": "put", "key": prefix + b"%06d" % sent, "value": value}))
            assert sock.poll(10_000), "no reply within 10 s"
            reply = unpack(sock.recv())
            assert reply["ok"], reply
            done += 1
    finally:
        sock.close()


def raw_request(url: str, req: dict[str, Any], timeout: float = 5.0,
                security: Security | None = None) -> dict[str, Any] | None:
    """Send one request on a fresh DEALER; the decoded reply, or None on timeout. With
    `security`, the socket is a CURVE client and requests carry its token (if any),
    renewed once when the member no longer knows it."""
    reply = _raw_request(url, req, timeout, security)
    if (security is not None and security.password and reply is not None and not reply.get("ok")
            and reply.get("error", {}).get("code") == "invalid_auth_token" and "token" not in req):
        auth = _raw_request(url, {"op": "authenticate", "name": security.user, "password": security.password},
                            timeout, security)
        if auth and auth.get("ok"):
            security.token = auth["token"]
            reply = _raw_request(url, req, timeout, security)
    return reply


def _raw_request(url: str, req: dict[str, Any], timeout: float, security: Security | None) -> dict[str, Any] | None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if security is not None:
        from actors.runtime.security import make_curve_client

        make_curve_client(sock, *security.curve)
        if security.token and "token" not in req and req.get("op") != "authenticate":
            req = dict(req, token=security.token)
    sock.connect(url)
    try:
        req = dict(req)
        req.setdefault("id", next(_ids))
        sock.send(pack(req))
        if not sock.poll(int(timeout * 1000)):
            return None
        return unpack(sock.recv())
    finally:
        sock.close()


class NodeProcess:
    def __init__(self, tmp_path: Path, name: str = "n1", args: list[str] | None = None,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 command_prefix: list[str] | None = None, security: Security | None = None,
                 metrics: bool = False, grpc: bool = False, grpc_tls: list[str] | None = None) -> None:
        """`grpc`: serve etcd's gRPC API on `grpc_url` (http://, the grpc actor), and
        `grpc_endpoint` (host:port) for etcdctl and grpc channels. `grpc_tls`: the TLS flags
        (TlsFiles.node_args()); `grpc_url` is then https://.
        `host` and `command_prefix` (e.g. `ip netns exec NS`) let a node run in its own
        network namespace (tests/robustness/netns.py); the ports stay free_port() ones.
        `metrics`: serve --listen-metrics-urls on `metrics_url` (the fifth actor). Off unless
        a test asks: nothing else depends on that actor, and every node start of the suite
        would pay for its process (tests/integration/test_metrics_*.py run it)."""
        self.name = name
        self.data_dir = str(tmp_path / f"{name}.qkv")
        self.client_url = f"tcp://{host}:{free_port()}"
        self.peer_url = f"tcp://{host}:{free_port()}"
        self.watch_url = f"tcp://{host}:{free_port()}"
        self.metrics_url = f"http://{host}:{free_port()}"
        self.metrics = metrics
        self.grpc_url = f"{'https' if grpc_tls else 'http'}://{host}:{free_port()}"
        self.grpc = grpc or bool(grpc_tls)
        self.grpc_tls = list(grpc_tls or [])
        self.command_prefix = list(command_prefix or [])
        self.args = list(args or [])
        self.security = security
        self.env = dict(os.environ, **(env or {}))
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def grpc_endpoint(self) -> str:
        """host:port of `grpc_url`, as etcdctl's --endpoints and grpc channels take it."""
        return self.grpc_url.split("://", 1)[1]

    @property
    def config_path(self) -> str:
        return os.path.join(run_dir_for(self.data_dir), "config.json")

    def command(self) -> list[str]:
        return [
            *self.command_prefix,
            sys.executable, "-c", "from nodes.cli import main; main()",
            "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--listen-watch-urls", self.watch_url,
            "--listen-metrics-urls", self.metrics_url if self.metrics else "",
            "--listen-grpc-urls", self.grpc_url if self.grpc else "",
            *(self.grpc_tls if self.grpc else []),
            *self.args,
        ]

    def start(self, wait: bool = True, timeout: float = 20.0) -> "NodeProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def request(self, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
        return raw_request(self.client_url, req, timeout, self.security)

    def serves(self) -> bool:
        """True when a linearizable read and the status op both answer."""
        for req in ({"op": "status"}, {"op": "range", "key": b"health"}):
            reply = self.request(req, timeout=1.0)
            if not reply or not reply.get("ok"):
                return False
        return True

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"qkv exited with {self.proc.returncode}; log:\n{self.log_text()[-3000:]}")
            return self.serves() and (not self.grpc or self.grpc_listens())

        wait_for(ready, timeout, f"node {self.name} to serve")

    def grpc_listens(self) -> bool:
        host, port = self.grpc_endpoint.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def actor_pids(self) -> dict[str, int]:
        """The node's live actor processes, found by their command line."""
        found: dict[str, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                continue
            if b"actors" in argv and self.config_path.encode() in argv:
                role = argv[argv.index(b"actors") + 1].decode()
                found[role] = int(entry)
        return found

    def kill_actor(self, role: str, sig: int = signal.SIGKILL) -> int:
        pid = self.actor_pids()[role]
        os.kill(pid, sig)
        return pid

    def kill(self) -> None:
        """kill -9 the whole node: supervisor and every actor at once."""
        pids = list(self.actor_pids().values())
        if self.proc is not None:
            pids.append(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait()
        wait_for(lambda: not self.actor_pids(), 10, "actors to die")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.actor_pids().values():  # never leave an actor behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def discard(self) -> None:
        """End the node when its test is over (the fixtures' teardown): kill -9 the supervisor,
        then every actor, and remove the run dir its clean stop would have removed. Nothing is
        checked after a test, and a clean stop costs about a second a node (each actor's exit,
        a leader's hand-over) that the whole suite paid hundreds of times; the clean stop
        itself is what `stop()` does, and the tests of it call that."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # first, so that no actor killed below is restarted
            self.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.actor_pids()
            if not pids:
                break
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        shutil.rmtree(run_dir_for(self.data_dir), ignore_errors=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def compacted_past(self, index: int) -> bool:
        """The node's log says its Raft log was compacted past `index` (`log_compacted`)."""
        return any(ev["index"] > index for ev in log_events(self.log_text(), "log_compacted"))


class Cluster:
    """N real nodes bootstrapped together (static --initial-cluster), with helpers to
    find the leader and cut peer links through the transport's fault layer."""

    def __init__(self, tmp_path: Path, size: int = 3, args: list[str] | None = None,
                 token: str = "test-cluster", secure: bool = False, metrics: bool = False,
                 grpc: bool = False, names: list[str] | None = None) -> None:
        """`secure`: CURVE on every port (keys in tmp_path/keys, see `Security`); `metrics`:
        every member serves its metrics URL (NodeProcess); `grpc`: every member serves
        etcd's gRPC API (NodeProcess `grpc_url`); `names`: the members' names (n1..nN)."""
        from nodes.config import member_id

        self.token = token
        names = list(names) if names else [f"n{i + 1}" for i in range(size)]
        self.security = Security(tmp_path / "keys", names) if secure else None
        self.nodes = [self._new_node(tmp_path, name) for name in names]
        initial = ",".join(f"{n.name}={n.peer_url}" for n in self.nodes)
        for n in self.nodes:
            n.security = self.security
            n.metrics = metrics
            n.grpc = grpc
            # Test clusters cut links (faults.json) and crash actors (QKV_FAILPOINTS): both
            # are obeyed only with the test-only flag.
            n.args = ["--initial-cluster", initial, "--initial-cluster-token", token, "--test-fault-injection",
                      *(args or [])]
            if self.security is not None:
                n.args += self.security.node_args(n.name, names)
            n.member_id = member_id(token, n.name)

    @property
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for protocol.client.Client on this cluster."""
        if self.security is None:
            return {}
        return {"server_key": self.security.server_public.decode()}

    def _new_node(self, tmp_path: Path, name: str) -> NodeProcess:
        """One member; subclasses (netns.py) place it elsewhere."""
        return NodeProcess(tmp_path, name, None)

    def by_id(self, member: int) -> NodeProcess:
        return next(n for n in self.nodes if n.member_id == member)

    def start(self, timeout: float = 30.0) -> "Cluster":
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def discard(self) -> None:
        """Every member's `NodeProcess.discard` (a test's teardown)."""
        for n in self.nodes:
            n.discard()

    def leader(self, among: list[NodeProcess] | None = None, timeout: float = 10.0) -> NodeProcess:
        """The node that says it leads and that the others of `among` agree on."""
        group = among or [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

        def find() -> NodeProcess | None:
            seen = set()
            for n in group:
                st = n.request({"op": "status"}, timeout=0.5)
                if not st or not st.get("ok"):
                    return None
                seen.add(st["leader"])
            if len(seen) == 1 and 0 not in seen:
                lead = seen.pop()
                return next((n for n in group if n.member_id == lead), None)
            return None

        return wait_for(find, timeout, "a leader all nodes agree on", interval=0.05)

    def converged_hashes(self, nodes: list[NodeProcess] | None = None, timeout: float = 60.0) -> set[int]:
        """Wait until every node has applied the leader's current revision; the set of
        their keyspace hashes there (one element when they agree)."""
        nodes = nodes or self.nodes
        lead = self.leader(nodes, timeout=30)
        revision = lead.request({"op": "status"}, timeout=5)["header"]["revision"]

        def applied_everywhere() -> bool:
            for n in nodes:
                st = n.request({"op": "range", "key": b"\x00", "range_end": b"\x00", "count_only": True,
                                "serializable": True}, timeout=1)
                if not st or not st.get("ok") or st["header"]["revision"] < revision:
                    return False
            return True

        wait_for(applied_everywhere, timeout, f"every node to apply revision {revision}")
        return {n.request({"op": "hash_kv", "revision": revision}, timeout=5)["hash"] for n in nodes}

    def partition(self, *groups: list[NodeProcess]) -> None:
        """Cut every link between different groups (both ways); nodes in no group keep theirs."""
        for group in groups:
            others = [n for g in groups if g is not group for n in g]
            for n in group:
                self._write_faults(n, [o.member_id for o in others], [o.member_id for o in others])

    def cut_one_way(self, frm: NodeProcess, to: NodeProcess) -> None:
        """Messages from `frm` to `to` are lost; the other direction works."""
        self._write_faults(frm, [to.member_id], [])
        self._write_faults(to, [], [frm.member_id])

    def heal(self) -> None:
        for n in self.nodes:
            self._write_faults(n, [], [])

    @staticmethod
    def _write_faults(node: NodeProcess, drop_to: list[int], drop_from: list[int]) -> None:
        """Write a node's fault file and wait until its consensus actor applies it (its
        `status.errors` say so), so a test never races the reload."""
        import json

        from nodes.endpoints import Endpoints

        path = Endpoints(run_dir_for(node.data_dir)).faults_file
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # the node refuses a looser run dir
        with open(path + ".tmp", "w") as f:
            json.dump({"drop_to": drop_to, "drop_from": drop_from}, f)
        os.replace(path + ".tmp", path)
        expected = []
        if drop_to or drop_from:
            expected = [f"peer fault injection active: drop_to={sorted(drop_to)} drop_from={sorted(drop_from)}"]
        if node.proc is None or node.proc.poll() is not None:
            return

        def applied() -> bool:
            st = node.request({"op": "status"}, timeout=1)
            return bool(st and st.get("ok") and st["errors"] == expected)

        wait_for(applied, 10, f"node {node.name} to apply the fault file")
