"""etcdctl parity: run the same commands through etcdctl 3.4 against a real etcd 3.4 and
through qkvctl against a quorumkv node, and print the parity table (issue 15).

    PYTHONPATH=. .venv/bin/python tests/parity/etcdctl_parity.py [--skip-slow] [--verbose]

A script, not a test: it needs /usr/bin/etcd and /usr/bin/etcdctl (3.4), starts both
servers on free ports in a temporary directory and stops them when it ends, also on
failure or Ctrl-C. For every one of the 53 entries of `etcdctl --help` it runs one or more
steps (a command line, with stdin where it needs one, in every `-w` format where the
command has formats) on both sides, in the same order, from the same fresh state, then
compares each step's exit code, stdout and "Error:" lines of stderr after masking what
differs by nature: ids (cluster, member, lease), hashes, raft terms and indexes, timings,
sizes of the store, versions, URLs, paths.

Columns: the command; `present` (qkvctl knows the command: `qkvctl <command> --help`
exits 0); `identical` (yes: every step's masked output is equal; no: the first differing
line of the first differing step; n/a: output that cannot be equal by nature, e.g. a shell
completion script naming its program). --skip-slow skips the two 60 s `check` runs (they
are then reported as not compared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
FORMATS = ("simple", "json", "table", "fields")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


# -- the two sides ---------------------------------------------------------------------------
@dataclass
class Side:
    name: str                  # "etcd" | "qkv"
    ctl: list[str]             # the command line of the client, without arguments
    endpoint: str
    peer_scheme: str           # http or tcp: how a member's peer URL is spelled
    tmp: Path
    proc: Optional[subprocess.Popen] = None
    ids: dict[int, str] = field(default_factory=dict)  # id -> placeholder
    subs: dict[str, str] = field(default_factory=dict)  # literal text -> placeholder
    vars: dict[str, str] = field(default_factory=dict)  # template variables ({lease} ...)
    env: dict[str, str] = field(default_factory=dict)

    def run(self, args: list[str], stdin: Optional[str] = None, timeout: float = 30.0,
            stop_after: Optional[float] = None) -> tuple[int, str, str]:
        """Run the client; with `stop_after`, SIGINT it after that many seconds and keep what
        it printed (a command that runs until interrupted: watch, elect, lock, make-mirror)."""
        cmd = [*self.ctl, "--endpoints", self.endpoint, *args]
        env = dict(os.environ, **self.env)
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
        if stop_after is not None:
            return self._run_until_quiet(p, stdin, stop_after)
        try:
            out, err = p.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return -1, out, err + "\n(timed out)"
        return p.returncode, out, err

    @staticmethod
    def _run_until_quiet(p: subprocess.Popen, stdin: Optional[str], limit: float) -> tuple[int, str, str]:
        """Let a command that runs until interrupted print (up to `limit` seconds, and 1 s
        after its first output), then SIGINT it; what it printed, exit code -2."""
        import threading

        chunks: dict[str, list[str]] = {"out": [], "err": []}
        first = threading.Event()

        def pump(stream, name: str) -> None:
            for line in iter(stream.readline, ""):
                chunks[name].append(line)
                first.set()

        readers = [threading.Thread(target=pump, args=(p.stdout, "out"), daemon=True),
                   threading.Thread(target=pump, args=(p.stderr, "err"), daemon=True)]
        for t in readers:
            t.start()
        if p.stdin is not None:
            if stdin:
                p.stdin.write(stdin)
            p.stdin.close()
        deadline = time.monotonic() + limit
        while p.poll() is None and time.monotonic() < deadline and not first.is_set():
            time.sleep(0.05)
        if first.is_set():
            try:
                p.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        rc = p.poll()
        if rc is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = -2  # "interrupted": the exit code of an interrupt is not compared
        for t in readers:
            t.join(5)
        return rc, "".join(chunks["out"]), "".join(chunks["err"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def start_etcd(tmp: Path) -> Side:
    cport, pport = free_port(), free_port()
    ep = f"127.0.0.1:{cport}"
    log = open(tmp / "etcd.log", "wb")
    proc = subprocess.Popen([ETCD, "--name", "default", "--data-dir", str(tmp / "etcd.data"),
                             "--listen-client-urls", f"http://{ep}", "--advertise-client-urls", f"http://{ep}",
                             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"default=http://127.0.0.1:{pport}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    side = Side("etcd", [ETCDCTL], ep, "http", tmp, proc, env={"ETCDCTL_API": "3"})
    side.subs.update({f"http://{ep}": "<EP>", ep: "<EP>", f"http://127.0.0.1:{pport}": "<PEERURL>",
                      str(tmp): "<TMP>"})
    return side


def start_qkv(tmp: Path) -> Side:
    cport, pport, wport = free_port(), free_port(), free_port()
    ep = f"tcp://127.0.0.1:{cport}"
    cmd = [sys.executable, "-c", "from nodes.cli import main; main()", "--name", "default",
           "--data-dir", str(tmp / "qkv.data"), "--listen-client-urls", ep,
           "--listen-peer-urls", f"tcp://127.0.0.1:{pport}", "--listen-watch-urls", f"tcp://127.0.0.1:{wport}"]
    helptext = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    if "--listen-metrics-urls" in helptext:
        cmd += ["--listen-metrics-urls", f"http://127.0.0.1:{free_port()}"]
    if "--listen-grpc-urls" in helptext:  # on by default at 2379: never the port of the etcd beside it
        cmd += ["--listen-grpc-urls", ""]
    log = open(tmp / "qkv.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    side = Side("qkv", [sys.executable, "-m", "protocol.client.cli"], ep, "tcp", tmp, proc,
                env={"PYTHONPATH": str(ROOT)})
    side.subs.update({ep: "<EP>", f"127.0.0.1:{cport}": "<EP>", f"tcp://127.0.0.1:{pport}": "<PEERURL>",
                      str(tmp): "<TMP>"})
    return side


def wait_serving(side: Side) -> None:
    def ok() -> bool:
        if side.proc is not None and side.proc.poll() is not None:
            raise RuntimeError(f"{side.name} exited; see {side.tmp}/{side.name}.log")
        rc, _, _ = side.run(["--command-timeout", "1s", "get", "health-probe"], timeout=10)
        return rc == 0
    wait_for(ok, 60, f"{side.name} to serve")


def learn_ids(side: Side) -> None:
    """The cluster and member ids, as placeholders."""
    rc, out, _ = side.run(["endpoint", "status", "-w", "json"])
    st = json.loads(out)[0]["Status"]
    side.ids[int(st["header"]["cluster_id"])] = "<CLUSTER>"
    side.ids[int(st["header"]["member_id"])] = "<MEMBER>"
    side.vars["self"] = f"{int(st['header']['member_id']):x}"


# -- masking ---------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"(?<![\d.])\d+\.\d+\.\d+(?:-[\w.]+)?(?![\d.])")
_DURATION_RE = re.compile(r"\b\d+(?:\.\d+)?(?:ns|µs|us|ms|s|m\d+(?:\.\d+)?s)\b")
_SIZE_RE = re.compile(r"\b\d+(?:\.\d+)? (?:B|kB|MB|GB)\b")
_JSON_FIELDS = re.compile(r'("(?:raft_term|raftTerm|raftIndex|raftAppliedIndex|dbSize|dbSizeInUse|hash|'
                          r'hash_revision|compact_revision|version|leader|ID|id|cluster_id|member_id|'
                          r'TTL|ttl|grantedTTL|expired|created|Timestamp)"\s*:\s*)"?[\w.\-]+"?')
_FIELDS_FIELDS = re.compile(r'("(?:RaftTerm|RaftIndex|RaftAppliedIndex|DBSize|DBSizeInUse|Hash|HashRevision|'
                            r'CompactRevision|Version|Leader|ID|ClusterID|MemberID|TTL|GrantedTTL|'
                            r'Lease)"\s*:\s*)\S+')


def mask(side: Side, text: str) -> str:
    for literal, ph in sorted(side.subs.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(literal, ph)
    for ident, ph in side.ids.items():
        text = re.sub(rf"\b({ident:x}|{ident:016x}|{ident})\b", ph, text)
    text = _JSON_FIELDS.sub(r"\1<X>", text)
    text = _FIELDS_FIELDS.sub(r"\1<X>", text)
    text = _VERSION_RE.sub("<VER>", text)
    text = _DURATION_RE.sub("<DUR>", text)
    text = _SIZE_RE.sub("<SIZE>", text)
    text = re.sub(r" {2,}", " ", text)  # tables' column widths
    # what differs by nature: a lock's or election's key names its session's lease; raft
    # term and indexes (etcd's log holds its own configuration entries); KV hashes (other
    # algorithms); a snapshot's hash and its "total keys" (bbolt counts its meta keys)
    text = re.sub(r"\b(mylock|myelection)/[0-9a-f]+", r"\1/<LEASE>", text)
    text = re.sub(r"(\b(?:true|false)(?:,| \|) (?:true|false)(?:,| \|) )\d+((?:,| \|) )\d+((?:,| \|) )\d+",
                  r"\1<T>\2<I>\3<I>", text)
    text = re.sub(r"(<EP>(?:,| \|) )\d+", r"\1<HASH>", text)
    text = re.sub(r"^(\|? ?)[0-9a-f]+((?:,| \|) \d+(?:,| \|) )\d+((?:,| \|) <SIZE>)", r"\1<HASH>\2<KEYS>\3", text,
                  flags=re.M)
    text = re.sub(r'("(?:totalKey|Keys)"\s*:\s*)\d+', r"\1<KEYS>", text)
    text = re.sub(r'("(?:totalSize|Size)"\s*:\s*)\d+', r"\1<SIZE>", text)
    text = re.sub(r"\betcdctl\b|\bqkvctl\b", "<CTL>", text)
    text = re.sub(r"\b(?:etcd|quorumkv|qkv)\b", "<SRV>", text)
    # progress bars (check perf: \r-redrawn, on etcdctl's stdout), tables' rules
    # (text-mode pipes turn its \r into line ends: the blank line before a bar goes too)
    raw = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    bar = [("%" in line and "/" in line) for line in raw]
    text = "\n".join(line for i, line in enumerate(raw)
                     if not bar[i] and not (not line.strip() and i + 1 < len(raw) and bar[i + 1]))
    # a check's measurements (its PASS/FAIL verdicts are kept)
    text = re.sub(r"(writes/s|took|took too long:|Stddev is|Stddev too high:|used :) [\d.]+", r"\1 <N>", text)
    text = re.sub(r"\d+ (writes/s)", r"<N> \1", text)
    return re.sub(r"-{3,}", "---", text)


def compared(side: Side, rc: int, out: str, err: str) -> list[str]:
    errs = [line for line in err.splitlines() if line.startswith("Error:")]
    return [f"exit {rc if rc >= 0 else 'interrupted' if rc == -2 else 'timeout'}",
            *mask(side, out).splitlines(), *(mask(side, e) for e in errs)]


_VERDICTS = [(re.compile(r"^(PASS: Throughput is|FAIL: Throughput too low:) "), "<VERDICT> throughput: "),
             (re.compile(r"^(PASS: Slowest request took|Slowest request took too long:) "), "<VERDICT> slowest: "),
             (re.compile(r"^(PASS: Stddev is|Stddev too high:) "), "<VERDICT> stddev: "),
             (re.compile(r"^(PASS|FAIL)$"), "<VERDICT>"), (re.compile(r"^exit [01]$"), "exit <0 or 1>")]


def verdicts_masked(lines: list[str]) -> list[str]:
    """check perf's PASS/FAIL per measure and its exit code: they measure the server."""
    out = []
    for line in lines:
        for rx, repl in _VERDICTS:
            line = rx.sub(repl, line)
        out.append(line)
    return out


