"""``benchmark put|range|txn-put`` (etcd's tools/benchmark; the runner is
protocol/client/bench.py). ``--clients``, ``--total`` and ``--duration`` may be given
before the subcommand (as etcd's benchmark takes them) or after it."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR, EXIT_INVALID_INPUT, CliError, Globals, arg, client, errors,
    globals_of, say,
)

benchmark_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="Benchmark the server (etcd tools/benchmark style)")

Curve = tuple[bytes, bytes, bytes]


@dataclass
class _BenchCommon:
    clients: Optional[int] = None
    total: Optional[int] = None
    duration: Optional[float] = None


@benchmark_app.callback()
def _bench_root(
    ctx: typer.Context,
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent logical clients"),
    total: Optional[int] = typer.Option(None, "--total", help="total number of requests"),
    duration: Optional[float] = typer.Option(None, "--duration", help="run for this many seconds"),
) -> None:
    ctx.obj = _BenchCommon(clients, total, duration)


def _bench(ctx: typer.Context, kind: str, clients: Optional[int], total: Optional[int],
           duration: Optional[float], **kw: Any) -> None:
    from protocol.client import bench
    from protocol.client.client import normalize_endpoint

    g = globals_of(ctx)
    common = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, _BenchCommon) \
        else _BenchCommon()
    with errors():
        clients = clients or common.clients or 1
        total = total if total is not None else common.total
        duration = duration if duration is not None else common.duration
        if total is not None and total < 1:
            raise CliError("--total must be >= 1", EXIT_BAD_ARGS)
        if duration is not None and duration <= 0:
            raise CliError("--duration must be > 0", EXIT_BAD_ARGS)
        if total is None and duration is None:
            total = 10_000
        if kw.get("consistency", "l") not in ("l", "s"):
            raise CliError(f'unknown consistency flag "{kw["consistency"]}"', EXIT_BAD_FEATURE)
        if clients < 1 or kw.get("key_space_size", 1) < 1:
            raise CliError("--clients and --key-space-size must be >= 1", EXIT_BAD_ARGS)
        curve, token = _bench_credentials(g)
        cfg = bench.BenchConfig(kind=kind, endpoints=[normalize_endpoint(e) for e in g.endpoints],
                                clients=clients, total=total, duration_s=duration,
                                timeout_s=g.command_timeout_s, curve=curve, token=token, **kw)
        result = bench.main(cfg, sys.stdout, sys.stderr)
        if result.error_count and not result.latencies_s:
            raise CliError(f"all {result.error_count} requests failed", EXIT_ERROR)


def _bench_credentials(g: Globals) -> tuple[Curve | None, str | None]:
    """The global --server-key/--key-file/--user as the benchmark's raw sockets need them:
    a CURVE setup and one token (authenticated once, as etcd's benchmark does)."""
    options = g.client_options()
    if not options["server_key"] and not options["user"]:
        return None, None
    with client(g) as c:
        sec = c._security
        token = sec.token(c)[0] if options["user"] else None
        curve: Curve | None = None
        if sec.curve:
            assert sec.public is not None and sec.secret is not None and sec.server_key is not None
            curve = (sec.public, sec.secret, sec.server_key)
    return curve, token or None


_CLIENTS = typer.Option(None, "--clients", help="concurrent logical clients (default 1)")
_TOTAL = typer.Option(None, "--total", help="total number of requests (default 10000)")
_DURATION = typer.Option(None, "--duration", help="run for this many seconds instead of --total")


@benchmark_app.command("put")
def bench_put(
    ctx: typer.Context,
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    key_size: int = typer.Option(8, "--key-size", help="key size of put request"),
    val_size: int = typer.Option(256, "--val-size", help="value size of put request"),
    key_space_size: int = typer.Option(1, "--key-space-size", help="maximum possible keys"),
    sequential_keys: bool = typer.Option(False, "--sequential-keys",
                                         help="use sequential keys from 0 to key-space-size-1"),
) -> None:
    """Benchmark put."""
    _bench(ctx, "put", clients, total, duration, key_size=key_size, val_size=val_size,
           key_space_size=key_space_size, sequential_keys=sequential_keys)


@benchmark_app.command("range")
def bench_range(
    ctx: typer.Context,
    key: str = typer.Argument(..., metavar="<key>"),
    range_end: Optional[str] = typer.Argument(None, metavar="[end-range]"),
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    consistency: str = typer.Option("l", "--consistency", help="Linearizable(l) or Serializable(s)"),
) -> None:
    """Benchmark range."""
    _bench(ctx, "range", clients, total, duration, key=arg(key),
           range_end=arg(range_end) if range_end else b"", consistency=consistency)


@benchmark_app.command("txn-put")
def bench_txn_put(
    ctx: typer.Context,
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    key_size: int = typer.Option(8, "--key-size", help="key size of txn put"),
    val_size: int = typer.Option(256, "--val-size", help="value size of txn put"),
    key_space_size: int = typer.Option(1, "--key-space-size", help="maximum possible keys"),
    txn_ops: int = typer.Option(1, "--txn-ops", help="number of puts per txn"),
) -> None:
    """Benchmark put through txn."""
    _bench(ctx, "txn-put", clients, total, duration, key_size=key_size, val_size=val_size,
           key_space_size=key_space_size, txn_ops=txn_ops, sequential_keys=True)


# -- check perf (etcdctl's check.go) ----------------------------------------------------------
check_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="commands for checking properties of the quorumkv cluster")


