"""etcdctl over gRPC: the same etcdctl 3.4 commands against a 3-member etcd 3.4 cluster and
against a 3-member quorumkv cluster's gRPC endpoints (issue 18), outputs compared.

    PYTHONPATH=. .venv/bin/python tests/parity/etcdctl_grpc.py [--verbose] [--keep]

Both clusters are fresh (free ports, a temporary directory, stopped when the script ends,
also on failure or Ctrl-C); every command runs with ETCDCTL_API=3 and --endpoints listing all
three members, on both sides, in the same order, from the same state. Each step runs in each
of its -w formats (simple, json, fields, protobuf, and table where etcdctl has a table for
it); its exit code, stdout and the "Error:" lines of stderr are compared after masking what
differs by nature: cluster, member and lease ids, raft terms and indexes, hashes, timings,
database sizes, server versions, ports. A -w protobuf output is decoded (etcd's messages,
protocol/etcdpb) and masked field by field. Outputs whose order is not the server's
(endpoint health: completion order; member list: ordered by member id) are sorted.

A difference that only the known masks (KNOWN) remove, or a step marked known, is counted as
a known difference, with its reason. Any other difference is printed (both sides' lines)
and makes the exit status 1. `run_parity()` is what tests/integration/test_grpc_etcdctl.py
calls.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.nodeproc import Cluster, free_port, wait_for  # noqa: E402

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]
F4 = ("simple", "json", "fields", "protobuf")
F5 = ("simple", "json", "fields", "protobuf", "table")

# Differences we know of and leave, each with its reason: masks applied only after the plain
# comparison found a difference (a step that they make equal is a known difference).
KNOWN_MASKS: list[tuple[str, re.Pattern[str], str]] = [
    ("peer URLs are tcp:// (quorumkv's peer transport is ZeroMQ, not HTTP)",
     re.compile(r"\b(?:http|tcp)://(<PEER\d>)"), r"<SCHEME>://\1"),
]
KNOWN_STEPS = {
    "datascale": "check datascale reads the server's metrics on --listen-metrics-urls (etcd serves them on its "
                 "client URL; quorumkv's gRPC URL has no /metrics)",
    "compact0": "compact 0 before any compaction: etcd's compact revision starts at -1, so etcd accepts it; "
                "quorumkv's starts at 0 and answers compacted",
    "update_learner": "etcd 3.4's member update drops a learner's isLearner (its RaftAttributes are replaced; "
                      "fixed in etcd 3.5); quorumkv's member stays a learner",
    "add_order": "a member add with a peer URL in use while a member is unstarted: etcd 3.4 first checks that "
                 "it is connected to every member (\"unhealthy cluster\"), quorumkv first checks the URLs "
                 "(\"Peer URLs already exists\", etcd's message when it gets that far)",
    "snapshot": "a snapshot file is quorumkv's format (SPEC section 6), not a bbolt database",
}


# -- the two sides ---------------------------------------------------------------------------
@dataclass
class Side:
    name: str                                  # "etcd" | "qkv"
    endpoints: list[str]                       # host:port of each member, n1..n3
    tmp: Path
    stop: Callable[[], None]
    ids: dict[int, str] = field(default_factory=dict)   # id -> placeholder
    subs: dict[str, str] = field(default_factory=dict)  # literal -> placeholder
    vars: dict[str, str] = field(default_factory=dict)  # template variables
    runs: int = 0

    def run(self, args: list[str], stdin: Optional[str] = None, timeout: float = 30.0,
            stop_after: Optional[float] = None, endpoints: Optional[list[str]] = None) -> tuple[int, bytes, str]:
        cmd = [ETCDCTL, "--endpoints", ",".join(endpoints or self.endpoints), "--command-timeout", "10s", *args]
        env = dict(os.environ, ETCDCTL_API="3")
        self.runs += 1
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, start_new_session=True)
        if stop_after is not None:
            return run_until_quiet(p, stdin, stop_after)
        try:
            out, err = p.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return -1, out, err.decode(errors="replace") + "\n(timed out)"
        return p.returncode, out, err.decode(errors="replace")


def run_until_quiet(p: subprocess.Popen, stdin: Optional[str], limit: float) -> tuple[int, bytes, str]:
    """A command that runs until interrupted (watch, lock, elect): let it print for up to
    `limit` s (and 0.5 s after its last output), then SIGINT it; exit code -2 ("interrupted")."""
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}
    last = [time.monotonic()]

    def pump(stream: Any, name: str) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            chunks[name].append(chunk)
            last[0] = time.monotonic()

    readers = [threading.Thread(target=pump, args=(p.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(p.stderr, "err"), daemon=True)]
    for t in readers:
        t.start()
    if p.stdin is not None:
        if stdin:
            p.stdin.write(stdin.encode())
        p.stdin.close()
    deadline = time.monotonic() + limit
    while p.poll() is None and time.monotonic() < deadline:
        if chunks["out"] and time.monotonic() - last[0] > 0.5:
            break
        time.sleep(0.05)
    rc = p.poll()
    if rc is None:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        rc = -2
    for t in readers:
        t.join(5)
    return rc, b"".join(chunks["out"]), b"".join(chunks["err"]).decode(errors="replace")


def start_etcd(tmp: Path) -> Side:
    """A fresh 3-member etcd 3.4 cluster (members n1..n3)."""
    names = ["n1", "n2", "n3"]
    cports = {n: free_port() for n in names}
    pports = {n: free_port() for n in names}
    initial = ",".join(f"{n}=http://127.0.0.1:{pports[n]}" for n in names)
    procs: list[subprocess.Popen] = []
    logs = []

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()

    try:
        for n in names:
            log = open(tmp / f"etcd-{n}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [ETCD, "--name", n, "--data-dir", str(tmp / f"etcd-{n}"),
                 "--listen-client-urls", f"http://127.0.0.1:{cports[n]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{cports[n]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{pports[n]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{pports[n]}",
                 "--initial-cluster", initial, "--initial-cluster-token", "parity",
                 "--initial-cluster-state", "new", *FAST],
                stdout=log, stderr=subprocess.STDOUT))
    except BaseException:
        stop()
        raise
    side = Side("etcd", [f"127.0.0.1:{cports[n]}" for n in names], tmp, stop)
    for i, n in enumerate(names, 1):
        side.subs[f"127.0.0.1:{cports[n]}"] = f"<EP{i}>"
        side.subs[f"127.0.0.1:{pports[n]}"] = f"<PEER{i}>"
    return side


def start_qkv(tmp: Path) -> Side:
    """A fresh 3-member quorumkv cluster serving gRPC (tests/nodeproc.py)."""
    (tmp / "qkv").mkdir()
    c = Cluster(tmp / "qkv", 3, args=FAST, grpc=True, token="parity")
    side = Side("qkv", [n.grpc_endpoint for n in c.nodes], tmp, c.discard)
    try:
        c.start()
        c.leader()
    except BaseException:
        c.discard()
        raise
    for i, n in enumerate(c.nodes, 1):
        side.subs[n.grpc_endpoint] = f"<EP{i}>"
        side.subs[n.peer_url.split("://", 1)[1]] = f"<PEER{i}>"
    side.vars["cluster"] = "qkv"
    return side


def wait_serving(side: Side) -> None:
    def listed_in_full(endpoint: str) -> bool:
        rc, out, _ = side.run(["member", "list", "-w", "json"], timeout=10, endpoints=[endpoint])
        if rc != 0:
            return False
        members = json.loads(out)["members"]
        return len(members) == 3 and all(m.get("clientURLs") and m.get("name") for m in members)

    def ready() -> bool:
        # Each member answers member list from its own applied state (as etcd 3.4 does), so a
        # member that has not yet applied another's name lists it without one: ask every member.
        return all(listed_in_full(ep) for ep in side.endpoints) and \
            side.run(["endpoint", "health"], timeout=15)[0] == 0
    wait_for(ready, 60, f"{side.name} to serve on every member")


def learn_ids(side: Side) -> None:
    rc, out, _ = side.run(["member", "list", "-w", "json"])
    listed = json.loads(out)
    side.ids[int(listed["header"]["cluster_id"])] = "<CLUSTER>"
    for m in listed["members"]:
        side.ids[int(m["ID"])] = "<MEMBER>"
        side.vars[f"id_{m['name']}"] = f"{int(m['ID']):x}"


def learn_leases(side: Side, out: bytes, keep: bool = True) -> None:
    """Mask the granted lease's id; `keep`: it is the `lease` later steps name."""
    text = out.decode(errors="replace")
    if not keep:
        side.vars["lease_kept"] = side.vars.get("lease", "")
    for m in re.finditer(r"lease ([0-9a-f]+) granted", text):
        side.vars["lease"] = m.group(1)
        side.ids[int(m.group(1), 16)] = "<LEASE>"
    for m in re.finditer(r'"(?:ID|id)":(\d+)', text):
        side.vars["lease"] = f"{int(m.group(1)):x}"
        side.ids[int(m.group(1))] = "<LEASE>"
    m = re.search(r'"ID" : (\d+)', text)
    if m:
        side.vars["lease"] = f"{int(m.group(1)):x}"
        side.ids[int(m.group(1))] = "<LEASE>"
    if not keep:
        side.vars["lease"] = side.vars.pop("lease_kept")


