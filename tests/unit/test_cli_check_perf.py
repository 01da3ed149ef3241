"""`qkvctl check perf` (etcdctl's check.go): the workloads, the verdict lines as etcdctl
prints them, the refusal of a prefix that has keys, and a short run against the fake
gateway (its keys are deleted afterwards). Nothing here asserts on time: a run's verdict
may be PASS or FAIL on a busy machine; its shape is what is checked."""
from __future__ import annotations

import io
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from protocol.client.cli import run  # noqa: E402
from protocol.client.cli.bench import (  # noqa: E402
    LOAD_ALIASES, PERF_LOADS, PerfResult, perf_verdict,
)


@pytest.fixture
def ctl(srv, capsys, monkeypatch):
    def call(*argv: str):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
        capsys.readouterr()
        rc = run(["--endpoints", srv.address, "--command-timeout", "2s", *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


def test_workloads_are_etcdctls():
    assert {k: (v.limit, v.clients, v.duration_s) for k, v in PERF_LOADS.items()} == {
        "s": (150, 50, 60), "m": (1000, 200, 60), "l": (8000, 500, 60), "xl": (15000, 1000, 60)}
    assert LOAD_ALIASES["xLarge"] == "xl" and LOAD_ALIASES["small"] == "s"


def test_verdict_pass():
    lines, ok = perf_verdict(PerfResult([0.01, 0.02, 0.03], {}, 3 / 149.5), 150)
    assert ok
    assert lines == ["PASS: Throughput is 150 writes/s", "PASS: Slowest request took 0.030000s",
                     "PASS: Stddev is 0.008165s", "PASS"]


def test_verdict_fail_lines_as_etcdctl_prints_them():
    # etcdctl 3.4 on this machine printed exactly these shapes (its slowest/stddev failures
    # carry no "FAIL:" prefix)
    lines, ok = perf_verdict(PerfResult([0.01, 1.748639], {"etcdserver: request timed out": 2}, 2 / 10), 150)
    assert not ok
    assert lines == ["FAIL: too many errors", "FAIL: ERROR(etcdserver: request timed out) -> 2",
                     "FAIL: Throughput too low: 11 writes/s", "Slowest request took too long: 1.748639s",
                     "Stddev too high: 0.869320s", "FAIL"]


def test_key_is_etcdctls_shape():
    from protocol.client.bench import BenchConfig, _RequestMaker
    from protocol.codec import unpack

    cfg = BenchConfig("put", [], key_size=256, val_size=1024, key_space_size=2**63 - 1,
                      key_prefix=b"/etcdctl-check-perf/", seed=1)
    req = unpack(_RequestMaker(cfg).frame(7, 0))
    k = req["key"]
    assert k.startswith(b"/etcdctl-check-perf/") and len(k) == len(b"/etcdctl-check-perf/") + 256
    assert req["id"] == 7 and len(req["value"]) == 1024


def test_unknown_load_is_a_bad_feature(ctl):
    assert ctl("check", "perf", "--load", "huge") == (4, "", "Error: unknown load option huge\n")


def test_prefix_with_keys_is_refused(ctl):
    assert ctl("put", "/etcdctl-check-perf/x", "1")[0] == 0
    rc, out, err = ctl("check", "perf")
    assert (rc, out) == (3, "")
    assert err == ('Error: prefix "/etcdctl-check-perf/" has keys. Delete with qkvctl del --prefix '
                   "/etcdctl-check-perf/ first\n")


def test_a_short_run_prints_the_verdict_and_cleans_up(ctl):
    rc, out, err = ctl("check", "perf", "--duration", "1", "--prefix", "/p/", "--auto-compact")
    lines = out.splitlines()
    assert lines[0] == "Compacting with revision " + lines[0].split()[-1] and lines[1].startswith("Compacted with")
    assert re.fullmatch(r"(PASS: Throughput is|FAIL: Throughput too low:) \d+ writes/s", lines[-4]), out
    assert re.fullmatch(r"(PASS: Slowest request took|Slowest request took too long:) \d+\.\d{6}s", lines[-3])
    assert re.fullmatch(r"(PASS: Stddev is|Stddev too high:) \d+\.\d{6}s", lines[-2])
    assert (lines[-1], rc) in (("PASS", 0), ("FAIL", 1)), out
    assert ctl("get", "/p/", "--prefix", "--count-only", "-w", "fields")[1].count('"Count" : 0') == 1


# -- check datascale --------------------------------------------------------------------------
def test_resident_bytes_sums_every_process():
    from protocol.client.cli.bench import resident_bytes

    page = ("# HELP process_resident_memory_bytes x\n# TYPE process_resident_memory_bytes gauge\n"
            'process_resident_memory_bytes{pid="1"} 1.5e+06\nprocess_resident_memory_bytes 500000\n'
            "process_resident_memory_bytes_other 9\nprocess_virtual_memory_bytes 7e9\n")
    assert resident_bytes(page) == 2_000_000
    assert resident_bytes("") == 0


@pytest.fixture
def metrics_page():
    """A /metrics page whose resident memory grows 3 MiB per scrape."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        scrapes = 0

        def do_GET(self):  # noqa: N802 - http.server's name
            Page.scrapes += 1
            body = f"process_resident_memory_bytes {2**27 + Page.scrapes * 3 * 2**20}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_datascale_writes_measures_and_cleans_up(ctl, metrics_page):
    rc, out, err = ctl("check", "datascale", "--keys", "200", "--metrics-url", metrics_page)
    assert (rc, out) == (0, "Start data scale check for work load [200 key-value pairs, 1024 bytes per key-value, "
                            "50 concurrent clients].\nPASS: Approximate system memory used : 3.00 MB.\n"), err
    assert ctl("get", "/etcdctl-check-datascale/", "--prefix", "--count-only", "-w", "fields")[1].count(
        '"Count" : 0') == 1


def test_datascale_without_metrics_fails_as_etcdctl(ctl):
    from nodeproc import free_port

    rc, out, _ = ctl("check", "datascale", "--keys", "10", "--metrics-url", f"http://127.0.0.1:{free_port()}/metrics")
    assert (rc, out) == (1, "FAIL: Could not read process_resident_memory_bytes before the put operations.\n")
    assert ctl("check", "datascale", "--load", "tiny")[:2] == (4, "")