# -- the steps -------------------------------------------------------------------------------
@dataclass
class Step:
    args: list[str]                       # template: {fmt} {self} {lease} {member} {peer} {tmp}
    stdin: Optional[str] = None
    formats: bool = False                 # run once per -w format ({fmt} names it)
    stop_after: Optional[float] = None
    learn: Optional[Callable[[Side, str], None]] = None  # learn ids from stdout
    compare: bool = True                  # setup steps run on both sides but are not compared
    measured: bool = False                # a check's verdicts (and exit code) measure the server: masked


@dataclass
class Entry:
    name: str
    steps: list[Step]
    na: str = ""  # why the output cannot be identical (the entry is still run for `present`)
    slow: bool = False


def learn_lease(side: Side, out: str) -> None:
    m = re.search(r"lease\s+([0-9a-f]+)\s+granted", out)
    if m:
        side.vars["lease"] = m.group(1)
        side.ids[int(m.group(1), 16)] = "<LEASE>"


def learn_member(side: Side, out: str) -> None:
    m = re.search(r"Member\s+([0-9a-f]+)\s+added", out)  # etcdctl's %16x pads with spaces
    if m:
        side.vars["member"] = m.group(1)
        side.ids[int(m.group(1), 16)] = "<NEWMEMBER>"


TXN = 'value("t/a") = "1"\n\nput t/a 2\nget t/a\n\nput t/b 3\n\n'

