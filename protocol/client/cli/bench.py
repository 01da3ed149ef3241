"""``benchmark put|range|txn-put`` (etcd's tools/benchmark; the runner is
protocol/client/bench.py). ``--clients``, ``--total`` and ``--duration`` may be given
before the subcommand (as etcd's benchmark takes them) or after it."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR, CliError, Globals, arg, client, errors, globals_of,
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
