"""Per-call cost of the metric operations the hot paths make, in prometheus_client's
multiprocess mode (as a node runs them: PROMETHEUS_MULTIPROC_DIR set before the import),
and of the gateway's per-request accounting (GatewayActor._answered). Prints figures;
asserts nothing.

    PYTHONPATH=. python tests/bench/bench_metrics.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import timeit

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="qkv-bench-metrics-"))

from actors.runtime import metrics  # noqa: E402  (after the variable: multiprocess mode)


def per_call_us(stmt, number: int = 200_000) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))
    return best / number * 1e6


def main() -> None:
    from prometheus_client import values
    print(f"prometheus_client value class: {values.ValueClass.__name__}", file=sys.stderr)
    counter = metrics.requests.labels("put", "ok")
    hist = metrics.request_seconds.labels("put")
    rows = [
        ("counter child inc()", lambda: counter.inc()),
        ("counter .labels(op, code).inc() (no cached child)", lambda: metrics.requests.labels("put", "ok").inc()),
        ("unlabelled counter inc()", lambda: metrics.slow_apply.inc()),
        ("histogram child observe()", lambda: hist.observe(0.0004)),
        ("unlabelled histogram observe()", lambda: metrics.wal_fsync_seconds.observe(0.002)),
        ("gauge set()", lambda: metrics.proposals_committed.set(12345)),
        ("per request written directly: counter inc + histogram observe", lambda: (counter.inc(), hist.observe(0.0004))),
    ]

    tally = metrics.HistogramTally(hist)
    counts = metrics.CounterTally(metrics.requests)
    rows += [
        ("HistogramTally.observe() (written by a timer)", lambda: tally.observe(0.0004)),
        ("CounterTally.inc(labels) (written by a timer)", lambda: counts.inc(("put", "ok"))),
    ]

    from actors.gateway.actor import GatewayActor
    gw = GatewayActor.__new__(GatewayActor)  # only what _answered uses
    gw._requests_tally = metrics.CounterTally(metrics.requests)
    gw._seconds_tallies = {}
    gw._proposals_failed = 0
    rows.append(("gateway per request: _answered(op, code, ...)",
                 lambda: gw._answered("put", "ok", 0.0, 0.0004, "write")))
    flushes = [0]

    def answered_and_flush_every_100() -> None:
        gw._answered("put", "ok", 0.0, 0.0004, "write")
        flushes[0] += 1
        if flushes[0] % 100 == 0:
            gw._metrics_flush()
    rows.append(("... plus its flush, amortized over 100 requests", answered_and_flush_every_100))
    for name, fn in rows:
        print(f"{name:62s} {per_call_us(fn):6.2f} us")


if __name__ == "__main__":
    main()
