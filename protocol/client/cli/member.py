"""Membership commands: ``member list|add|remove|update|promote`` and ``move-leader``
(etcdctl's member_command.go, move_leader_command.go)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Union

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, CliError, Globals, client, errors, globals_of, out,
)

if TYPE_CHECKING:
    from protocol.client.types import MemberAddResponse, MemberListResponse

member_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Membership related commands")


@member_app.command("list")
def member_list_cmd(ctx: typer.Context) -> None:
    """Lists all members in the cluster."""
    g = globals_of(ctx)
    with errors():
        from protocol.client.output import dumps, header_json, render_table

        with client(g) as c:
            resp = c.member_list()
        rows = [[f"{m.id:x}", "started" if m.client_urls else "unstarted", m.name, ",".join(m.peer_urls),
                 ",".join(m.client_urls), str(m.is_learner).lower()] for m in resp.members]
        if g.write_out == "json":
            out().write((dumps({"header": header_json(resp.header), "members": [
                {"ID": m.id, "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls,
                 "watchURLs": m.watch_urls, "isLearner": m.is_learner} for m in resp.members]}) + "\n").encode())
        elif g.write_out == "table":
            out().write(render_table(["ID", "status", "name", "peer addrs", "client addrs", "is learner"],
                                     rows).encode())
        else:
            for row in rows:
                out().write((", ".join(row) + "\n").encode())


def _member_id_arg(raw: str) -> int:
    try:
        mid = int(raw, 16)
    except ValueError:
        raise CliError(f"bad member ID arg ({raw!r}), expecting ID in Hex", EXIT_BAD_ARGS) from None
    if mid <= 0:
        raise CliError(f"bad member ID arg ({raw!r}), expecting ID in Hex", EXIT_BAD_ARGS)
    return mid


def _peer_urls_opt(raw: str) -> list[str]:
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    if not urls:
        raise CliError("member peer urls not provided", EXIT_BAD_ARGS)
    return urls


def _peer_key_opt(raw: str) -> str:
    """--peer-key: a Z85 key, "@" and the path of a key file (as --server-key takes it), or
    a bare path of one (NAME.key)."""
    from protocol.client.auth import load_public_key

    raw = raw.strip()
    if raw and len(raw) != 40 and not raw.startswith("@") and os.path.isfile(raw):
        raw = "@" + raw
    if not raw:
        return raw
    try:
        return load_public_key(raw, "--peer-key").decode()
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_ARGS) from None


def _member_change_out(g: Globals, resp: Union[MemberAddResponse, MemberListResponse], line: str) -> None:
    from protocol.client.output import dumps, header_json

    if g.write_out == "json":
        body: dict[str, Any] = {"header": header_json(resp.header)}
        for key in ("member", "members"):
            value = getattr(resp, key, None)
            if value is None:
                continue
            ms = value if isinstance(value, list) else [value]
            listed = [{"ID": m.id, "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls,
                       "isLearner": m.is_learner} for m in ms]
            body[key] = listed if isinstance(value, list) else listed[0]
        out().write((dumps(body) + "\n").encode())
    else:
        out().write((line + "\n").encode())


@member_app.command("add")
def member_add_cmd(ctx: typer.Context,
                   name: str = typer.Argument(..., help="name of the new member"),
                   peer_urls: str = typer.Option(..., "--peer-urls", help="comma separated peer URLs for the new member"),
                   learner: bool = typer.Option(False, "--learner", help="indicates if the new member is raft learner"),
                   peer_key: str = typer.Option("", "--peer-key", help="the new member's peer public key (Z85, or "
                                                "@ and its NAME.key file from qkv keygen); required with peer security")
                   ) -> None:
    """Adds a member into the cluster."""
    g = globals_of(ctx)
    with errors():
        urls = _peer_urls_opt(peer_urls)
        peer_key = _peer_key_opt(peer_key)
        with client(g) as c:
            resp = c.member_add(name, urls, is_learner=learner, peer_key=peer_key)
        new_id = resp.member.id
        _member_change_out(g, resp, f"Member {new_id:16x} added to cluster {resp.header.cluster_id:16x}")
        if g.write_out not in ("json", "fields", "table"):
            conf = [f"{name if m.id == new_id else m.name}={u}" for m in resp.members for u in m.peer_urls]
            out().write(("\n"
                         f'QKV_NAME="{name}"\n'
                         f'QKV_INITIAL_CLUSTER="{",".join(conf)}"\n'
                         f'QKV_INITIAL_ADVERTISE_PEER_URLS="{",".join(urls)}"\n'
                         'QKV_INITIAL_CLUSTER_STATE="existing"\n').encode())
            keys = [f"{name if m.id == new_id else m.name}={m.peer_key}" for m in resp.members if m.peer_key]
            if keys:
                # single quotes: Z85 keys hold $, ! and & that a shell would expand in double quotes
                out().write(f"QKV_INITIAL_CLUSTER_KEYS='{','.join(keys)}'\n".encode())


@member_app.command("remove")
def member_remove_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex")) -> None:
    """Removes a member from the cluster."""
    g = globals_of(ctx)
    with errors():
        mid = _member_id_arg(member_id)
        with client(g) as c:
            resp = c.member_remove(mid)
        _member_change_out(g, resp, f"Member {mid:16x} removed from cluster {resp.header.cluster_id:16x}")


@member_app.command("update")
def member_update_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex"),
                      peer_urls: str = typer.Option(..., "--peer-urls", help="comma separated peer URLs for the updated member")
                      ) -> None:
    """Updates a member in the cluster."""
    g = globals_of(ctx)
    with errors():
        mid = _member_id_arg(member_id)
        urls = _peer_urls_opt(peer_urls)
        with client(g) as c:
            resp = c.member_update(mid, urls)
        _member_change_out(g, resp, f"Member {mid:16x} updated in cluster {resp.header.cluster_id:16x}")


@member_app.command("promote")
def member_promote_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex")) -> None:
    """Promotes a non-voting member in the cluster."""
    g = globals_of(ctx)
    with errors():
        mid = _member_id_arg(member_id)
        with client(g) as c:
            resp = c.member_promote(mid)
        _member_change_out(g, resp, f"Member {mid:16x} promoted in cluster {resp.header.cluster_id:16x}")


def move_leader_cmd(ctx: typer.Context, transferee_id: str = typer.Argument(..., help="member id, in hex")) -> None:
    """Transfers leadership to another member of the cluster."""
    g = globals_of(ctx)
    with errors():
        try:
            target = int(transferee_id, 16)
        except ValueError:
            raise CliError(f"bad member id {transferee_id!r}: expected hex", EXIT_BAD_ARGS) from None
        with client(g) as c:
            leader = c.status().leader
            c.move_leader(target)
        out().write(f"Leadership transferred from {leader:x} to {target:x}\n".encode())