@dataclass(frozen=True)
class PerfLoad:
    limit: int      # writes per second asked for
    clients: int    # concurrent logical clients
    duration_s: float


# etcdctl 3.4's workloads, and their aliases.
PERF_LOADS = {"s": PerfLoad(150, 50, 60), "m": PerfLoad(1000, 200, 60), "l": PerfLoad(8000, 500, 60),
              "xl": PerfLoad(15000, 1000, 60)}
LOAD_ALIASES = {"s": "s", "small": "s", "m": "m", "medium": "m", "l": "l", "large": "l", "xl": "xl",
                "xLarge": "xl"}
PERF_KEY_SIZE, PERF_VALUE_SIZE = 256, 1024


@dataclass
class PerfResult:
    latencies_s: list[float]
    errors: dict[str, int]
    total_s: float

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.total_s if self.total_s > 0 else 0.0

    @property
    def slowest_s(self) -> float:
        return max(self.latencies_s, default=0.0)

    @property
    def stddev_s(self) -> float:
        lats = self.latencies_s
        if not lats:
            return 0.0
        avg = sum(lats) / len(lats)
        return float((sum((x - avg) ** 2 for x in lats) / len(lats)) ** 0.5)


def perf_verdict(result: PerfResult, limit: int) -> tuple[list[str], bool]:
    """etcdctl's verdict lines for a check perf run, and whether it passed (check.go)."""
    lines: list[str] = []
    ok = True
    if result.errors:
        lines.append("FAIL: too many errors")
        lines += [f"FAIL: ERROR({msg}) -> {n}" for msg, n in result.errors.items()]
        ok = False
    if result.rps / limit <= 0.9:
        lines.append(f"FAIL: Throughput too low: {int(result.rps) + 1} writes/s")
        ok = False
    else:
        lines.append(f"PASS: Throughput is {int(result.rps) + 1} writes/s")
    if result.slowest_s > 0.5:
        lines.append(f"Slowest request took too long: {result.slowest_s:f}s")
        ok = False
    else:
        lines.append(f"PASS: Slowest request took {result.slowest_s:f}s")
    if result.stddev_s > 0.1:
        lines.append(f"Stddev too high: {result.stddev_s:f}s")
        ok = False
    else:
        lines.append(f"PASS: Stddev is {result.stddev_s:f}s")
    lines.append("PASS" if ok else "FAIL")
    return lines, ok


def perf_key(prefix: bytes, rng: Any, size: int = PERF_KEY_SIZE) -> bytes:
    """etcdctl's key: the prefix, then binary.PutVarint(random int63) in a `size`-byte buffer."""
    from protocol.client.bench import make_key

    return prefix + make_key(rng.randrange(2**63 - 1), size)


