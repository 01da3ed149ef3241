"""``benchmark put|range|txn-put|watch`` (etcd's tools/benchmark; the runner is
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
    report_cpu: bool = False


@benchmark_app.callback()
def _bench_root(
    ctx: typer.Context,
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent logical clients"),
    total: Optional[int] = typer.Option(None, "--total", help="total number of requests"),
    duration: Optional[float] = typer.Option(None, "--duration", help="run for this many seconds"),
    report_cpu: bool = typer.Option(False, "--report-cpu", hidden=True,
                                    help="also print the benchmark's own CPU seconds while it ran "
                                         "(make bench-compare)"),
) -> None:
    ctx.obj = _BenchCommon(clients, total, duration, report_cpu)


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
        if common.report_cpu:
            sys.stdout.write(f"  Client CPU:\t{result.cpu_s:.4f} secs.\n")
            sys.stdout.flush()
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


@benchmark_app.command("watch")
def bench_watch(
    ctx: typer.Context,
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent logical clients putting (default 64)"),
    total: Optional[int] = typer.Option(None, "--total", help="puts, so events the watcher must get (default 10000)"),
    prefix: str = typer.Option("/qkv-bench-watch/", "--prefix", help="the watched prefix the puts go under"),
    key_size: int = typer.Option(8, "--key-size", help="key size of put request (after the prefix)"),
    val_size: int = typer.Option(256, "--val-size", help="value size of put request"),
) -> None:
    """Benchmark watch delivery: one watcher on a prefix (a process of its own), then --total
    puts under it from --clients clients; the time from the first put sent until the watcher
    has had every event."""
    from protocol.client import bench
    from protocol.client.client import normalize_endpoint

    g = globals_of(ctx)
    common = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, _BenchCommon) \
        else _BenchCommon()
    with errors():
        clients = clients or common.clients or 64
        total = total if total is not None else (common.total if common.total is not None else 10_000)
        if total < 1 or clients < 1:
            raise CliError("--total and --clients must be >= 1", EXIT_BAD_ARGS)
        if common.duration is not None:
            raise CliError("benchmark watch takes --total, not --duration", EXIT_BAD_ARGS)
        key = arg(prefix)
        if not key:
            raise CliError("--prefix must not be empty", EXIT_BAD_ARGS)
        curve, token = _bench_credentials(g)
        cfg = bench.BenchConfig(kind="put", endpoints=[normalize_endpoint(e) for e in g.endpoints],
                                clients=clients, total=total, key_size=key_size, val_size=val_size,
                                key_space_size=total, sequential_keys=True, key_prefix=key,
                                timeout_s=g.command_timeout_s, curve=curve, token=token)
        bar = bench.ProgressBar(sys.stderr)
        result = bench.run_watch(cfg, g.client_options(), progress=bar)
        bar.finish()
        sys.stdout.write(bench.format_watch_report(result))
        if common.report_cpu:
            sys.stdout.write(f"  Client CPU:\t{result.puts.cpu_s + result.watcher_cpu_s:.4f} secs "
                             f"(puts {result.puts.cpu_s:.4f}, watcher {result.watcher_cpu_s:.4f}).\n")
        sys.stdout.flush()
        if not result.acknowledged:
            raise CliError(f"all {result.puts.error_count} puts failed", EXIT_ERROR)
        if result.missing:
            raise CliError(f"the watcher missed {result.missing} events", EXIT_ERROR)


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


def run_perf(endpoints: list[str], load: PerfLoad, prefix: bytes, timeout_s: float,
             curve: Curve | None = None, token: str | None = None,
             progress: Any = None, total: Optional[int] = None, key_size: int = PERF_KEY_SIZE,
             value_size: int = PERF_VALUE_SIZE) -> PerfResult:
    """Puts of etcdctl's keys (the prefix, then binary.PutVarint(random int63) in a
    `key_size`-byte buffer) at `load.limit` per second from `load.clients` logical clients for
    `load.duration_s`; with `total`, that many puts as fast as the clients go (check
    datascale). `qkvctl benchmark`'s runner (protocol/client/bench.py) does the work;
    `progress(done, of)` gets seconds of the duration, or puts of `total`."""
    from protocol.client.bench import BenchConfig, run

    cfg = BenchConfig("put", endpoints, clients=load.clients, total=total,
                      duration_s=None if total is not None else load.duration_s, key_size=key_size,
                      val_size=value_size, key_space_size=2**63 - 1, timeout_s=timeout_s, curve=curve, token=token,
                      rate=None if total is not None else load.limit, key_prefix=prefix)

    def report(done: int, _total: Optional[int], elapsed_s: float) -> None:
        if progress is not None:
            if total is None:
                progress(min(load.duration_s, elapsed_s), load.duration_s)
            else:
                progress(done, total)

    result = run(cfg, report)
    return PerfResult(result.latencies_s, result.errors, result.last_reply_s)


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
