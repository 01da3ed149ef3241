"""Real link cuts: every node in its own network namespace, linked by veth to a bridge.

`NetnsCluster` has `Cluster`'s interface (tests/nodeproc.py), but each member runs under
`ip netns exec`, with one veth pair into a per-cluster bridge in the root namespace and
an address 10.<x>.<y>.<n>/24 (the bridge is .254, so the test process reaches every
client port). partition / cut_one_way / heal add and remove policy-routing rules in the
sending node's namespace (`ip rule ... unreachable`, matching the peer's address and the
peer ports only): the kernel drops the peer traffic, not the transport's fault layer,
while clients in the root namespace still reach every member, a minority one too.
(`ip rule` because this machine has no iptables, nft or tc actions.)

Names carry the prefix `qkvn`, then the owner's pid (6 hex digits) and a counter, so
`cleanup_stale()` can remove what a crashed run left behind without touching the
clusters of runs that are still alive. `stop()`, `discard()` and an atexit hook always tear down.
"""
from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nodeproc import Cluster, NodeProcess  # noqa: E402

PREFIX = "qkvn"
RULE_PREF = "1000"  # before the main table (32766)
NETWORKS = ("faults", "netns")
_counter = itertools.count(1)
_live: dict[int, "NetnsCluster"] = {}


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_available() -> tuple[bool, str]:
    """Try it: create a probe namespace with a veth pair and a bridge inside, then delete it."""
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid():06x}pr"
    try:
        _run("ip", "netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    try:
        _run("ip", "-n", probe, "link", "add", "qa", "type", "veth", "peer", "name", "qb")
        _run("ip", "-n", probe, "link", "add", "qbr", "type", "bridge")
        _run("ip", "-n", probe, "rule", "add", "pref", RULE_PREF, "to", "10.0.0.1/32", "ipproto", "tcp",
             "dport", "1", "unreachable")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return True, "ok"


def _owner_pid(name: str) -> int | None:
    """The pid in one of our names (qkvn + 6 hex digits + ...), None if not ours."""
    if not name.startswith(PREFIX) or len(name) < len(PREFIX) + 6:
        return None
    try:
        return int(name[len(PREFIX):len(PREFIX) + 6], 16)
    except ValueError:
        return None


def _kill_pids_in(ns: str) -> None:
    out = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in out:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Remove namespaces, veths and bridges with our prefix whose owning process is dead
    (a crashed or killed earlier run); what is still alive is left alone. Returns the names."""
    removed: list[str] = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        pid = _owner_pid(ns)
        if pid is not None and not _pid_alive(pid):
            _kill_pids_in(ns)  # orphaned nodes of that run
            if _run("ip", "netns", "del", ns, check=False).returncode == 0:
                removed.append(ns)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        pid = _owner_pid(name)
        if pid is not None and not _pid_alive(pid):
            if _run("ip", "link", "del", name, check=False).returncode == 0:
                removed.append(name)
    return removed


def _subnet_in_use(prefix: str) -> bool:
    net = ipaddress.ip_network(f"{prefix}.0/24")
    for line in _run("ip", "-4", "-o", "addr", "show", check=False).stdout.splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                try:
                    if ipaddress.ip_interface(word).network.overlaps(net):
                        return True
                except ValueError:
                    pass
    return False


class NetnsCluster(Cluster):
    """A Cluster whose members each live in a network namespace; link cuts are kernel rules."""

    def __init__(self, tmp_path: Path, size: int = 3, args: list[str] | None = None,
                 token: str = "test-cluster", secure: bool = False, grpc: bool = False) -> None:
        if size > 99:
            raise ValueError("at most 99 members")
        pid, n = os.getpid(), next(_counter)
        self.tag = f"{PREFIX}{pid:06x}{n % 256:02x}"  # 12 chars: + 1 role letter + up to 2 digits
        seq = (pid * 256 + n) % (100 * 256)
        for _ in range(100 * 256):
            prefix = f"10.{100 + seq // 256}.{seq % 256}"
            if not _subnet_in_use(prefix):
                break
            seq = (seq + 1) % (100 * 256)
        self.prefix = prefix
        self.bridge = f"{self.tag}br"
        self.gateway_ip = f"{prefix}.254"
        self._made = False
        self._cuts: set[tuple[str, str]] = set()  # (from name, to name) pairs whose traffic is dropped
        self._applied: set[tuple[str, str]] = set()
        self._index = 0
        # The members listen on 10.x addresses: plain text there must be asked for.
        insecure = [] if secure else ["--insecure-peer", "--insecure-client"]
        super().__init__(tmp_path, size, [*insecure, *(args or [])], token, secure=secure, grpc=grpc)

    # -- placement -------------------------------------------------------------------------
    def _new_node(self, tmp_path: Path, name: str) -> NodeProcess:
        self._index += 1
        ns = f"{self.tag}n{self._index}"
        node = NodeProcess(tmp_path, name, None, host=f"{self.prefix}.{self._index}",
                           command_prefix=["ip", "netns", "exec", ns])
        node.netns = ns
        node.ip = f"{self.prefix}.{self._index}"
        node.veth = f"{self.tag}h{self._index}"
        node.peer_port = node.peer_url.rsplit(":", 1)[1]
        return node

    def _setup(self) -> None:
        """The bridge in the root namespace, then one namespace + veth pair per member."""
        _live[id(self)] = self
        self._made = True
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for n in self.nodes:
            _run("ip", "netns", "add", n.netns)
            _run("ip", "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
            _run("ip", "link", "set", n.veth, "master", self.bridge)
            _run("ip", "link", "set", n.veth, "up")
            _run("ip", "-n", n.netns, "link", "set", "lo", "up")
            _run("ip", "-n", n.netns, "addr", "add", f"{n.ip}/24", "dev", "eth0")
            _run("ip", "-n", n.netns, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        """Delete every namespace, veth and the bridge; safe to call twice or after a failure."""
        _live.pop(id(self), None)
        if not self._made:
            return
        for n in self.nodes:
            _kill_pids_in(n.netns)
            _run("ip", "netns", "del", n.netns, check=False)  # takes its end of the veth along
            _run("ip", "link", "del", n.veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self._applied.clear()
        self._made = False

    def start(self, timeout: float = 30.0) -> "NetnsCluster":
        cleanup_stale()
        try:
            if not self._made:
                self._setup()
            return super().start(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.teardown()

    def discard(self) -> None:
        """Kill every member (`Cluster.discard`), then tear down as `stop()` does."""
        try:
            super().discard()
        finally:
            self.teardown()

    # -- link cuts ---------------------------------------------------------------------------
    def partition(self, *groups: list[NodeProcess]) -> None:
        """Cut every link between different groups (both ways); the grouped nodes' earlier
        cuts are replaced, nodes in no group keep theirs (as Cluster does)."""
        grouped = {n.name for g in groups for n in g}
        cuts = {c for c in self._cuts if c[0] not in grouped and c[1] not in grouped}
        for group in groups:
            for other in groups:
                if other is not group:
                    cuts |= {(a.name, b.name) for a in group for b in other}
        self._cuts = cuts
        self._sync()

    def cut_one_way(self, frm: NodeProcess, to: NodeProcess) -> None:
        """Packets from `frm` to `to` on the peer links are dropped (with TCP both directions
        of those connections stall, which is still a real one-way loss)."""
        touched = {frm.name, to.name}
        self._cuts = {c for c in self._cuts if c[0] not in touched and c[1] not in touched}
        self._cuts.add((frm.name, to.name))
        self._sync()

    def heal(self) -> None:
        self._cuts = set()
        self._sync()

    def cuts(self) -> set[tuple[str, str]]:
        """The (from, to) pairs whose peer traffic the kernel drops now."""
        return set(self._applied)

    def _rules(self, frm: NodeProcess, to: NodeProcess) -> list[list[str]]:
        """In frm's namespace: its connections to to's peer port, and everything it sends
        from its own peer port (acks and replies on to's connections)."""
        return [
            ["to", f"{to.ip}/32", "ipproto", "tcp", "dport", to.peer_port, "unreachable"],
            ["to", f"{to.ip}/32", "ipproto", "tcp", "sport", frm.peer_port, "unreachable"],
        ]

    def _sync(self) -> None:
        if not self._made:
            raise RuntimeError("the cluster's network is not set up (start() first)")
        by_name = {n.name: n for n in self.nodes}
        for a, b in sorted(self._applied - self._cuts):
            for rule in self._rules(by_name[a], by_name[b]):
                _run("ip", "-n", by_name[a].netns, "rule", "del", "pref", RULE_PREF, *rule)
            self._applied.discard((a, b))
        for a, b in sorted(self._cuts - self._applied):
            for rule in self._rules(by_name[a], by_name[b]):
                _run("ip", "-n", by_name[a].netns, "rule", "add", "pref", RULE_PREF, *rule)
            self._applied.add((a, b))


def make_cluster(workdir: Path, size: int, args: list[str] | None, network: str = "faults",
                 secure: bool = False, grpc: bool = False) -> Cluster:
    """The harness's cluster: link cuts by the transport's fault layer ("faults") or by
    the kernel between network namespaces ("netns"); `secure`: CURVE on every port;
    `grpc`: every member serves etcd's gRPC API too (NodeProcess `grpc_endpoint`)."""
    if network == "faults":
        return Cluster(workdir, size, args=args, secure=secure, grpc=grpc)
    if network == "netns":
        ok, reason = netns_available()
        if not ok:
            raise RuntimeError(f"network namespaces need CAP_NET_ADMIN: {reason}")
        return NetnsCluster(workdir, size, args=args, secure=secure, grpc=grpc)
    raise ValueError(f"unknown network {network!r}: expected one of {', '.join(NETWORKS)}")


@atexit.register
def _teardown_all() -> None:
    for cluster in list(_live.values()):
        try:
            cluster.stop()
        except Exception as exc:  # noqa: BLE001 - exiting anyway: report and go on
            print(f"netns: teardown of {cluster.tag} failed: {exc}", file=sys.stderr)