def learn_member(side: Side, out: bytes) -> None:
    m = re.search(r"Member\s+([0-9a-f]+)\s+added", out.decode(errors="replace"))  # %16x pads with spaces
    if m:
        side.vars["newmember"] = m.group(1)
        side.ids[int(m.group(1), 16)] = "<MEMBER>"


def learn_lease_ids(side: Side, out: bytes) -> None:
    """Every listed lease id is masked (`lease` names the last one granted)."""
    for m in re.finditer(r'"id":(\d+)', out.decode(errors="replace")):
        side.ids[int(m.group(1))] = "<LEASE>"


def learn_leader(side: Side, out: bytes) -> None:
    """A member that does not lead (move-leader's target) and the leader's endpoint."""
    statuses = json.loads(out)
    leader = int(statuses[0]["Status"]["leader"])
    for st in statuses:
        if int(st["Status"]["header"]["member_id"]) != leader:
            side.vars["follower"] = f"{int(st['Status']['header']['member_id']):x}"
        else:
            side.vars["leader_ep"] = st["Endpoint"]


# -- masking ---------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"(?<![\d.])\d+\.\d+\.\d+(?:-[\w.]+)?(?![\d.])")
_DURATION_RE = re.compile(r"\b\d+(?:\.\d+)?(?:ns|µs|us|ms|s|m\d+(?:\.\d+)?s)\b")
_SIZE_RE = re.compile(r"\b\d+(?:\.\d+)? (?:B|kB|MB|GB)\b")
# fields that differ by nature (json, and protobuf decoded to json)
_JSON_MASKED = ("raft_term", "raftTerm", "raftIndex", "raftAppliedIndex", "dbSize", "dbSizeInUse", "hash",
                "leader", "took")