ENTRIES: list[Entry] = [
    Entry("put", [Step(["put", "k/{fmt}", "v"], formats=True), Step(["put", "k/simple", "w", "--prev-kv"], formats=True),
                  Step(["put", "k/x", "--ignore-value"])]),
    Entry("get", [Step(["get", "k/", "--prefix"], formats=True), Step(["get", "k/simple", "--print-value-only"]),
                  Step(["get", "k/", "--prefix", "--keys-only", "--limit", "2", "--order", "DESCEND"]),
                  Step(["get", "k/", "--prefix", "--count-only"], formats=True),
                  Step(["get", "k/json", "--rev", "2"], formats=True), Step(["get", "nothing"], formats=True)]),
    Entry("del", [Step(["put", "d/{fmt}", "v"], formats=True, compare=False),
                  Step(["del", "d/{fmt}", "--prev-kv"], formats=True), Step(["del", "d/", "--prefix"])]),
    Entry("txn", [Step(["put", "t/a", "1"], compare=False), Step(["txn"], stdin=TXN, formats=True)]),
    Entry("compaction", [Step(["compaction", "3"]), Step(["compaction", "2"]), Step(["get", "k/json", "--rev", "2"])]),
    Entry("watch", [Step(["watch", "k/", "--prefix", "--rev", "3"], formats=True, stop_after=8.0)]),
    Entry("lease grant", [Step(["lease", "grant", "600"], learn=learn_lease),
                          Step(["lease", "grant", "600"], formats=True, learn=learn_lease)]),
    Entry("lease list", [Step(["lease", "list"], formats=True)]),
    Entry("lease timetolive", [Step(["put", "l/k", "v", "--lease", "{lease}"], compare=False),
                               Step(["lease", "timetolive", "{lease}", "--keys"], formats=True)]),
    Entry("lease keep-alive", [Step(["lease", "keep-alive", "--once", "{lease}"], formats=True)]),
    Entry("lease revoke", [Step(["lease", "revoke", "{lease}"], formats=True), Step(["lease", "revoke", "1234"])]),
    Entry("lock", [Step(["lock", "mylock"], stop_after=8.0), Step(["lock", "mylock", "echo", "held"]),
                   Step(["lock", "mylock", "false"])]),
    Entry("elect", [Step(["elect", "myelection", "p1"], stop_after=8.0), Step(["elect", "myelection", "-l"],
                                                                                   stop_after=8.0)]),
    Entry("member list", [Step(["member", "list"], formats=True)]),
    Entry("member add", [Step(["member", "add", "m2", "--peer-urls", "{peer}", "--learner"], learn=learn_member),
                         Step(["member", "add"])]),
    Entry("member update", [Step(["member", "update", "{member}", "--peer-urls", "{peer2}"], formats=True),
                            Step(["member", "update", "{member}"])]),
    Entry("member promote", [Step(["member", "promote", "{member}"])]),
    Entry("member remove", [Step(["member", "remove", "{member}"], formats=True), Step(["member", "remove", "99"])]),
    Entry("endpoint status", [Step(["endpoint", "status"], formats=True)]),
    Entry("endpoint health", [Step(["endpoint", "health"], formats=True)]),
    Entry("endpoint hashkv", [Step(["endpoint", "hashkv"], formats=True)]),
    Entry("move-leader", [Step(["move-leader", "{self}"]), Step(["move-leader"])]),
    Entry("alarm list", [Step(["alarm", "list"], formats=True)]),
    Entry("alarm disarm", [Step(["alarm", "disarm"], formats=True)]),
    Entry("defrag", [Step(["defrag"])]),
    Entry("snapshot save", [Step(["snapshot", "save", "{tmp}/snap.db"]), Step(["snapshot", "save"])]),
    Entry("snapshot status", [Step(["snapshot", "status", "{tmp}/snap.db"], formats=True)]),
    Entry("snapshot restore", [Step(["snapshot", "restore", "{tmp}/snap.db", "--data-dir", "{tmp}/restored",
                                     "--name", "r1", "--initial-cluster", "r1={peer}",
                                     "--initial-advertise-peer-urls", "{peer}"]),
                               Step(["snapshot", "restore", "{tmp}/snap.db", "--data-dir", "{tmp}/restored"])]),
    Entry("user add", [Step(["user", "add", "root:rootpw"]), Step(["user", "add", "u1:pw", "--interactive=false"]),
                       Step(["user", "add", "u1:pw"])]),
    Entry("user list", [Step(["user", "list"], formats=True)]),
    Entry("user passwd", [Step(["user", "passwd", "u1", "--interactive=false"], stdin="newpw\n")]),
    Entry("role add", [Step(["role", "add", "r1"], formats=True, compare=False), Step(["role", "add", "reader"])]),
    Entry("role list", [Step(["role", "list"], formats=True)]),
    Entry("role grant-permission", [Step(["role", "grant-permission", "reader", "read", "k/", "--prefix"]),
                                    Step(["role", "grant-permission", "reader", "readwrite", "a", "b"])]),
    Entry("role get", [Step(["role", "get", "reader"], formats=True)]),
    Entry("role revoke-permission", [Step(["role", "revoke-permission", "reader", "a", "b"])]),
    Entry("user grant-role", [Step(["user", "grant-role", "u1", "reader"])]),
    Entry("user get", [Step(["user", "get", "u1"], formats=True), Step(["user", "get", "u1", "--detail"])]),
    Entry("user revoke-role", [Step(["user", "revoke-role", "u1", "reader"])]),
    Entry("role delete", [Step(["role", "delete", "reader"])]),
    Entry("user delete", [Step(["user", "delete", "u1"])]),
    Entry("auth enable", [Step(["auth", "enable"])]),
    Entry("auth disable", [Step(["get", "k/simple"]), Step(["--user", "root:rootpw", "get", "k/simple"]),
                           Step(["--user", "root:rootpw", "auth", "disable"])]),
    Entry("make-mirror", [Step(["put", "src/a", "1"], compare=False),
                          Step(["make-mirror", "--prefix", "src/", "--dest-prefix", "dst/", "{ep}"], stop_after=4.0),
                          Step(["get", "dst/", "--prefix"])]),
    Entry("check perf", [Step(["check", "perf", "--load", "nope"]), Step(["check", "perf"], measured=True)], slow=True),
    Entry("check datascale", [Step(["check", "datascale", "--load", "nope"])]),
    Entry("version", [Step(["version"])]),
    Entry("help", [Step(["help"])], na="the help text of each program"),
    Entry("migrate", [Step(["migrate"])], na="v2 store only (quorumkv has no v2 store)"),
    Entry("completion bash", [Step(["completion", "bash"])], na="a script naming its program"),
    Entry("completion fish", [Step(["completion", "fish"])], na="a script naming its program"),
    Entry("completion powershell", [Step(["completion", "powershell"])], na="a script naming its program"),
    Entry("completion zsh", [Step(["completion", "zsh"])], na="a script naming its program"),
]


