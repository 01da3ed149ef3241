"""qkvctl benchmark against the in-process fake gateway (figures are printed, never asserted)."""
from __future__ import annotations

import io
import os
import sys

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from protocol.client import bench  # noqa: E402
from protocol.client.cli import run  # noqa: E402
from protocol.codec import unpack  # noqa: E402

SUMMARY_LINES = ("Summary:", "  Total:\t", "  Slowest:\t", "  Fastest:\t", "  Average:\t",
                 "  Stddev:\t", "  Requests/sec:\t", "Response time histogram:",
                 "Latency distribution:", "  10% in ", "  50% in ", "  99% in ")


def test_pre_encoded_frames_decode_to_the_spec_maps():
    cfg = bench.BenchConfig(kind="put", endpoints=["tcp://x:1"], key_size=8, val_size=16,
                            key_space_size=10, sequential_keys=True, seed=1)
    maker = bench._RequestMaker(cfg)
    req = unpack(maker.frame(77, 3))
    assert req == {"id": 77, "op": "put", "key": bench.make_key(3, 8), "value": maker.value}
    assert len(req["key"]) == 8 and len(req["value"]) == 16
    cfg = bench.BenchConfig(kind="range", endpoints=["tcp://x:1"], key=b"a", range_end=b"b",
                            consistency="s")
    assert unpack(bench._RequestMaker(cfg).frame(5, 0)) == {
        "id": 5, "op": "range", "key": b"a", "range_end": b"b", "serializable": True}
    cfg = bench.BenchConfig(kind="txn-put", endpoints=["tcp://x:1"], txn_ops=3, key_space_size=100)
    req = unpack(bench._RequestMaker(cfg).frame(2**63, 1))
    assert req["id"] == 2**63 and req["op"] == "txn" and len(req["success"]) == 3
    assert len({op["put"]["key"] for op in req["success"]}) == 3
    # etcd's key: binary.PutVarint(n) in key_size bytes
    assert bench.make_key(0, 8) == b"\x00" * 8 and bench.make_key(1, 4) == b"\x02\x00\x00\x00"
    assert msgpack.unpackb(msgpack.packb(bench.make_key(300, 8))) == bench.make_key(300, 8)


def test_report_shape_matches_etcd():
    result = bench.BenchResult(latencies_s=[0.001 * (i + 1) for i in range(1000)], total_s=2.0)
    text = bench.format_report(result)
    for line in SUMMARY_LINES + ("  99.9% in ",):
        assert "\n" + line in text, line
    assert "  Requests/sec:\t500.0000\n" in text
    assert "  Slowest:\t1.0000 secs.\n" in text and "  Fastest:\t0.0010 secs.\n" in text
    hist = text.split("Response time histogram:\n")[1].split("\n\n")[0].splitlines()
    assert len(hist) == 11 and all("|" in h for h in hist)
    assert sum(int(h.split("[")[1].split("]")[0]) for h in hist) == 1000
    assert "Error distribution" not in text
    text = bench.format_report(bench.BenchResult(errors={"boom": 3}, total_s=1.0))
    assert "Summary" not in text and "\nError distribution:\n  [3]\tboom\n" in text


def test_put_benchmark_against_fake(srv):
    out = io.StringIO()
    cfg = bench.BenchConfig(kind="put", endpoints=[srv.endpoint], clients=16, total=600,
                            key_space_size=50, val_size=32)
    result = bench.main(cfg, out, io.StringIO())
    text = out.getvalue()
    print(text)
    assert len(result.latencies_s) == 600 and result.error_count == 0
    for line in SUMMARY_LINES:
        assert "\n" + line in text, line
    assert srv.ops_received("put") == 600
    assert srv.store.revision == 601
    assert len(srv.store.kv) <= 50


def test_a_rate_is_never_exceeded(srv):
    """check perf's rate.Limiter: a token every 1/rate s, a burst of one, so a run of d
    seconds starts at most rate x d + 1 requests however many clients wait."""
    cfg = bench.BenchConfig(kind="put", endpoints=[srv.endpoint], clients=8, duration_s=0.5, rate=40,
                            key_space_size=2**63 - 1, key_prefix=b"/perf/")
    result = bench.run(cfg)
    assert result.error_count == 0 and 1 <= len(result.latencies_s) <= 40 * 0.5 + 1
    assert srv.ops_received("put") == len(result.latencies_s)
    assert all(k.startswith(b"/perf/") for k in srv.store.kv)