_JSON_RE = re.compile(r'("(?:%s)"\s*:\s*)(?:"[^"]*"|[\w.\-]+)' % "|".join(_JSON_MASKED))
_FIELDS_MASKED = ("RaftTerm", "RaftIndex", "RaftAppliedIndex", "DBSize", "DBSizeInUse", "Hash", "Leader", "Took")
_FIELDS_RE = re.compile(r'("(?:%s)"\s*:\s*)\S+' % "|".join(_FIELDS_MASKED))
_SERVER_VERSION_RE = re.compile(r'("(?:version|Version)"\s*:\s*)"\d+\.\d+[^"]*"')  # a server's, not a key's
_TTL_RE = re.compile(r'("(?:ttl|TTL)"\s*:\s*)"?-?\d+"?')  # a lease's remaining TTL (not granted-ttl)


def mask_text(side: Side, text: str) -> str:
    for literal, ph in sorted(side.subs.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(literal, ph)
    for ident, ph in side.ids.items():
        text = re.sub(rf"(?<![\w.]){'|'.join(sorted({f'{ident:x}', f'{ident:016x}', str(ident)}, key=len, reverse=True))}"
                      r"(?![\w.])", ph, text)
    # etcdctl prints "Member %16x added to cluster %16x": an id below 2^60 is padded with spaces
    text = re.sub(r"\b(Member|cluster) +(<MEMBER>|<CLUSTER>)", r"\1 \2", text)
    text = _JSON_RE.sub(r"\1<X>", text)
    text = _FIELDS_RE.sub(r"\1<X>", text)
    text = _SERVER_VERSION_RE.sub(r"\1<VER>", text)
    text = _VERSION_RE.sub("<VER>", text)
    text = _DURATION_RE.sub("<DUR>", text)
    text = _SIZE_RE.sub("<SIZE>", text)
    text = re.sub(r"remaining\(-?\d+s\)", "remaining(<N>s)", text)
    text = re.sub(r"\b(mylock|myelection)/[0-9a-f]+\b", r"\1/<LEASE>", text)  # a session's lease
    return text


def mask_table_or_simple(side: Side, cmd: str, text: str) -> str:
    """endpoint status (simple/table): raft term and indexes, db size, hashes (hashkv)."""
    text = mask_text(side, text)
    if "timetolive" in cmd:
        text = _TTL_RE.sub(r"\1<TTL>", text)
    if cmd.startswith("endpoint status"):
        # <EP>, <MEMBER>, <VER>, <SIZE>, is leader, is learner, term, index, applied, errors
        text = re.sub(r"((?:true|false)(?:,| +\|) +(?:true|false)(?:,| +\|) +)\d+((?:,| +\|) +)\d+((?:,| +\|) +)\d+",
                      r"\1<T>\2<I>\3<I>", text)
        # which member leads is the election's choice
        text = re.sub(r"(<SIZE>(?:,| +\|) +)(?:true|false)", r"\1<LEADS>", text)
        text = re.sub(r'("IsLeader" : )\w+', r"\1<LEADS>", text)
    if cmd.startswith("endpoint hashkv"):
        text = re.sub(r"(<EP\d>(?:,| \|) ?)\d+", r"\1<HASH>", text)
    return text


def decode_pb(pbtype: str, data: bytes) -> Optional[str]:
    """A -w protobuf output as JSON (etcd's message `pbtype`), or None when it is not one."""
    from google.protobuf import json_format

    from protocol.etcdpb import rpc_pb2

    if not data:
        return ""
    msg = getattr(rpc_pb2, pbtype)()
    try:
        msg.ParseFromString(data)
    except Exception:
        return None
    return json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True), sort_keys=True)


