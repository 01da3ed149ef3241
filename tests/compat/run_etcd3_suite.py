"""python-etcd3's own test suite against quorumkv's gRPC gateway (issue 18: "the test suite
of one public etcd client library ... run against quorumkv").

    PYTHONPATH=. .venv/bin/python tests/compat/run_etcd3_suite.py [--compare-etcd] [--keep]

A script (and the functions tests/integration/test_etcd3_suite.py uses): it fetches
python-etcd3 0.12.0 (the last release; its sdist carries tests/test_etcd3.py) with pip into
~/.cache/quorumkv/etcd3-0.12.0 (not a project dependency: ``src/`` the unpacked sdist,
``site/`` etcd3 and the suite's own test dependencies tenacity, six and mock, installed
there with ``--no-deps`` so the project's grpcio and protobuf are the ones used), starts a
3-member quorumkv cluster with gRPC, and runs the suite's tests/test_etcd3.py, unchanged,
against it with this repository's pytest and Hypothesis, adapted only in how it finds its
server:

- ``PYTHON_ETCD_HTTP_URL`` (the suite's own variable) = the first member's gRPC URL; the
  plugin tests/compat/etcd3_endpoint.py makes it ``etcd3.client()``'s default too, and an
  ``etcdctl`` wrapper first on its PATH points the suite's ``etcdctl`` calls without
  ``--endpoints`` (it shells out to /usr/bin/etcdctl) at it;
- ``TEST_ETCD_VERSION`` (the suite's own variable) = v3.4.23, the etcd version quorumkv
  answers as, so its tests for etcd >= 3.3 run;
- the members are named pifpaf0..2: the suite was written for pifpaf's etcd cluster, and
  finds the members to stop (SIGSTOP, for its serializable-read-without-quorum tests) with
  ``pgrep -f -- '--name pifpaf[12]'``, and expects member names starting with "pifpaf";
- ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``: etcd3 0.12.0's generated code
  (protoc 3.6) is refused by today's compiled protobuf; the pure-Python one loads it;
- Hypothesis's health checks are off (etcd3_endpoint.py says why).

``--compare-etcd`` runs the same suite, the same way, against a fresh 3-member etcd 3.4
cluster (/usr/bin/etcd, members pifpaf0..2) too, and prints both counts side by side.
The clusters run one after the other (the suite's pgrep would find both).

Failures that are quorumkv's by design (KNOWN_BY_DESIGN, each with its reason) are listed
as such; any other failure on quorumkv is a bug.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from contextlib import contextmanager

ETCD3_VERSION = "0.12.0"
SUITE_FILE = "tests/test_etcd3.py"
CACHE = Path(os.environ.get("QKV_ETCD3_CACHE") or Path.home() / ".cache" / "quorumkv" / f"etcd3-{ETCD3_VERSION}")
# The suite's test-only dependencies, installed beside etcd3 (pytest and Hypothesis are the
# repo's). tenacity as etcd3 0.12.0 pins it (requirements/base.txt): its Lock.acquire passes
# a wait function of two arguments, which tenacity >= 8 no longer calls that way.
SUITE_DEPS = [f"etcd3=={ETCD3_VERSION}", "tenacity==6.1.0", "six", "mock"]
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
ETCD_VERSION = "v3.4.23"
MEMBER_NAMES = ["pifpaf0", "pifpaf1", "pifpaf2"]
PLUGIN_DIR = Path(__file__).resolve().parent  # etcd3_endpoint.py, loaded with -p
SUITE_TIMEOUT_S = 1800.0
START_TIMEOUT_S = 120.0  # a cluster's start on a busy machine

# Failures on quorumkv that are by design: test id -> why.
KNOWN_BY_DESIGN = {
    "TestEtcd3::test_member_list":
        "asserts every member's peer URL starts with http://; quorumkv's peers talk ZeroMQ "
        "(tcp:// peer URLs), by design",
    "TestEtcd3::test_snapshot":
        "pipes Maintenance.Snapshot into `etcdctl snapshot status`, which reads etcd's bbolt "
        "file; quorumkv's snapshot is its own format (SPEC section 6), by design",
}


class SuiteUnavailable(Exception):
    """python-etcd3's suite could not be fetched (no network, no pip)."""


# --- fetching -----------------------------------------------------------------------------
def _pip(*args: str, timeout: float = 300.0) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SuiteUnavailable(f"pip {' '.join(args[:1])} failed: {(proc.stderr or proc.stdout)[-800:]}")


