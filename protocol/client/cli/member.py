"""Membership commands: ``member list|add|remove|update|promote`` and ``move-leader``
(etcdctl's member_command.go, move_leader_command.go)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Union

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
        from protocol.client.output import dumps, go_quote, header_json, render_table

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
        elif g.write_out == "fields":
            lines = [f'"ClusterID" : {resp.header.cluster_id}', f'"MemberID" : {resp.header.member_id}',
                     f'"Revision" : {resp.header.revision}', f'"RaftTerm" : {resp.header.raft_term}']
            for m in resp.members:
                lines += [f'"ID" : {m.id}', f'"Name" : {go_quote(m.name.encode())}']
                lines += [f'"PeerURL" : {go_quote(u.encode())}' for u in m.peer_urls]
                lines += [f'"ClientURL" : {go_quote(u.encode())}' for u in m.client_urls]
                lines += [f'"IsLearner" : {str(m.is_learner).lower()}', ""]
            out().write(("\n".join(lines) + "\n").encode())
        else:
            for row in rows:
                out().write((", ".join(row) + "\n").encode())


def parse_uint_hex(raw: str) -> int:
    """Go's ``strconv.ParseUint(raw, 16, 64)``; CliError with its message (bad args)."""
    from protocol.client.output import go_quote

    text = raw[2:] if raw[:2].lower() == "0x" else raw  # Go refuses 0x with base 16; accept it
    if not text or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        raise CliError(f"strconv.ParseUint: parsing {go_quote(raw.encode())}: invalid syntax", EXIT_BAD_ARGS)
    value = int(text, 16)
    if value >= 1 << 64:
        raise CliError(f"strconv.ParseUint: parsing {go_quote(raw.encode())}: value out of range", EXIT_BAD_ARGS)
    return value


def _member_id_arg(args: Optional[list[str]]) -> int:
    """etcdctl's member remove/update/promote argument: exactly one ID, in hex."""
    if not args or len(args) != 1:
        raise CliError("member ID is not provided", EXIT_BAD_ARGS)
    try:
        mid = parse_uint_hex(args[0])
    except CliError as exc:
        raise CliError(f"bad member ID arg ({exc}), expecting ID in Hex", EXIT_BAD_ARGS) from None
    if mid == 0:
        raise CliError("bad member ID arg (0), expecting ID in Hex", EXIT_BAD_ARGS)
    return mid


def _peer_urls_opt(raw: str) -> list[str]:
    urls = [u.strip() for u in (raw or "").split(",") if u.strip()]
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
                   args: Optional[list[str]] = typer.Argument(None, metavar="<memberName>",
                                                              help="name of the new member"),
                   peer_urls: str = typer.Option("", "--peer-urls", help="comma separated peer URLs for the new member"),
                   learner: bool = typer.Option(False, "--learner", help="indicates if the new member is raft learner"),
                   peer_key: str = typer.Option("", "--peer-key", help="the new member's peer public key (Z85, or "
                                                "@ and its NAME.key file from qkv keygen); required with peer security")
                   ) -> None:
    """Adds a member into the cluster."""
    g = globals_of(ctx)
    with errors():
        if not args:
            raise CliError("member name not provided", EXIT_BAD_ARGS)
        if len(args) > 1:
            hint = "".join(f", did you mean --peer-urls={a}" for a in args if a.lower().startswith("http")
                           or a.lower().startswith("tcp"))
            raise CliError("too many arguments" + hint, EXIT_BAD_ARGS)
        name = args[0]
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
def member_remove_cmd(ctx: typer.Context, member_id: Optional[list[str]] = typer.Argument(
        None, metavar="<memberID>", help="member ID, in hex")) -> None:
    """Removes a member from the cluster."""
    g = globals_of(ctx)
    with errors():
        mid = _member_id_arg(member_id)
        with client(g) as c:
            resp = c.member_remove(mid)
        _member_change_out(g, resp, f"Member {mid:16x} removed from cluster {resp.header.cluster_id:16x}")


@member_app.command("update")
def member_update_cmd(ctx: typer.Context, member_id: Optional[list[str]] = typer.Argument(
                          None, metavar="<memberID>", help="member ID, in hex"),
                      peer_urls: str = typer.Option("", "--peer-urls", help="comma separated peer URLs for the updated member")
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
def member_promote_cmd(ctx: typer.Context, member_id: Optional[list[str]] = typer.Argument(
        None, metavar="<memberID>", help="member ID, in hex")) -> None:
    """Promotes a non-voting member in the cluster."""
    g = globals_of(ctx)
    with errors():
        mid = _member_id_arg(member_id)
        with client(g) as c:
            resp = c.member_promote(mid)
        _member_change_out(g, resp, f"Member {mid:16x} promoted in cluster {resp.header.cluster_id:16x}")


def move_leader_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(
        None, metavar="<transferee-member-id>", help="member id, in hex")) -> None:
    """Transfers leadership to another member of the cluster (found and asked wherever
    it is: the endpoints need not include the leader)."""
    g = globals_of(ctx)
    with errors():
        if not args or len(args) != 1:
            raise CliError("move-leader command needs 1 argument", EXIT_BAD_ARGS)
        target = parse_uint_hex(args[0])
        leader_ep, leader_id = _find_leader(g)
        with client(g, [leader_ep]) as c:
            c.move_leader(target)
        out().write(f"Leadership transferred from {leader_id:x} to {target:x}\n".encode())


def _find_leader(g: Globals) -> tuple[str, int]:
    """The leader's client endpoint and ID. As etcdctl: the first of --endpoints whose
    status says it leads; when none does (only followers given), the leader a follower
    names, at its client URL from the member list."""
    from protocol.errors import QkvError

    named = 0
    last_err: Optional[QkvError] = None
    for ep in g.endpoints:
        try:
            with client(g, [ep]) as c:
                st = c.status()
        except QkvError as exc:
            last_err = exc
            continue
        if st.leader and st.header.member_id == st.leader:
            return ep, st.leader
        named = named or st.leader
    if named:
        with client(g) as c:
            members = c.member_list().members
        for m in members:
            if m.id == named and m.client_urls:
                return m.client_urls[0], named
    if last_err is not None and not named:
        raise last_err
    raise CliError(f"no leader endpoint given at [{' '.join(g.endpoints)}]", EXIT_BAD_ARGS)