def normalize(step: "Step", fmt: str, text: str) -> str:
    """Put in a fixed order what etcdctl prints in an order that is not the server's."""
    if not step.sort:
        return text
    if fmt == "json" or fmt == "protobuf":
        try:
            data = json.loads(re.sub(r'([:\[,]\s*)(<[A-Z0-9_]+>)', r'\1"\2"', text))
        except ValueError:
            return text
        if isinstance(data, list):
            data = sorted(data, key=lambda d: json.dumps(d, sort_keys=True))
        elif isinstance(data, dict):
            for k in ("members", "leases", "keys"):
                if isinstance(data.get(k), list):
                    data[k] = sorted(data[k], key=lambda d: json.dumps(d, sort_keys=True))
        return json.dumps(data, sort_keys=True)
    if fmt == "fields":  # records: from each "ID" (a member) or "Endpoint" line on
        lines = [ln for ln in text.splitlines() if ln.strip()]  # blank lines part records
        keys = iter(sorted(ln for ln in lines if ln.startswith('"Key" : ')))  # a lease's keys
        text = "\n".join(next(keys) if ln.startswith('"Key" : ') else ln for ln in lines)
        records: list[list[str]] = [[]]
        for line in text.splitlines():
            if re.match(r'"(?:ID|Endpoint)" : ', line):
                records.append([])
            records[-1].append(line)
        return "\n".join(records[0] + [ln for r in sorted(records[1:]) for ln in r])
    if fmt == "table":
        lines = text.splitlines()
        body = [ln for ln in lines if ln.startswith("|")][1:]
        return "\n".join([*lines[:3], *sorted(body)])
    text = re.sub(r'(ETCD_INITIAL_CLUSTER=")([^"]*)"', lambda m: m.group(1) + ",".join(sorted(m.group(2).split(",")))
                  + '"', text)  # members in id order
    text = re.sub(r"keys\(\[([^]]*)\]\)", lambda m: "keys([%s])" % " ".join(sorted(m.group(1).split())), text)
    return "\n".join(sorted(text.splitlines()))


# -- the steps -------------------------------------------------------------------------------
@dataclass
class Step:
    args: list[str]                          # template: {fmt} {lease} {id_n1} {follower} ...
    formats: tuple[str, ...] = ("simple",)
    stdin: Optional[str] = None
    stop_after: Optional[float] = None
    learn: Optional[Callable[[Side, bytes], None]] = None
    compare: bool = True                     # setup steps run on both sides, not compared
    pbtype: str = ""                         # the message -w protobuf prints
    sort: bool = False                       # output in an order that is not the server's
    known: str = ""                          # a KNOWN_STEPS key: a difference here is known


def S(*args: str, **kw: Any) -> Step:
    return Step(list(args), **kw)


def setup(*args: str, **kw: Any) -> Step:
    return Step(list(args), compare=False, **kw)


TXN_VALUE = 'value("t/a") = "1"\n\nput t/a 2\nget t/a\n\nput t/b 3\n\n'
TXN_FAIL = 'value("t/a") = "nope"\nversion("t/a") > "0"\n\nput t/a x\n\nget t/ --prefix\ndel t/b --prev-kv\n\n'
TXN_REVS = ('version("t/a") = "2"\ncreate("t/a") > "0"\nmod("t/a") < "1000"\ncreate("t/none") = "0"\n\n'
            'get t/a --print-value-only\nput t/c 4 --prev-kv\n\nput t/d 5\n\n')
TXN_MISSING = 'mod("t/none") != "0"\nvalue("t/none") < "a"\n\nput t/e 1\n\nget t/none\n\n'
TXN_EMPTY = '\nput t/f 1\ndel t/nothing\n\n\n'
TXN_LEASE_NF = '\nput t/g 1 --lease=1234\n\n\n'
TXN_DUP = '\nput t/h 1\nput t/h 2\n\n\n'
TXN_LEASE_CMP = 'lease("t/a") = "0"\n\nput t/i 1\n\n\n'
TXN_BAD = 'nonsense\n\n\n\n'
TXN_RANGE = 'version("t/a") > "0"\n\nget t/a t/z --limit=2 --order=DESCEND --sort-by=VALUE\nget t/ --prefix ' \
            '--count-only\nget t/ --from-key --keys-only\n\n\n'

