"""Lease commands: ``lease grant|revoke|timetolive|list|keep-alive`` (etcdctl's
lease_command.go; its json prints the header's fields flat, beside the lease's)."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional, Union

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, EXIT_BAD_CONNECTION, EXIT_INTERRUPTED, CliError, Globals, client, errors, globals_of, printer,
    say, stop_on_signal,
)

if TYPE_CHECKING:
    from protocol.client.types import ResponseHeader

lease_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Lease related commands")

JsonValue = Union[int, str, list[dict[str, int]], list[str], None]


def _lease_id_arg(text: Optional[str], what: str) -> int:
    if text is None:
        raise CliError(f"lease {what} command needs 1 argument", EXIT_BAD_ARGS)
    try:
        return int(text, 16)
    except ValueError:
        raise CliError(f'bad lease ID arg (strconv.ParseInt: parsing "{text}": invalid syntax), '
                       "expecting ID in Hex", EXIT_BAD_ARGS) from None


def _lease_json(header: ResponseHeader, **fields: JsonValue) -> str:
    from protocol.client.output import dumps

    h = header
    return dumps({"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision,
                  "raft_term": h.raft_term, **fields})


def _lease_fields(header: ResponseHeader, rows: list[tuple[str, Union[int, str]]]) -> None:
    printer(Globals([], 1, "fields", False)).fields(header, rows)


def _need_lease_format(g: Globals) -> None:
    from protocol.client.output import UnsupportedFormat

    if g.write_out not in ("simple", "json", "fields"):
        raise UnsupportedFormat(f"{g.write_out} not supported as output format")


@lease_app.command("grant")
def lease_grant_cmd(ctx: typer.Context, ttl: Optional[str] = typer.Argument(None, metavar="<ttl>")) -> None:
    """Creates leases."""
    g = globals_of(ctx)
    with errors():
        from protocol.errors import QkvError

        if ttl is None:
            raise CliError("lease grant command needs TTL argument", EXIT_BAD_ARGS)
        try:
            seconds = int(ttl)
        except ValueError:
            raise CliError(f'bad TTL (strconv.ParseInt: parsing "{ttl}": invalid syntax)',
                           EXIT_BAD_ARGS) from None
        _need_lease_format(g)
        with client(g) as c:
            try:
                resp = c.lease_grant(seconds)
            except QkvError as exc:
                raise CliError(f"failed to grant lease ({exc.message})") from None
        if g.write_out == "json":
            say(_lease_json(resp.header, ID=resp.id, TTL=resp.ttl, Error=""))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [("ID", resp.id), ("TTL", resp.ttl)])
        else:
            say(f"lease {resp.id:016x} granted with TTL({resp.ttl}s)")


@lease_app.command("revoke")
def lease_revoke_cmd(ctx: typer.Context, lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>")) -> None:
    """Revokes leases."""
    g = globals_of(ctx)
    with errors():
        from protocol.errors import QkvError

        lid = _lease_id_arg(lease_id, "revoke")
        _need_lease_format(g)
        with client(g) as c:
            try:
                resp = c.lease_revoke(lid)
            except QkvError as exc:
                raise CliError(f"failed to revoke lease ({exc.message})") from None
        if g.write_out == "json":
            from protocol.client.output import dumps, header_json

            say(dumps({"header": header_json(resp.header)}))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [])
        else:
            say(f"lease {lid:016x} revoked")


@lease_app.command("timetolive")
def lease_timetolive_cmd(
    ctx: typer.Context,
    lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>"),
    keys: bool = typer.Option(False, "--keys", help="Get keys attached to this lease"),
) -> None:
    """Get lease information."""
    import base64

    from protocol.client.output import go_quote

    g = globals_of(ctx)
    with errors():
        lid = _lease_id_arg(lease_id, "timetolive")
        _need_lease_format(g)
        with client(g) as c:
            resp = c.lease_time_to_live(lid, keys=keys)
        if g.write_out == "json":
            say(_lease_json(resp.header, id=resp.id or lid, ttl=resp.ttl, **{
                "granted-ttl": resp.granted_ttl,
                "keys": [base64.b64encode(k).decode() for k in resp.keys] if resp.keys else None}))
        elif g.write_out == "fields":
            rows: list[tuple[str, Union[int, str]]] = [
                ("ID", resp.id or lid), ("TTL", resp.ttl), ("GrantedTTL", resp.granted_ttl)]
            _lease_fields(resp.header, rows + [("Key", go_quote(k)) for k in resp.keys])
        elif resp.ttl == -1:
            say(f"lease {lid:016x} already expired")
        else:
            text = f"lease {lid:016x} granted with TTL({resp.granted_ttl}s), remaining({resp.ttl}s)"
            if keys:
                names = " ".join(os.fsdecode(k) for k in resp.keys)
                text += f", attached keys([{names}])"
            say(text)


@lease_app.command("list")
def lease_list_cmd(ctx: typer.Context) -> None:
    """List all active leases."""
    g = globals_of(ctx)
    with errors():
        _need_lease_format(g)
        with client(g) as c:
            resp = c.lease_leases()
        if g.write_out == "json":
            say(_lease_json(resp.header, leases=[{"id": lease.id} for lease in resp.leases]))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [("ID", lease.id) for lease in resp.leases])
        else:
            say(f"found {len(resp.leases)} leases")
            for lease in resp.leases:
                say(f"{lease.id:016x}")


def _keepalived(g: Globals, header: ResponseHeader, lid: int, ttl: int) -> None:
    if g.write_out == "json":
        say(_lease_json(header, ID=lid, TTL=ttl))
    elif g.write_out == "fields":
        _lease_fields(header, [("ID", lid), ("TTL", ttl)])
    else:
        say(f"lease {lid:016x} keepalived with TTL({ttl})")


@lease_app.command("keep-alive")
def lease_keepalive_cmd(
    ctx: typer.Context,
    lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>"),
    once: bool = typer.Option(False, "--once", help="Resets the keep-alive time to its original value and exits immediately"),
) -> None:
    """Keeps leases alive (renew), every TTL/3 seconds until Ctrl-C or the lease expires."""
    from protocol.errors import LeaseNotFound, QkvError

    g = globals_of(ctx)
    with errors():
        lid = _lease_id_arg(lease_id, "keep-alive")
        _need_lease_format(g)
        with client(g) as c:
            router = c._lease_router()
            if once:
                try:
                    resp = router.keepalive(lid)
                    if resp.ttl <= 0:
                        raise LeaseNotFound()
                except QkvError as exc:
                    raise CliError(exc.message, EXIT_BAD_CONNECTION) from None
                _keepalived(g, resp.header, lid, resp.ttl)
                return
            deadline: float | None = None
            with stop_on_signal() as stop:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        resp = router.keepalive(lid)
                    except LeaseNotFound:
                        break
                    except QkvError:
                        if deadline is not None and time.monotonic() > deadline:
                            break
                        stop.wait(0.2)
                        continue
                    if resp.ttl <= 0:
                        break
                    deadline = sent + resp.ttl
                    _keepalived(g, resp.header, lid, resp.ttl)
                    stop.wait(max(resp.ttl / 3.0, 0.05))
            if stop.is_set():
                raise typer.Exit(EXIT_INTERRUPTED)  # as a Ctrl-C always ended it
        if g.write_out == "simple":
            say(f"lease {lid:016x} expired or revoked.")