def run_perf(endpoints: list[str], load: PerfLoad, prefix: bytes, timeout_s: float,
             curve: Curve | None = None, token: str | None = None,
             progress: Any = None, total: Optional[int] = None, key_size: int = PERF_KEY_SIZE,
             value_size: int = PERF_VALUE_SIZE) -> PerfResult:
    """Puts at `load.limit` per second from `load.clients` logical clients (one DEALER each,
    one request in flight each, all under one poller) for `load.duration_s`; with `total`,
    that many puts as fast as the clients go (check datascale). A request with no reply
    within `timeout_s` counts as an error and its socket is recreated."""
    import random
    import time

    import zmq

    from protocol.client.bench import _PACK, _frame
    from protocol.codec import unpack
    from protocol.errors import QkvError

    rng = random.Random()
    value = b"\x00" * value_size
    tail = _PACK.pack("value") + _PACK.pack(value)
    head = _PACK.pack("op") + _PACK.pack("put") + _PACK.pack("key")
    token_pair = (_PACK.pack("token") + _PACK.pack(token)) if token else b""
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks: dict[zmq.Socket, int] = {}  # socket -> client index
    rid = [0] * load.clients
    sent_at = [0.0] * load.clients
    sock_of: list[Optional[zmq.Socket]] = [None] * load.clients
    idle = list(range(load.clients))
    waiting = [False] * load.clients  # a request in flight
    lats: list[float] = []
    errors: dict[str, int] = {}
    next_rid = rng.getrandbits(32) + 1

    def new_socket(i: int) -> None:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
        s.connect(endpoints[i % len(endpoints)])
        poller.register(s, zmq.POLLIN)
        socks[s] = i
        sock_of[i] = s

    def fail(msg: str) -> None:
        errors[msg] = errors.get(msg, 0) + 1

    perf = time.perf_counter
    try:
        for i in range(load.clients):
            new_socket(i)
        start = perf()
        end_at = start + load.duration_s if total is None else float("inf")
        interval = 1.0 / load.limit if total is None else 0.0
        issued = 0
        next_token = start
        first_start: Optional[float] = None
        last_end = start
        next_tick = start + 1.0
        busy = 0
        while True:
            now = perf()
            # issue: one request per token (rate.Limiter with a burst of 1), on an idle client
            while idle and now < end_at and next_token <= now and (total is None or issued < total):
                issued += 1
                i = idle.pop()
                waiting[i] = True
                next_rid += 1
                rid[i] = next_rid
                sent_at[i] = perf()
                first_start = sent_at[i] if first_start is None else first_start
                s = sock_of[i]
                assert s is not None
                s.send(_frame(next_rid, 3 + (1 if token else 0),
                              head + _PACK.pack(perf_key(prefix, rng, key_size)) + tail + token_pair), copy=False)
                busy += 1
                next_token = max(next_token + interval, now - interval)
            if busy == 0 and (now >= end_at or (total is not None and issued >= total)):
                break
            done_issuing = now >= end_at or (total is not None and issued >= total)
            wait = 0.1 if done_issuing or not idle else max(0.0, min(0.1, next_token - now))
            for s, _ in poller.poll(int(wait * 1000)):
                i = socks[s]
                while True:
                    try:
                        frame = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = perf()
                    try:
                        reply = unpack(frame)
                    except QkvError as exc:
                        fail(f"undecodable reply: {exc.message}")
                        continue
                    if not isinstance(reply, dict) or reply.get("id") != rid[i] or not waiting[i]:
                        continue  # a late reply to a request already counted
                    if reply.get("ok") is True:
                        lats.append(t - sent_at[i])
                    else:
                        fail(QkvError.from_wire(reply.get("error")).message)
                    last_end = t
                    waiting[i] = False
                    idle.append(i)
                    busy -= 1
            now = perf()
            for i in range(load.clients):
                if waiting[i] and now - sent_at[i] > timeout_s:
                    fail(f"timeout: no reply within {timeout_s:g}s")
                    s = sock_of[i]
                    assert s is not None
                    poller.unregister(s)
                    del socks[s]
                    s.close(linger=0)
                    new_socket(i)
                    waiting[i] = False
                    idle.append(i)
                    busy -= 1
                    last_end = now
            if progress is not None and now >= next_tick:
                next_tick += 1.0
                if total is None:
                    progress(min(load.duration_s, now - start), load.duration_s)
                else:
                    progress(issued - busy, total)
        return PerfResult(lats, errors, last_end - first_start if first_start is not None else 0.0)
    finally:
        for s in list(socks):
            s.close(linger=0)
        ctx.term()


