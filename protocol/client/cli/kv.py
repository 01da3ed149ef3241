"""KV commands: ``put``, ``get``, ``del``, ``txn``, ``compaction`` (etcdctl's
put_command.go, get_command.go, del_command.go, txn_command.go, compaction_command.go).

The argument checks of get/del/put are txnparse's (``parse_get``, ``parse_del``,
``check_put_args``), the same ones a txn request line goes through.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, CliError, arg, client, errors, globals_of, printer,
)


def put_cmd(
    ctx: typer.Context,
    key: Optional[str] = typer.Argument(None),
    value: Optional[str] = typer.Argument(None, help="the value (read from stdin if omitted)"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="return the previous key-value pair"),
    ignore_value: bool = typer.Option(False, "--ignore-value", help="update with current value"),
    ignore_lease: bool = typer.Option(False, "--ignore-lease", help="update with current lease"),
    lease: str = typer.Option("0", "--lease", help="lease ID (in hexadecimal) to attach"),
) -> None:
    """Puts the given key into the store."""
    from protocol.client.txnparse import check_put_args, parse_lease

    g = globals_of(ctx)
    with errors():
        if key is None:
            check_put_args(0, ignore_value)
            return
        data = b""
        if value is not None:
            check_put_args(2, ignore_value)
            data = arg(value)
        elif not ignore_value:
            data = _read_stdin()
            check_put_args(2 if data else 1, ignore_value)
        lease_id = parse_lease(lease)
        p = printer(g)
        with client(g) as c:
            resp = c.put(arg(key), data, lease=lease_id, prev_kv=prev_kv,
                         ignore_value=ignore_value, ignore_lease=ignore_lease)
        p.put(resp)


def _read_stdin() -> bytes:
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    if stdin is None:
        return b""
    data = stdin.read()
    return data.encode() if isinstance(data, str) else bytes(data)


def get_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    consistency: str = typer.Option("l", "--consistency", help="Linearizable(l) or Serializable(s)"),
    from_key: bool = typer.Option(False, "--from-key",
                                  help="Get keys that are greater than or equal to the given key"),
    keys_only: bool = typer.Option(False, "--keys-only", help="Get only the keys"),
    count_only: bool = typer.Option(False, "--count-only", help="Get only the count"),
    limit: int = typer.Option(0, "--limit", help="Maximum number of results"),
    order: str = typer.Option("", "--order", help="Order of results; ASCEND or DESCEND"),
    prefix: bool = typer.Option(False, "--prefix", help="Get keys with matching prefix"),
    print_value_only: bool = typer.Option(False, "--print-value-only",
                                          help='Only write values when using the "simple" output format'),
    rev: int = typer.Option(0, "--rev", help="Specify the kv revision"),
    sort_by: str = typer.Option("", "--sort-by",
                                help="Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION"),
) -> None:
    """Gets the key or a range of keys."""
    from protocol.client.txnparse import parse_get

    g = globals_of(ctx)
    with errors():
        req = parse_get(args or [], prefix=prefix, from_key=from_key, consistency=consistency,
                        order=order, sort_by=sort_by, limit=limit, rev=rev, keys_only=keys_only,
                        count_only=count_only)
        if count_only and g.write_out not in ("fields", "json"):
            raise CliError("--count-only is only for `--write-out=fields`", EXIT_BAD_ARGS)
        if print_value_only and g.write_out != "simple":
            raise CliError("print-value-only is only for `--write-out=simple`", EXIT_BAD_ARGS)
        p = printer(g, value_only=print_value_only)
        p.need("simple", "json", "fields")
        with client(g) as c:
            resp = req.run(c)
        p.get(resp)


def del_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    prefix: bool = typer.Option(False, "--prefix", help="delete keys with matching prefix"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="return deleted key-value pairs"),
    from_key: bool = typer.Option(False, "--from-key",
                                  help="delete keys that are greater than or equal to the given key"),
) -> None:
    """Removes the specified key or range of keys [key, range_end)."""
    from protocol.client.txnparse import parse_del

    g = globals_of(ctx)
    with errors():
        req = parse_del(args or [], prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        p = printer(g)
        p.need("simple", "json", "fields")
        with client(g) as c:
            resp = req.run(c)
        p.delete(resp)


def txn_cmd(
    ctx: typer.Context,
    interactive: bool = typer.Option(False, "-i", "--interactive",
                                     help="Input transaction in interactive mode"),
) -> None:
    """Txn processes all the requests in one transaction (read from stdin)."""
    from protocol.client.txnparse import parse_txn

    g = globals_of(ctx)
    with errors():
        p = printer(g)
        p.need("simple", "json", "fields")

        def prompt(title: str) -> None:
            sys.stdout.write(title + "\n")
            sys.stdout.flush()

        compares, success, failure = parse_txn(sys.stdin, prompt if interactive else None)
        with client(g) as c:
            resp = c.txn(compares, success, failure)
        p.txn(resp)


def compaction_cmd(
    ctx: typer.Context,
    revision: Optional[str] = typer.Argument(None, metavar="<revision>"),
    physical: bool = typer.Option(False, "--physical",
                                  help="'true' to wait for compaction to physically remove all old revisions"),
) -> None:
    """Compacts the event history in the store."""
    g = globals_of(ctx)
    with errors():
        if revision is None:
            raise CliError("compaction command needs 1 argument", EXIT_BAD_ARGS)
        try:
            rev = int(revision)
        except ValueError:
            raise CliError(f'strconv.ParseInt: parsing "{revision}": invalid syntax') from None
        p = printer(g)
        with client(g) as c:
            c.compact(rev, physical=physical)
        p.compact(rev)