def fetch_suite(cache: Path = CACHE) -> Path:
    """python-etcd3 0.12.0's unpacked sdist (``cache/src``, with its tests/) and its test
    dependencies (``cache/site``), fetched once with pip; returns ``cache``. Raises
    SuiteUnavailable when pip cannot get them."""
    src, site = cache / "src", cache / "site"
    stamp = site / ".qkv-suite-deps"
    if (src / SUITE_FILE).is_file() and stamp.is_file() and stamp.read_text() == " ".join(SUITE_DEPS):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            _pip("download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                 f"etcd3=={ETCD3_VERSION}")
            sdists = list(Path(tmp).glob(f"etcd3-{ETCD3_VERSION}.tar.gz"))
            if not sdists:
                raise SuiteUnavailable(f"pip download gave no etcd3-{ETCD3_VERSION}.tar.gz")
            with tarfile.open(sdists[0]) as tar:
                tar.extractall(tmp, filter="data")
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(str(Path(tmp) / f"etcd3-{ETCD3_VERSION}"), src)
            shutil.rmtree(site, ignore_errors=True)
            _pip("install", "--no-deps", "--no-compile", "--target", str(site), *SUITE_DEPS)
            stamp.write_text(" ".join(SUITE_DEPS))
        except (OSError, subprocess.TimeoutExpired, tarfile.TarError) as exc:
            raise SuiteUnavailable(f"cannot fetch python-etcd3 {ETCD3_VERSION}: {exc}") from None
    return cache


# --- the servers --------------------------------------------------------------------------
@dataclass
class Servers:
    """A running 3-member cluster: its gRPC URLs (http://host:port), the first one first."""
    name: str
    urls: list[str]


@contextmanager
def quorumkv_cluster(tmp: Path) -> Iterator[Servers]:
    """A 3-member quorumkv cluster serving etcd's gRPC API, members pifpaf0..2."""
    from tests.nodeproc import Cluster, wait_for

    cluster = Cluster(tmp, names=MEMBER_NAMES, grpc=True, token="etcd3-suite")
    try:
        cluster.start(timeout=START_TIMEOUT_S)
        cluster.leader(timeout=START_TIMEOUT_S)
        wait_for(lambda: all(n.grpc_listens() for n in cluster.nodes), START_TIMEOUT_S, "every member's gRPC port")
        yield Servers("quorumkv", [n.grpc_url for n in cluster.nodes])
    finally:
        cluster.stop()


@contextmanager
def etcd_cluster(tmp: Path) -> Iterator[Servers]:
    """A fresh 3-member etcd 3.4 cluster (/usr/bin/etcd), members pifpaf0..2."""
    from tests.nodeproc import free_port, wait_for

    ports = [(free_port(), free_port()) for _ in MEMBER_NAMES]
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(MEMBER_NAMES, ports))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    try:
        for name, (client, peer) in zip(MEMBER_NAMES, ports):
            log = open(tmp / f"{name}.etcd.log", "ab")
            logs.append(log)
            procs.append(subprocess.Popen(
                [ETCD, "--name", name, "--data-dir", str(tmp / f"{name}.etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-token", "etcd3-suite",
                 "--initial-cluster-state", "new"],
                stdout=log, stderr=subprocess.STDOUT))
        urls = [f"http://127.0.0.1:{client}" for client, _ in ports]

        def healthy() -> bool:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("an etcd member exited: see " + str(tmp))
            r = subprocess.run([ETCDCTL, "--endpoints", ",".join(urls), "endpoint", "health"],
                               capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"))
            return r.returncode == 0

        wait_for(healthy, START_TIMEOUT_S, "etcd's 3 members healthy", interval=0.5)
        yield Servers(f"etcd {ETCD_VERSION[1:]}", urls)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


# --- running the suite --------------------------------------------------------------------
@dataclass
class SuiteResult:
    server: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # test id -> its failure's first line
    skipped: dict[str, str] = field(default_factory=dict)
    output: str = ""

    @property
    def total(self) -> int:
        return len(self.passed) + len(self.failed) + len(self.skipped)

    def unexpected(self) -> dict[str, str]:
        """Failures not in KNOWN_BY_DESIGN."""
        return {t: m for t, m in self.failed.items() if t not in KNOWN_BY_DESIGN}


# etcdctl refuses ETCDCTL_ENDPOINTS next to --endpoints (a fatal "conflicting environment
# variable"), and the suite passes --endpoints to some calls only: this wrapper, first on
# the suite's PATH, adds --endpoints to the calls without one.
ETCDCTL_WRAPPER = """#!/bin/sh
# python-etcd3's suite: etcdctl without --endpoints goes to the server under test.
for a in "$@"; do
    case "$a" in --endpoints|--endpoints=*) exec {etcdctl} "$@";; esac
done
exec {etcdctl} --endpoints "$QKV_SUITE_ENDPOINT" "$@"
"""


def suite_env(cache: Path, servers: Servers, bin_dir: Path) -> dict[str, str]:
    """The suite's environment; ``bin_dir`` gets the etcdctl wrapper."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "etcdctl"
    wrapper.write_text(ETCDCTL_WRAPPER.format(etcdctl=ETCDCTL))
    wrapper.chmod(0o755)
    env = dict(os.environ)
    for name in ("PYTHONPATH", "ETCDCTL_ENDPOINTS"):
        env.pop(name, None)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(cache / "site"), str(PLUGIN_DIR)]),
        "PYTHON_ETCD_HTTP_URL": servers.urls[0],
        "QKV_SUITE_ENDPOINT": servers.urls[0],
        "ETCDCTL_API": "3",
        "TEST_ETCD_VERSION": ETCD_VERSION,
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def parse_junit(path: Path, server: str, output: str = "") -> SuiteResult:
    """A pytest junit-xml report -> SuiteResult (test ids ``Class::test``)."""
    result = SuiteResult(server, output=output)
    for case in ET.parse(path).getroot().iter("testcase"):
        cls = (case.get("classname") or "").rsplit(".", 1)[-1]
        tid = f"{cls}::{case.get('name')}" if cls else str(case.get("name"))
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            text = (bad.get("message") or bad.text or "").strip()
            result.failed[tid] = text.splitlines()[0][:300] if text else "failed"
        elif skip is not None:
            result.skipped[tid] = (skip.get("message") or "").strip()[:300]
        else:
            result.passed.append(tid)
    return result


def run_suite(cache: Path, servers: Servers, work: Path, extra: list[str] | None = None) -> SuiteResult:
    """python-etcd3's tests/test_etcd3.py against ``servers``, in a copy of its sdist (its
    Hypothesis database and the cwd-relative tests/ca.crt it reads stay there)."""
    src = work / f"etcd3-src-{servers.name.split()[0]}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(cache / "src", src)
    report = work / f"junit-{servers.name.split()[0]}.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "etcd3_endpoint", "-p", "no:cacheprovider",
           "-o", "addopts=", "--rootdir", str(src), "-v", "-rfE", f"--junitxml={report}",
           SUITE_FILE, *(extra or [])]
    log = work / f"suite-{servers.name.split()[0]}.log"  # the suite's output, as it comes
    with open(log, "wb") as out:
        try:
            subprocess.run(cmd, cwd=src, env=suite_env(cache, servers, work / "bin"), stdout=out, stderr=subprocess.STDOUT,
                           timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the suite did not end within {SUITE_TIMEOUT_S}s against {servers.name}: "
                               f"{log.read_text(errors='replace')[-2000:]}") from None
    output = log.read_text(errors="replace")
    if not report.exists():
        raise RuntimeError(f"the suite wrote no report against {servers.name}:\n{output[-3000:]}")
    return parse_junit(report, servers.name, output)


def run_against_quorumkv(work: Path, cache: Path = CACHE, extra: list[str] | None = None) -> SuiteResult:
    (work / "qkv").mkdir(parents=True, exist_ok=True)
    with quorumkv_cluster(work / "qkv") as servers:
        return run_suite(cache, servers, work, extra)


def run_against_etcd(work: Path, cache: Path = CACHE, extra: list[str] | None = None) -> SuiteResult:
    (work / "etcd").mkdir(parents=True, exist_ok=True)
    with etcd_cluster(work / "etcd") as servers:
        return run_suite(cache, servers, work, extra)


# --- the report ---------------------------------------------------------------------------
def report(results: list[SuiteResult]) -> str:
    lines = [f"python-etcd3 {ETCD3_VERSION} {SUITE_FILE}, one run per server:",
             f"{'':10}" + "".join(f"{r.server:>16}" for r in results)]
    for what in ("passed", "failed", "skipped", "total"):
        lines.append(f"{what:10}" + "".join(
            f"{(len(getattr(r, what)) if what != 'total' else r.total):>16}" for r in results))
    for r in results:
        for tid, msg in sorted(r.failed.items()):
            why = KNOWN_BY_DESIGN.get(tid) if r.server == "quorumkv" else None
            tag = f"by design: {why}" if why else msg
            lines.append(f"  failed on {r.server}: {tid}: {tag}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-etcd", action="store_true", help="also run it against a 3-member etcd 3.4")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, reports)")
    ap.add_argument("-k", dest="select", help="pytest -k expression (a part of the suite)")
    ap.add_argument("--verbose", action="store_true", help="print the suite's pytest output")
    args = ap.parse_args(argv)
    if not os.path.exists(ETCDCTL):
        print(f"{ETCDCTL} is missing: the suite shells out to etcdctl 3.4", file=sys.stderr)
        return 2
    if args.compare_etcd and not os.path.exists(ETCD):
        print(f"{ETCD} is missing: --compare-etcd needs etcd 3.4", file=sys.stderr)
        return 2
    try:
        cache = fetch_suite()
    except SuiteUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    extra = ["-k", args.select] if args.select else []
    work = Path(tempfile.mkdtemp(prefix="qkv-etcd3-suite-"))
    results: list[SuiteResult] = []
    try:
        started = time.monotonic()
        results.append(run_against_quorumkv(work, cache, extra))
        took = [time.monotonic() - started]
        if args.compare_etcd:
            started = time.monotonic()
            results.append(run_against_etcd(work, cache, extra))
            took.append(time.monotonic() - started)
        if args.verbose:
            for r in results:
                print(f"===== {r.server} =====\n{r.output}")
        print(report(results))
        print("took: " + ", ".join(f"{r.server} {t:.0f} s" for r, t in zip(results, took)))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if results and results[0].unexpected() else 0


if __name__ == "__main__":
    sys.exit(main())