STEPS: list[Step] = [
    # put
    S("put", "k/{fmt}", "v-{fmt}", formats=F4, pbtype="PutResponse"),
    S("put", "k/simple", "w", "--prev-kv", formats=F4, pbtype="PutResponse"),
    S("put", "k/none", "--ignore-value"),
    S("put", "k/simple", "--ignore-value", formats=("simple", "json")),
    S("put", "k/l", "v", "--lease", "4d2"),
    S("put", "k/y", "yy"), S("put", "k/z", "a-z"),
    S("put", "k/simple", "--ignore-lease"),
    # get
    S("get", "k/simple", formats=F4, pbtype="RangeResponse"),
    S("get", "k/nothing", formats=F4, pbtype="RangeResponse"),
    S("get", "k/", "--prefix", formats=F4, pbtype="RangeResponse"),
    S("get", "k/fields", "k/y", formats=F4, pbtype="RangeResponse"),
    S("get", "k/j", "--from-key", formats=("simple", "json"), pbtype="RangeResponse"),
    S("get", "", "--from-key", "--keys-only"),
    S("get", "k/", "--prefix", "--limit", "2", formats=F4, pbtype="RangeResponse"),
    S("get", "k/", "--prefix", "--rev", "3", formats=F4, pbtype="RangeResponse"),
    S("get", "k/", "--prefix", "--rev", "1"),
    S("get", "k/", "--prefix", "--rev", "1000"),
    S("get", "k/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND", formats=("simple", "json")),
    S("get", "k/", "--prefix", "--sort-by", "MODIFY", "--order", "ASCEND", "--limit", "3"),
    S("get", "k/", "--prefix", "--sort-by", "CREATE", "--order", "DESCEND", formats=("simple", "json")),
    S("get", "k/", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND", "--limit", "1"),
    S("get", "k/", "--prefix", "--sort-by", "KEY", "--order", "DESCEND"),
    S("get", "k/", "--prefix", "--order", "DESCEND", "--limit", "2", formats=("json",)),
    S("get", "k/", "--prefix", "--sort-by", "NOPE"),
    S("get", "k/", "--prefix", "--keys-only", formats=F4, pbtype="RangeResponse"),
    S("get", "k/", "--prefix", "--count-only", formats=F4, pbtype="RangeResponse"),
    S("get", "k/", "--prefix", "--print-value-only"),
    S("get", "k/", "--prefix", "--consistency", "s", formats=("json",)),
    S("get", "k/", "--prefix", "--from-key"),
    S("get", "k/simple", formats=("table",)),
    # del
    setup("put", "d/{fmt}", "v", formats=F4),
    S("del", "d/{fmt}", "--prev-kv", formats=F4, pbtype="DeleteRangeResponse"),
    S("del", "d/nothing", formats=F4, pbtype="DeleteRangeResponse"),
    setup("put", "d/1", "1"), setup("put", "d/2", "2"), setup("put", "z/1", "1"), setup("put", "z/2", "2"),
    S("del", "d/", "--prefix", "--prev-kv", formats=("json",)),
    S("del", "z/1", "--from-key", formats=("simple",)),
    S("del", "k/", "--prefix", "--from-key"),
    # txn
    setup("put", "t/a", "1"),
    S("txn", stdin=TXN_VALUE, formats=("simple",)),
    setup("put", "t/a", "1"),
    S("txn", stdin=TXN_VALUE, formats=("json",)),
    setup("put", "t/a", "1"),
    S("txn", stdin=TXN_VALUE, formats=("fields",)),
    setup("put", "t/a", "1"),
    S("txn", stdin=TXN_VALUE, formats=("protobuf",), pbtype="TxnResponse"),
    S("txn", stdin=TXN_FAIL, formats=F4, pbtype="TxnResponse"),
    S("txn", stdin=TXN_REVS, formats=F4, pbtype="TxnResponse"),
    S("txn", stdin=TXN_MISSING, formats=("simple", "json")),
    S("txn", stdin=TXN_EMPTY, formats=("simple", "json")),
    S("txn", stdin=TXN_RANGE, formats=F4, pbtype="TxnResponse"),
    S("txn", stdin=TXN_LEASE_NF), S("txn", stdin=TXN_DUP), S("txn", stdin=TXN_LEASE_CMP), S("txn", stdin=TXN_BAD),
    # watch (history: bounded by a timeout)
    S("watch", "k/", "--prefix", "--rev", "2", formats=F4, stop_after=4.0, pbtype="WatchResponse"),
    S("watch", "t/a", "--rev", "1", "--prev-kv", formats=("simple", "json"), stop_after=4.0),
    S("watch", "k/simple", "k/z", "--rev", "5", stop_after=4.0),
    # leases
    S("lease", "grant", "600", learn=learn_leases),
    S("lease", "grant", "600", formats=("json",), learn=learn_leases),
    S("lease", "grant", "600", formats=("fields",), learn=learn_leases),
    S("lease", "grant", "600", formats=("protobuf",), pbtype="ResponseHeader"),
    setup("lease", "list", formats=("json",), learn=learn_lease_ids),
    S("lease", "list", formats=F4, sort=True, pbtype="ResponseHeader"),
    setup("put", "l/k", "v", "--lease", "{lease}"),
    setup("put", "l/k2", "v", "--lease", "{lease}"),
    S("lease", "timetolive", "{lease}", formats=F4, pbtype="ResponseHeader"),
    S("lease", "timetolive", "{lease}", "--keys", formats=F4, pbtype="ResponseHeader", sort=True),
    S("lease", "timetolive", "4d2", formats=("simple", "json")),
    S("lease", "keep-alive", "--once", "{lease}", formats=F4, pbtype="ResponseHeader"),
    S("lease", "keep-alive", "--once", "4d2"),
    S("get", "l/", "--prefix", formats=("json",)),
    S("lease", "revoke", "{lease}", formats=F4, pbtype="ResponseHeader"),
    S("get", "l/", "--prefix", formats=("simple",)),
    S("lease", "revoke", "4d2"),
    # after the lease lists: a TTL-0 lease (the minimum TTL) expires on its own, sooner or later on each side
    S("lease", "grant", "0", formats=("simple",), learn=lambda side, out: learn_leases(side, out, keep=False)),
    # lock and election
    S("lock", "mylock", stop_after=4.0),
    S("lock", "mylock", "echo", "held"),
    S("lock", "mylock", "false"),
    S("elect", "myelection", "p1", stop_after=4.0),
    S("elect", "-l", "myelection", stop_after=3.0),
    # cluster and maintenance
    S("member", "list", formats=F5, sort=True, pbtype="MemberListResponse"),
    S("endpoint", "status", formats=F5),
    S("endpoint", "status", formats=("json",), learn=learn_leader, compare=False),
    S("endpoint", "health", formats=F5, sort=True),
    S("endpoint", "hashkv", formats=F5),
    S("endpoint", "hashkv", "--rev", "5", formats=("simple", "json")),
    S("endpoint", "status", "--cluster", formats=("simple",), sort=True),
    S("alarm", "list", formats=F4, pbtype="AlarmResponse"),
    S("alarm", "disarm", formats=F4, pbtype="AlarmResponse"),
    S("defrag"),
    S("move-leader", "{follower}", formats=("simple",)),
    S("move-leader", "1234"),
    # membership: a learner that never starts (it counts for no quorum), updated, removed
    S("member", "add", "m4", "--peer-urls", "http://{peer4}", "--learner", learn=learn_member, sort=True),
    S("member", "list", formats=("simple", "json"), sort=True),
    S("member", "update", "{newmember}", "--peer-urls", "http://{peer5}", formats=("simple",)),
    S("member", "update", "{newmember}", "--peer-urls", "http://{peer5}", formats=("json",), known="update_learner"),
    # (after the update: etcd names a new member by its peer URLs and the second it is added)
    S("member", "add", "m5", "--peer-urls", "http://{peer5}", known="add_order"),
    S("member", "promote", "{newmember}"),
    S("member", "promote", "1234"),
    S("member", "remove", "{newmember}", formats=("simple",)),
    S("member", "remove", "{newmember}"),
    S("member", "list", formats=("simple",), sort=True),
    # make-mirror into the same cluster under another prefix (runs until interrupted)
    S("make-mirror", "--prefix", "k/", "--dest-prefix", "mirror/", "{ep1}", stop_after=3.0),
    S("get", "mirror/", "--prefix", formats=("simple",)),
    S("snapshot", "save", "{tmp}/snap.db", known="snapshot"),
    # compaction
    S("compaction", "0", known="compact0"),
    S("compaction", "12", formats=("simple",)),
    S("compaction", "12"),
    S("compaction", "10000"),
    S("compaction", "--physical", "14"),
    S("get", "k/", "--prefix", "--rev", "11", formats=("simple", "json")),
    S("watch", "k/", "--prefix", "--rev", "2", formats=("simple", "json"), stop_after=4.0),
    S("endpoint", "hashkv", "--rev", "5", formats=("simple",)),
    # auth
    S("user", "add", "root:rootpw", formats=F4, pbtype="AuthUserAddResponse"),
    S("user", "add", "root:rootpw"),
    S("role", "add", "r1", formats=("simple",)),
    S("role", "add", "r2", formats=("json",)), S("role", "add", "r3", formats=("fields",)),
    S("role", "add", "r4", formats=("protobuf",), pbtype="AuthRoleAddResponse"),
    S("role", "grant-permission", "r1", "read", "k/", "--prefix", formats=F4,
      pbtype="AuthRoleGrantPermissionResponse"),
    S("role", "grant-permission", "r1", "readwrite", "t/", "t/z"),
    S("role", "grant-permission", "r1", "write", "w/", "--from-key"),
    S("role", "grant-permission", "r1", "nope", "x"),
    S("role", "get", "r1", formats=F4, pbtype="AuthRoleGetResponse"),
    S("role", "get", "nobody"),
    S("role", "list", formats=F4, pbtype="AuthRoleListResponse"),
    S("user", "add", "u1", "--new-user-password", "pw1", "--interactive=false"),
    S("user", "add", "u2:pw2"),
    S("user", "grant-role", "u1", "r1", formats=F4, pbtype="AuthUserGrantRoleResponse"),
    S("user", "grant-role", "u1", "nobody"),
    S("user", "grant-role", "u2", "r2"),
    S("user", "get", "u1", formats=F4, pbtype="AuthUserGetResponse"),
    S("user", "get", "u1", "--detail", formats=("simple", "json")),
    S("user", "list", formats=F4, pbtype="AuthUserListResponse"),
    S("user", "passwd", "u2", "--interactive=false", stdin="newpw\n", formats=("simple",)),
    S("role", "revoke-permission", "r1", "t/", "t/z", formats=F4, pbtype="AuthRoleRevokePermissionResponse"),
    S("role", "revoke-permission", "r1", "nothing"),
    S("role", "grant-permission", "r1", "readwrite", "t/", "--prefix"),
    S("auth", "enable"),
    S("user", "add", "u3:pw3"),
    S("get", "k/simple"),
    S("--user", "u1:pw1", "get", "k/", "--prefix", formats=("simple", "json")),
    S("--user", "u1:pw1", "put", "k/simple", "x"),
    S("--user", "u1:pw1", "put", "t/u1", "x", formats=("simple", "json")),
    S("--user", "u1:pw1", "get", "", "--from-key"),
    S("--user", "u1:pw1", "txn", stdin='\nput t/u2 1\nget k/simple\n\n\n', formats=("json",)),
    S("--user", "u1:pw1", "txn", stdin='\nput k/u 1\n\n\n'),
    S("--user", "u1:pw1", "watch", "k/", "--prefix", "--rev", "2", stop_after=3.0),
    S("--user", "u1:pw1", "lease", "grant", "60", learn=learn_leases),
    S("--user", "u1:wrong", "get", "k/simple"),
    S("--user", "nobody:pw", "get", "k/simple"),
    S("--user", "u2:newpw", "get", "k/simple"),
    S("--user", "u2:newpw", "user", "list"),
    S("--user", "root:rootpw", "user", "list", formats=("json",)),
    S("--user", "root:rootpw", "role", "revoke-permission", "r1", "k/", "--prefix"),
    S("--user", "u1:pw1", "get", "k/simple"),
    S("--user", "root:rootpw", "user", "revoke-role", "u1", "r1", formats=("simple", "json")),
    S("--user", "root:rootpw", "role", "delete", "r2", formats=("simple", "json")),
    S("--user", "root:rootpw", "role", "delete", "r2"),
    S("--user", "root:rootpw", "user", "delete", "u2", formats=("simple", "json")),
    S("--user", "root:rootpw", "user", "delete", "u2"),
    S("--user", "root:rootpw", "user", "get", "u2"),
    S("--user", "root:rootpw", "user", "delete", "root"),
    S("--user", "root:rootpw", "alarm", "list"),
    S("--user", "root:rootpw", "auth", "disable"),
    S("auth", "disable"),
    S("get", "k/simple", formats=("json",)),
    # last: it writes thousands of revisions on etcd
    S("check", "datascale", "--load", "s", known="datascale"),
]


def expand(side: Side, args: list[str], fmt: str) -> list[str]:
    values = dict(side.vars, fmt=fmt, tmp=str(side.tmp / side.name))
    return [a.format(**values) if "{" in a else a for a in args]


@dataclass
class Result:
    commands: dict[str, int]
    identical: int = 0
    known: dict[str, list[str]] = field(default_factory=dict)   # reason -> steps
    unexplained: list[str] = field(default_factory=list)         # printed diffs
    failures: list[str] = field(default_factory=list)            # steps that could not run
    seconds: dict[str, float] = field(default_factory=dict)      # wall time of each step

    def summary(self) -> str:
        lines = [f"commands run: etcd {self.commands.get('etcd', 0)}, quorumkv {self.commands.get('qkv', 0)}",
                 f"compared: {self.identical + sum(len(v) for v in self.known.values()) + len(self.unexplained)}",
                 f"identical: {self.identical}",
                 f"known differences: {sum(len(v) for v in self.known.values())}"]
        for reason, steps in self.known.items():
            lines.append(f"  - {reason}: {', '.join(steps)}")
        lines.append(f"unexplained differences: {len(self.unexplained)}")
        lines.append(f"failures: {len(self.failures)}")
        lines += [f"  - {f}" for f in self.failures]
        slowest = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:5]
        lines.append(f"steps' wall time: {sum(self.seconds.values()):.0f} s; slowest: "
                     + ", ".join(f"`{k}` {v:.1f} s" for k, v in slowest))
        return "\n".join(lines)


