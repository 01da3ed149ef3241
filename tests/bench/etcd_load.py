"""A load generator for etcd 3.4 on grpc.aio, shaped like etcd's tools/benchmark (the
comparison of `make bench-compare`, tests/bench/bench_compare.py).

`--clients` logical clients, each keeping one request in flight, split over 2 processes
(multiprocessing spawn; fewer when there are fewer clients), each process with one gRPC
channel to the endpoint (etcd's benchmark --conns 1 default) and its share of the total.
Kinds:
- put: 8-byte keys as etcd's benchmark makes them (protocol/client/bench.py make_key, random
  in a key space of 100,000), 256-byte values;
- range: one key, linearizable (`--consistency l`) or serializable (`s`);
- watch: one Watch stream on a prefix (this process, its own channel), created first; then
  `--total` puts under the prefix from the clients; the time from the first put sent until
  the stream has had every event.
It prints a report and a last line `RESULT {json}` (requests/s, p50/p99 in ms, errors; for
watch also the seconds and events). For a cluster, give the leader's client URL (`leader()`
finds it with Maintenance.Status). The same load drives quorumkv's gRPC gateway (a node with
--listen-grpc-urls: `--endpoint` its host:port, `--name quorumkv` for the report). The messages
and stubs are the committed protocol/etcdpb modules (etcd_driver.load_pb).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _p in (str(HERE), str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PROCS = 2
KEY_SIZE, VALUE_SIZE, KEY_SPACE = 8, 256, 100_000


def split(n: int, parts: int) -> list[int]:
    """n as `parts` near-equal shares, the larger first."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def percentile(sorted_lats: list[float], p: float) -> float:
    """qkvctl benchmark's percentile (protocol/client/bench.py _latencies): the first latency
    at or past p% of the sorted list."""
    if not sorted_lats:
        return math.nan
    i = min(len(sorted_lats) - 1, math.ceil(p * len(sorted_lats) / 100))
    return sorted_lats[i]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for a prefix (clientv3.GetPrefixRangeEnd)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def leader(targets: list[str], timeout: float = 30.0) -> str:
    """The client target ("host:port") of the member every one of `targets` names leader
    (Maintenance.Status: `leader` is a member id, `header.member_id` the answering one)."""
    import grpc

    import etcd_driver

    pb = etcd_driver.load_pb()
    deadline = time.monotonic() + timeout
    while True:
        ids: dict[int, str] = {}
        leaders = set()
        try:
            for t in targets:
                with etcd_driver.channel(t) as ch:
                    st = pb.grpc.MaintenanceStub(ch).Status(pb.rpc.StatusRequest(), timeout=2.0)
                ids[st.header.member_id] = t
                leaders.add(st.leader)
        except grpc.RpcError:
            leaders = set()
        if len(leaders) == 1:
            lead = leaders.pop()
            if lead in ids:
                return ids[lead]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no leader agreed on by {targets} within {timeout}s")
        time.sleep(0.1)


# -- the worker processes ------------------------------------------------------------------------
def _worker(idx: int, target: str, kind: str, clients: int, total: int, opts: dict[str, Any],
            go: Any, out: Any) -> None:
    try:
        asyncio.run(_work(idx, target, kind, clients, total, opts, go, out))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        out.put(("error", idx, f"{type(exc).__name__}: {exc}"))


