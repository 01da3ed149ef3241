"""``watch`` (etcdctl's watch_command.go, non-interactive mode)."""
from __future__ import annotations

import sys
from typing import Optional

import typer

from protocol.client.cli.common import (EXIT_BAD_ARGS, EXIT_INTERRUPTED, CliError, arg, client, errors, globals_of, printer,
                                        stop_on_signal)

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
        p.need("simple", "json", "fields")
        with client(g) as c, stop_on_signal() as stop:
            with c.watch(key, range_end, prefix=prefix, start_revision=max(0, rev), prev_kv=prev_kv,
                         progress_notify=progress_notify) as watcher:
                while not stop.is_set():
                    resp = watcher.get(timeout=0.2)
                    if resp is None:
                        continue
                    if resp.canceled:
                        sys.stderr.write(f"watch was canceled ({resp.cancel_reason})\n")
                        sys.stderr.flush()
                        break
                    p.watch(resp)
        if stop.is_set():
            raise typer.Exit(EXIT_INTERRUPTED)  # as a Ctrl-C always ended it
        raise CliError("watch is canceled by the server", EXIT_WATCH_CANCELED)