def compared_lines(side: Side, step: Step, fmt: str, rc: int, out: bytes, err: str) -> list[str]:
    errs = [mask_text(side, ln) for ln in err.splitlines() if ln.startswith("Error:")]
    if fmt == "protobuf" and step.pbtype and rc in (0, -2):
        decoded = decode_pb(step.pbtype, out)
        text = mask_text(side, decoded) if decoded is not None else "(not a %s) %r" % (step.pbtype, out[:80])
    else:
        raw = out.decode(errors="replace")
        if fmt == "protobuf":  # an undecoded protobuf: compare its bytes, shown in base64
            raw = base64.b64encode(out).decode()
        text = mask_table_or_simple(side, " ".join(step.args), raw)
    if fmt == "table":  # column widths follow the masked values' lengths
        text = re.sub(r" {2,}", " ", re.sub(r"-{3,}", "---", text))
    text = normalize(step, fmt, text)
    status = "exit 0" if rc == 0 else "interrupted" if rc == -2 else "timeout" if rc == -1 else "exit nonzero"
    if rc > 0:
        status = f"exit {rc}"
    return [status, *text.splitlines(), *errs]


def known_masked(lines: list[str]) -> tuple[list[str], set[str]]:
    used = set()
    out = []
    for line in lines:
        for reason, rx, repl in KNOWN_MASKS:
            new = rx.sub(repl, line)
            if new != line:
                used.add(reason)
            line = new
        out.append(line)
    return out, used