async def _work(idx: int, target: str, kind: str, clients: int, total: int, opts: dict[str, Any],
                go: Any, out: Any) -> None:
    import grpc

    import etcd_driver
    from protocol.client.bench import make_key

    pb = etcd_driver.load_pb()
    rng = random.Random(opts.get("seed", 0) * 1000 + idx)
    value = rng.randbytes(VALUE_SIZE)
    prefix: bytes = opts.get("prefix", b"")
    timeout = opts.get("timeout", 10.0)
    async with grpc.aio.insecure_channel(target) as ch:
        await asyncio.wait_for(ch.channel_ready(), 30)
        kv = pb.grpc.KVStub(ch)
        if kind == "range":
            req = pb.rpc.RangeRequest(key=opts["key"], serializable=opts["consistency"] == "s")
            call, make = kv.Range, (lambda: req)
        elif kind == "put":
            if opts.get("sequential"):  # the watch run: keys first..first+total-1 under the prefix
                seq = iter(range(opts["first"], opts["first"] + total))
                call, make = kv.Put, (lambda: pb.rpc.PutRequest(key=prefix + make_key(next(seq), KEY_SIZE),
                                                                value=value))
            else:
                call, make = kv.Put, (lambda: pb.rpc.PutRequest(
                    key=prefix + make_key(rng.randrange(KEY_SPACE), KEY_SIZE), value=value))
        else:
            raise ValueError(f"unknown kind {kind!r}")
        out.put(("ready", idx))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        remaining = total
        lats: list[float] = []
        errors: dict[str, int] = {}
        perf = time.perf_counter

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                request = make()
                t0 = perf()
                try:
                    await call(request, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    msg = f"{exc.code().name}: {exc.details()}"
                    errors[msg] = errors.get(msg, 0) + 1
                    continue
                lats.append(perf() - t0)

        cpu0 = time.process_time()
        start = perf()
        await asyncio.gather(*(client() for _ in range(clients)))
        end = perf()
        cpu = time.process_time() - cpu0
    out.put(("done", idx, start, end, lats, errors, cpu))


def _take(q: Any, procs: list[Any], timeout: float, what: str) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = q.get(timeout=0.2)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError(f"a load process died before {what}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout}s") from None
            continue
        if msg[0] == "error":
            raise RuntimeError(f"load process {msg[1]} failed: {msg[2]}")
        return msg


def run(target: str, kind: str, clients: int, total: int, opts: dict[str, Any]) -> dict[str, Any]:
    """Run one load; the figures as a dict (see the module doc)."""
    ctx = mp.get_context("spawn")
    nprocs = max(1, min(PROCS, clients))
    shares = split(clients, nprocs)
    totals = [total * s // clients for s in shares]  # each process's share of the requests
    totals[0] += total - sum(totals)
    import etcd_driver

    etcd_driver.load_pb()  # an import error shows here, before any process starts
    go, out = ctx.Event(), ctx.Queue()
    procs = []
    first = 0
    for i in range(nprocs):
        o = dict(opts, first=first)
        first += totals[i]
        procs.append(ctx.Process(target=_worker, args=(i, target, "put" if kind == "watch" else kind, shares[i],
                                                        totals[i], o, go, out), daemon=True))
    try:
        for p in procs:
            p.start()
        for _ in procs:
            _take(out, procs, 60, "worker ready")
        watch: dict[str, Any] = {}
        if kind == "watch":
            watch = asyncio.run(_watch(target, opts["prefix"], total, go, out, procs))
            done = watch.pop("done")
        else:
            go.set()
            done = [_take(out, procs, 3600, "result") for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    start = min(d[2] for d in done)
    end = max(d[3] for d in done)
    lats = sorted(x for d in done for x in d[4])
    errors: dict[str, int] = {}
    for d in done:
        for k, v in d[5].items():
            errors[k] = errors.get(k, 0) + v
    secs = end - start
    res: dict[str, Any] = {
        "kind": kind, "clients": clients, "total": total, "processes": nprocs, "ok": len(lats),
        "errors": errors, "seconds": secs, "rps": len(lats) / secs if secs > 0 else 0.0,
        "p50_ms": percentile(lats, 50) * 1000, "p99_ms": percentile(lats, 99) * 1000,
        "avg_ms": (sum(lats) / len(lats) * 1000) if lats else math.nan,
        # CPU seconds of the load generator while the requests ran (every worker process,
        # and this one's watch stream; start-up excluded)
        "cpu_s": sum(d[6] for d in done) + watch.get("cpu_s", 0.0),
    }
    if kind == "watch":
        res["events"] = watch["events"]
        res["missing"] = max(0, len(lats) - watch["events"])
        res["watch_s"] = watch["last_at"] - start if watch["events"] else math.nan
    return res


async def _watch(target: str, prefix: bytes, expected: int, go: Any, out: Any, procs: list[Any],
                 idle_s: float = 5.0) -> dict[str, Any]:
    """The Watch stream, created before the puts start; counts events until it has
    `expected` or none came for `idle_s` once the puts are over."""
    import grpc

    import etcd_driver
    from protocol.client.bench import WatchTally

    pb = etcd_driver.load_pb()
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(target) as ch:
        stream = pb.grpc.WatchStub(ch).Watch()
        await stream.write(pb.rpc.WatchRequest(create_request=pb.rpc.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix))))
        first = await asyncio.wait_for(stream.read(), 30)
        if not first.created:
            raise RuntimeError(f"the watch was not created: {first}")
        cpu0 = time.process_time()
        go.set()
        results = loop.run_in_executor(None, lambda: [_take(out, procs, 3600, "result") for _ in procs])
        tally = WatchTally(expected)
        perf = time.perf_counter
        while not tally.done:
            try:
                resp = await asyncio.wait_for(stream.read(), idle_s)
            except asyncio.TimeoutError:
                if results.done():
                    break
                continue
            if resp is grpc.aio.EOF or resp.canceled:
                break
            tally.add(len(resp.events), perf())
        stream.cancel()
        done = await results
        cpu = time.process_time() - cpu0
    return {"events": tally.events, "last_at": tally.last_at, "done": done, "cpu_s": cpu}


def report(res: dict[str, Any], target: str, name: str = "etcd") -> str:
    s = (f"{name} {res['kind']} at {target}: {res['clients']} clients over {res['processes']} processes "
         f"(grpc.aio, one channel each), {res['ok']} ok in {res['seconds']:.3f}s: {res['rps']:,.1f} requests/s, "
         f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, avg {res['avg_ms']:.2f} ms; "
         f"load generator CPU {res['cpu_s']:.2f}s")
    if res["errors"]:
        s += "\n  errors: " + ", ".join(f"[{n}] {m}" for m, n in res["errors"].items())
    if res["kind"] == "watch":
        s += (f"\n  watch: {res['events']} events, {res['missing']} missing, {res['watch_s']:.3f}s from the first "
              f"put sent to the watcher's last event")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="host:port of the member to drive (a cluster: the leader)")
    ap.add_argument("kind", choices=["put", "range", "watch"])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--total", type=int, default=10_000)
    ap.add_argument("--consistency", choices=["l", "s"], default="l")
    ap.add_argument("--key", default="foo", help="range: the key read")
    ap.add_argument("--prefix", default="/etcd-bench-watch/", help="watch: the watched prefix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="etcd", help="the system driven, for the report")
    a = ap.parse_args(argv)
    if a.clients < 1 or a.total < 1:
        ap.error("--clients and --total must be >= 1")
    # a SIGTERM ends the run through the finally blocks (the worker processes are terminated)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    opts = {"key": a.key.encode(), "consistency": a.consistency, "seed": a.seed,
            "prefix": a.prefix.encode() if a.kind == "watch" else b"", "sequential": a.kind == "watch"}
    res = run(a.endpoint, a.kind, a.clients, a.total, opts)
    print(report(res, a.endpoint, a.name))
    print("RESULT " + json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