def expand(side: Side, args: list[str], fmt: str) -> list[str]:
    values = dict(side.vars, fmt=fmt, tmp=str(side.tmp / side.name), ep=side.endpoint,
                  peer=f"{side.peer_scheme}://127.0.0.1:{side.vars['peer_port']}",
                  peer2=f"{side.peer_scheme}://127.0.0.1:{side.vars['peer_port2']}")
    return [a.format(**values) if "{" in a else a for a in args]


@dataclass
class Row:
    name: str
    present: bool
    identical: str


def present(side: Side, name: str) -> bool:
    rc, out, err = side.run([*name.split(), "--help"], timeout=30)
    return rc == 0 and "No such command" not in err and "unknown command" not in (out + err)


def revision(side: Side) -> tuple[Optional[int], list[str]]:
    """The side's revision, and the auth flags that read it."""
    for auth in ([], ["--user", "root:rootpw"]):
        rc, out, _ = side.run([*auth, "get", "~pad", "-w", "json"])
        if rc == 0:
            return int(json.loads(out)["header"]["revision"]), auth
    return None, []


def align(etcd: Side, qkv: Side) -> None:
    """Bring both stores to the same revision (puts of `~pad` on the one behind), so that a
    step one side refused but the other did (a write made, then its output refused) does
    not make every later revision differ."""
    (r1, a1), (r2, a2) = revision(etcd), revision(qkv)
    if r1 is None or r2 is None or r1 == r2:
        return
    behind, auth = (etcd, a1) if r1 < r2 else (qkv, a2)
    for _ in range(min(50, abs(r1 - r2))):
        behind.run([*auth, "put", "~pad", "x"])