def diff_text(a: list[str], b: list[str]) -> str:
    import difflib
    return "\n".join(difflib.unified_diff(a, b, "etcd", "quorumkv", lineterm="", n=1))


def run_steps(etcd: Side, qkv: Side, verbose: bool = False, log: Callable[[str], None] = print) -> Result:
    from concurrent.futures import ThreadPoolExecutor

    result = Result({})
    with ThreadPoolExecutor(2) as pool:
        _run_steps(etcd, qkv, verbose, log, result, pool)
    result.commands = {etcd.name: etcd.runs, qkv.name: qkv.runs}
    return result


def _run_steps(etcd: Side, qkv: Side, verbose: bool, log: Callable[[str], None], result: Result, pool: Any) -> None:
    for step in STEPS:
        for fmt in step.formats:
            shown = " ".join(step.args) + (f" -w {fmt}" if fmt != "simple" or len(step.formats) > 1 else "")

            def one(side: Side) -> list[str]:
                try:
                    args = expand(side, step.args, fmt)
                except KeyError as exc:
                    return [f"(not run: no {exc.args[0]} learned)"]
                if fmt != "simple":
                    args = [*args, "-w", fmt]
                rc, out, err = side.run(args, stdin=step.stdin, stop_after=step.stop_after)
                if step.learn is not None and rc == 0:
                    step.learn(side, out)
                if verbose:
                    log(f"[{side.name}] {' '.join(args)} -> {rc}\n{out.decode(errors='replace')}{err}")
                return compared_lines(side, step, fmt, rc, out, err)

            # both sides at once (each its own cluster and state): half the wall time
            started = time.monotonic()
            outs = list(pool.map(one, (etcd, qkv)))
            result.seconds[shown] = result.seconds.get(shown, 0.0) + time.monotonic() - started
            if not step.compare:
                continue
            a, b = outs
            if any(x and x[0].startswith("(not run") for x in outs):
                result.failures.append(f"`{shown}`: {a[0] if a[0].startswith('(not') else b[0]}")
                continue
            if a == b:
                result.identical += 1
                continue
            (ka, ua), (kb, ub) = known_masked(a), known_masked(b)
            if ka == kb and (ua | ub):
                for reason in sorted(ua | ub):
                    result.known.setdefault(reason, []).append(f"`{shown}`")
                continue
            if step.known:
                result.known.setdefault(KNOWN_STEPS[step.known], []).append(f"`{shown}`")
                continue
            d = f"`{shown}`:\n{diff_text(a, b)}"
            result.unexplained.append(d)
            log(f"DIFF {d}\n")


