"""``watch`` (etcdctl's watch_command.go, non-interactive mode)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

import typer

from protocol.client.cli.common import EXIT_BAD_ARGS, CliError, arg, client, errors, globals_of, printer

if TYPE_CHECKING:
    from protocol.client.output import Printer
    from protocol.client.watch import WatchResponse

EXIT_WATCH_CANCELED = 5


def watch_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    prefix: bool = typer.Option(False, "--prefix", help="Watch on a prefix if prefix is set"),
    rev: int = typer.Option(0, "--rev", help="Revision to start watching"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="get the previous key-value pair before the event happens"),
    progress_notify: bool = typer.Option(False, "--progress-notify", help="get periodic watch progress notification from server"),
) -> None:
    """Watches events stream on keys or prefixes (until Ctrl-C)."""
    g = globals_of(ctx)
    with errors():
        args = args or []
        if not args:
            raise CliError("watch in non-interactive mode requires at least one argument", EXIT_BAD_ARGS)
        if len(args) > 2:
            raise CliError("too many arguments", EXIT_BAD_ARGS)
        if prefix and len(args) > 1:
            raise CliError("`--prefix` cannot be set with range_end", EXIT_BAD_ARGS)
        key, range_end = arg(args[0]), (arg(args[1]) if len(args) > 1 else None)
        p = printer(g)
        p._need("simple", "json", "fields")
        with client(g) as c:
            with c.watch(key, range_end, prefix=prefix, start_revision=max(0, rev), prev_kv=prev_kv,
                         progress_notify=progress_notify) as watcher:
                for resp in watcher:
                    if resp.canceled:
                        sys.stderr.write(f"watch was canceled ({resp.cancel_reason})\n")
                        sys.stderr.flush()
                        break
                    print_watch(p, resp)
        raise CliError("watch is canceled by the server", EXIT_WATCH_CANCELED)


def print_watch(p: Printer, resp: WatchResponse) -> None:
    """etcdctl 3.4's watch output for one response."""
    from protocol.client.output import dumps, header_json, kv_json

    if resp.progress_notify:
        p.out.write(b"progress notify: %d\n" % resp.revision)
    if p.fmt == "json":
        events = []
        for e in resp.events:
            ev: dict[str, Any] = {}
            if e.type == "DELETE":
                ev["type"] = 1
            ev["kv"] = kv_json(e.kv)
            if e.prev_kv is not None:
                ev["prev_kv"] = kv_json(e.prev_kv)
            events.append(ev)
        p._line(dumps({"Header": header_json(resp.header), "Events": events,
                       "CompactRevision": resp.compact_revision, "Canceled": resp.canceled,
                       "Created": False}))
    elif p.fmt == "fields":
        p._hdr_fields(resp.header)
        for e in resp.events:
            p._line(f'"Type" : {e.type}')
            if e.prev_kv is not None:
                p._kv_fields(e.prev_kv, "Prev")
            p._kv_fields(e.kv)
    else:
        for e in resp.events:
            p._line(e.type)
            if e.prev_kv is not None:
                p._kv_simple(e.prev_kv)
            p._kv_simple(e.kv)
    p.out.flush()