def run_entries(etcd: Side, qkv: Side, skip_slow: bool, verbose: bool) -> list[Row]:
    rows = []
    for side in (etcd, qkv):
        side.run(["put", "~pad", "x"])
    for entry in ENTRIES:
        align(etcd, qkv)
        diff = ""
        skipped = entry.slow and skip_slow
        for step in entry.steps:
            if skipped:
                break
            formats = FORMATS if step.formats else ("simple",)
            timeout = 130.0 if step.stop_after is None and entry.slow else 60.0
            for fmt in formats:
                outs = []
                for side in (etcd, qkv):
                    try:
                        args = expand(side, step.args, fmt)
                    except KeyError as exc:  # an earlier step did not give what this one names
                        outs.append([f"(not run: no {exc.args[0]} learned from an earlier step)"])
                        continue
                    if step.formats:
                        args = [*args, "-w", fmt]
                    rc, out, err = side.run(args, stdin=step.stdin, timeout=timeout, stop_after=step.stop_after)
                    if step.learn is not None:
                        step.learn(side, out)
                    outs.append(verdicts_masked(compared(side, rc, out, err)) if step.measured
                                else compared(side, rc, out, err))
                    if verbose:
                        sys.stderr.write(f"[{side.name}] {' '.join(args)} -> {rc}\n{out}{err}\n")
                if step.compare and not diff and outs[0] != outs[1]:
                    a, b = outs
                    i = next((i for i in range(max(len(a), len(b)))
                              if i >= len(a) or i >= len(b) or a[i] != b[i]), 0)
                    la = a[i] if i < len(a) else "(nothing)"
                    lb = b[i] if i < len(b) else "(nothing)"
                    j = next((j for j in range(min(len(la), len(lb))) if la[j] != lb[j]), min(len(la), len(lb)))
                    if j > 30:  # show where the lines part, not their common start
                        la, lb = "…" + la[j - 20:], "…" + lb[j - 20:]
                    shown = " ".join(step.args) + (f" -w {fmt}" if step.formats else "")
                    diff = f"no: `{shown}`: etcdctl `{la[:70]}` / qkvctl `{lb[:70]}`"
        has = present(qkv, entry.name)
        if entry.na:
            verdict = f"n/a ({entry.na})"
        elif skipped:
            verdict = "not compared (--skip-slow)"
        elif not diff and any(step.measured for step in entry.steps):
            verdict = "yes (PASS/FAIL verdicts and exit code masked: they measure the server)"
        elif not has:
            verdict = "no (missing)"
        else:
            verdict = diff or "yes"
        rows.append(Row(entry.name, has, verdict))
        sys.stderr.write(f"{entry.name}: {'present' if has else 'missing'}, {verdict}\n")
    return rows