@check_app.command("perf")
def check_perf_cmd(
    ctx: typer.Context,
    load: str = typer.Option("s", "--load", help="The performance check's workload model. Accepted workloads: "
                                                 "s(small), m(medium), l(large), xl(xLarge)"),
    prefix: str = typer.Option("/etcdctl-check-perf/", "--prefix",
                               help="The prefix for writing the performance check's keys."),
    auto_compact: bool = typer.Option(False, "--auto-compact",
                                      help="Compact storage with last revision after test is finished."),
    auto_defrag: bool = typer.Option(False, "--auto-defrag", help="Defragment storage after test is finished."),
    duration: float = typer.Option(0.0, "--duration", hidden=True,
                                   help="tests only: seconds instead of the load's 60"),
) -> None:
    """Check the performance of the quorumkv cluster"""
    import dataclasses
    import json

    from protocol.client.bench import ProgressBar
    from protocol.client.client import normalize_endpoint

    g = globals_of(ctx)
    with errors():
        model = LOAD_ALIASES.get(load)
        if model is None:
            raise CliError(f"unknown load option {load}", EXIT_BAD_FEATURE)
        cfg = PERF_LOADS[model]
        if duration > 0:
            cfg = dataclasses.replace(cfg, duration_s=duration)
        key = arg(prefix)
        with client(g) as c:
            if c.get(key, prefix=True, limit=1).kvs:
                raise CliError(f"prefix {json.dumps(prefix)} has keys. Delete with qkvctl del --prefix {prefix} first",
                               EXIT_INVALID_INPUT)
        curve, token = _bench_credentials(g)
        bar = ProgressBar(sys.stderr)
        result = run_perf([normalize_endpoint(e) for e in g.endpoints], cfg, key, max(g.command_timeout_s, 1.0),
                          curve, token, progress=lambda done, total: bar(int(done), int(total), done))
        bar.finish()
        with client(g) as c:
            c.timeout = 30.0
            dresp = c.delete(key, prefix=True)
            if auto_compact:  # etcdctl's util.go compact(): physical, 30 s
                rev = dresp.header.revision
                say(f"Compacting with revision {rev}")
                c.compact(rev, physical=True)
                say(f"Compacted with revision {rev}")
        if auto_defrag:  # etcdctl's util.go defrag()
            for ep in g.endpoints:
                say(f"Defragmenting {json.dumps(ep)}")
                with client(g, [ep]) as c:
                    c.timeout = 30.0
                    c.defragment()
                say(f"Defragmented {json.dumps(ep)}")
        lines, ok = perf_verdict(result, cfg.limit)
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        if not ok:
            raise typer.Exit(EXIT_ERROR)


# -- check datascale (etcdctl's check.go) -------------------------------------------------------
@dataclass(frozen=True)
class DatascaleLoad:
    limit: int    # keys written
    kv_size: int  # bytes per key-value (512-byte key, 512-byte value)
    clients: int


DATASCALE_LOADS = {"s": DatascaleLoad(10_000, 1024, 50), "m": DatascaleLoad(100_000, 1024, 200),
                   "l": DatascaleLoad(1_000_000, 1024, 500), "xl": DatascaleLoad(3_000_000, 1024, 1000)}
METRICS_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_METRICS_PORT = 7382  # qkv --listen-metrics-urls' default port


def resident_bytes(metrics_text: str) -> float:
    """The sum of every `process_resident_memory_bytes` sample of a Prometheus text page
    (a node is several processes); 0 when there is none."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("process_resident_memory_bytes"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name == "process_resident_memory_bytes":
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    continue
    return total


def metrics_url_for(endpoint: str) -> str:
    """The node's metrics page when --metrics-url is not given: the endpoint's host, the
    default metrics port (etcd serves /metrics on its client port; a node has its own)."""
    from urllib.parse import urlsplit

    from protocol.client.client import normalize_endpoint

    host = urlsplit(normalize_endpoint(endpoint)).hostname or "127.0.0.1"
    return f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"


def endpoint_memory(url: str, timeout_s: float) -> float:
    """etcdctl's endpointMemoryMetrics: process_resident_memory_bytes, 0 when unreadable."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - an http URL the user gave
            text = resp.read(METRICS_MAX_BYTES).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fetching metrics from {url} failed: {exc}\n")
        return 0.0
    return resident_bytes(text)