def test_range_benchmark_via_cli_with_duration(srv, capsys):
    srv.store.put(b"foo", b"bar")
    rc = run(["--endpoints", srv.address, "benchmark", "range", "foo", "--clients", "4",
              "--duration", "0.5", "--consistency", "s"])
    cap = capsys.readouterr()
    print(cap.out)
    assert rc == 0
    assert "\nSummary:\n" in cap.out and "Latency distribution:" in cap.out
    assert cap.err == ""  # no progress bar when stderr is not a TTY
    assert srv.ops_received("range") > 0
    assert all(r.get("serializable") is True for r in srv.requests)


def test_txn_put_benchmark_via_cli_group_options(srv, capsys):
    rc = run(["--endpoints", srv.address, "benchmark", "--clients", "2", "--total", "50",
              "txn-put", "--txn-ops", "2", "--key-space-size", "10"])
    cap = capsys.readouterr()
    assert rc == 0 and "\nSummary:\n" in cap.out
    assert srv.ops_received("txn") == 50


def test_errors_are_counted_and_reported(srv, capsys):
    srv.error_code = "no_leader"
    rc = run(["--endpoints", srv.address, "benchmark", "put", "--total", "20", "--clients", "4"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "\nError distribution:\n  [20]\tfake: no_leader\n" in cap.out
    assert "Error: all 20 requests failed" in cap.err


def test_timeouts_are_counted_and_sockets_recreated(srv):
    srv.drop_replies = True
    srv.drop_count = 3  # the first three requests get no answer
    cfg = bench.BenchConfig(kind="put", endpoints=[srv.endpoint], clients=3, total=30,
                            timeout_s=0.3)
    out = io.StringIO()
    result = bench.main(cfg, out, io.StringIO())
    assert result.errors == {"timeout: no reply within 0.3s": 3}
    assert len(result.latencies_s) == 27
    assert "  [3]\ttimeout: no reply within 0.3s" in out.getvalue()


def test_watch_tally_and_report_count_every_event_and_the_missing_ones():
    tally = bench.WatchTally(expected=5)
    assert not tally.add(2, 10.0) and tally.events == 2 and tally.last_at == 10.0
    assert not tally.add(0, 11.0) and tally.last_at == 10.0  # a progress notification: no event
    assert tally.add(3, 12.5) and tally.done and tally.last_at == 12.5
    puts = bench.BenchResult(latencies_s=[0.01] * 5, total_s=2.0, started_at=10.5)
    res = bench.WatchBenchResult(puts, tally.events, tally.last_at)
    assert res.acknowledged == 5 and res.missing == 0 and res.elapsed_s == 2.0
    text = bench.format_watch_report(res)
    assert "  Events:\t5 received, 0 missing.\n" in text
    assert "  Watch time:\t2.0000 secs from the first put sent" in text and "(2.5 events/s)" in text
    short = bench.WatchBenchResult(bench.BenchResult(latencies_s=[0.01] * 5, errors={"timeout": 1}, total_s=1.0),
                                   3, 1.0)
    assert short.missing == 2 and "  Puts:\t5 acknowledged, 1 errors," in bench.format_watch_report(short)
    none = bench.WatchBenchResult(bench.BenchResult(latencies_s=[0.01], total_s=1.0), 0, 0.0)
    assert none.missing == 1 and "the watcher had no event" in bench.format_watch_report(none)


def test_a_watch_benchmark_needs_a_put_total_and_prefix():
    import pytest

    with pytest.raises(ValueError):
        bench.run_watch(bench.BenchConfig(kind="put", endpoints=["tcp://x:1"], total=10))
    with pytest.raises(ValueError):
        bench.run_watch(bench.BenchConfig(kind="range", endpoints=["tcp://x:1"], total=10, key_prefix=b"p/"))