def run_parity(tmp: Path, verbose: bool = False, log: Callable[[str], None] = print) -> Result:
    """Start both clusters in `tmp`, run every step, stop them; the result."""
    sides: list[Side] = []
    try:
        (tmp / "etcd").mkdir(exist_ok=True)
        sides.append(start_etcd(tmp))
        sides.append(start_qkv(tmp))
        peer4, peer5 = free_port(), free_port()
        for side in sides:
            wait_serving(side)
            learn_ids(side)
            (side.tmp / side.name).mkdir(exist_ok=True)
            side.vars.update(peer4=f"127.0.0.1:{peer4}", peer5=f"127.0.0.1:{peer5}", ep1=side.endpoints[0])
            side.subs.update({f"127.0.0.1:{peer4}": "<PEER4>", f"127.0.0.1:{peer5}": "<PEER5>"})
        return run_steps(sides[0], sides[1], verbose, log)
    finally:
        for side in sides:
            side.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verbose", action="store_true", help="print every command and its output")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    opts = ap.parse_args()
    for exe in (ETCD, ETCDCTL):
        if not os.access(exe, os.X_OK):
            sys.stderr.write(f"{exe} is missing: this script compares with etcd 3.4\n")
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="qkv-grpc-parity-"))
    try:
        started = time.monotonic()
        result = run_parity(tmp, opts.verbose)
        print(result.summary())
        print(f"took {time.monotonic() - started:.0f} s")
        return 1 if result.unexplained or result.failures else 0
    finally:
        if opts.keep:
            sys.stderr.write(f"kept {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