@check_app.command("datascale")
def check_datascale_cmd(
    ctx: typer.Context,
    load: str = typer.Option("s", "--load", help="The datascale check's workload model. Accepted workloads: "
                                                 "s(small), m(medium), l(large), xl(xLarge)"),
    prefix: str = typer.Option("/etcdctl-check-datascale/", "--prefix",
                               help="The prefix for writing the datascale check's keys."),
    auto_compact: bool = typer.Option(False, "--auto-compact",
                                      help="Compact storage with last revision after test is finished."),
    auto_defrag: bool = typer.Option(False, "--auto-defrag", help="Defragment storage after test is finished."),
    metrics_url: str = typer.Option("", "--metrics-url",
                                    help="the node's metrics page (qkv --listen-metrics-urls) [default: "
                                         "http://<first endpoint's host>:7382/metrics]"),
    keys: int = typer.Option(0, "--keys", hidden=True, help="tests only: this many keys instead of the load's"),
) -> None:
    """Check the memory usage of holding data for different workloads on a given server endpoint.
    If multiple endpoints are provided, first endpoint will be used."""
    import dataclasses
    import json

    from protocol.client.bench import ProgressBar
    from protocol.client.client import normalize_endpoint

    g = globals_of(ctx)
    with errors():
        model = LOAD_ALIASES.get(load)
        if model is None:
            raise CliError(f"unknown load option {load}", EXIT_BAD_FEATURE)
        cfg = DATASCALE_LOADS[model]
        if keys > 0:
            cfg = dataclasses.replace(cfg, limit=keys)
        key = arg(prefix)
        first = g.endpoints[0]
        with client(g, [first]) as c:
            if c.get(key, prefix=True, limit=1).kvs:
                raise CliError(f"prefix {json.dumps(prefix)} has keys. Delete with qkvctl del --prefix {prefix} first",
                               EXIT_INVALID_INPUT)
        url = metrics_url or metrics_url_for(first)
        before = endpoint_memory(url, g.command_timeout_s)
        if before == 0:
            say("FAIL: Could not read process_resident_memory_bytes before the put operations.")
            raise typer.Exit(EXIT_ERROR)
        say(f"Start data scale check for work load [{cfg.limit} key-value pairs, {cfg.kv_size} bytes per "
            f"key-value, {cfg.clients} concurrent clients].")
        curve, token = _bench_credentials(g)
        bar = ProgressBar(sys.stderr)
        result = run_perf([normalize_endpoint(first)], PerfLoad(1, cfg.clients, 0), key,
                          max(g.command_timeout_s, 1.0), curve, token,
                          progress=lambda done, total: bar(int(done), int(total), 0.0),
                          total=cfg.limit, key_size=cfg.kv_size // 2, value_size=cfg.kv_size // 2)
        bar.finish()
        after = endpoint_memory(url, g.command_timeout_s)
        if after == 0:
            say("FAIL: Could not read process_resident_memory_bytes after the put operations.")
            raise typer.Exit(EXIT_ERROR)
        with client(g, [first]) as c:
            c.timeout = 30.0
            dresp = c.delete(key, prefix=True)
            if auto_compact:
                rev = dresp.header.revision
                say(f"Compacting with revision {rev}")
                c.compact(rev, physical=True)
                say(f"Compacted with revision {rev}")
        if auto_defrag:
            for ep in g.endpoints:
                say(f"Defragmenting {json.dumps(ep)}")
                with client(g, [ep]) as c:
                    c.timeout = 30.0
                    c.defragment()
                say(f"Defragmented {json.dumps(ep)}")
        if result.errors:
            say("FAIL: too many errors")
            for msg, n in result.errors.items():
                say(f"FAIL: ERROR({msg}) -> {n}")
            raise typer.Exit(EXIT_ERROR)
        say(f"PASS: Approximate system memory used : {(after - before) / (1024 * 1024):.2f} MB.")