def print_table(rows: list[Row]) -> None:
    print("| etcdctl command | in qkvctl | identical output (every format) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {'yes' if r.present else 'no'} | {r.identical.replace('|', '/')} |")
    n_present = sum(r.present for r in rows)
    n_same = sum(r.identical.startswith("yes") for r in rows)
    print(f"\nOf etcdctl's {len(rows)} entries: {n_present} present in qkvctl, {n_same} with identical "
          f"output in every format.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-slow", action="store_true", help="do not run `check perf` (60 s per side)")
    ap.add_argument("--verbose", action="store_true", help="print every command and its output on stderr")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    for exe in (ETCD, ETCDCTL):
        if not os.access(exe, os.X_OK):
            sys.stderr.write(f"{exe} is missing: this script compares with etcd 3.4\n")
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="qkv-parity-"))
    sides: list[Side] = []
    try:
        (tmp / "etcd").mkdir()
        (tmp / "qkv").mkdir()
        sides = [start_etcd(tmp), start_qkv(tmp)]
        peer_port, peer_port2 = free_port(), free_port()
        for side in sides:
            wait_serving(side)
            learn_ids(side)
            side.vars.update(peer_port=str(peer_port), peer_port2=str(peer_port2))
            for p in (peer_port, peer_port2):
                side.subs[f"{side.peer_scheme}://127.0.0.1:{p}"] = "<PEERURL>"
            side.subs[str(side.tmp / side.name)] = "<TMP>"
        rows = run_entries(sides[0], sides[1], opts.skip_slow, opts.verbose)
        print_table(rows)
        return 0
    finally:
        for side in sides:
            side.stop()
        if opts.keep:
            sys.stderr.write(f"kept {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
