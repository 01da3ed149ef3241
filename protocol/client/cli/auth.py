"""``auth enable|disable|status``, ``user ...``, ``role ...`` (etcdctl 3.4's
auth_command.go, user_command.go, role_command.go; ``auth status`` is 3.5's)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, CliError, Globals, arg, client, errors, globals_of, nargs, out, say,
)

if TYPE_CHECKING:
    from protocol.client.output import AuthPrinter

auth_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Enable or disable authentication")
user_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="User related commands")
role_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Role related commands")


def _auth_printer(g: Globals) -> AuthPrinter:
    from protocol.client.output import AuthPrinter

    return AuthPrinter(g.write_out, out())


def _read_password_interactive(name: str) -> str:
    """etcdctl's readPasswordInteractive: asked twice on the terminal."""
    import getpass

    if not (sys.stdin is not None and sys.stdin.isatty()):
        raise CliError("failed to ask password: stdin is not a terminal "
                       "(use --interactive=false to read it from stdin)", EXIT_BAD_ARGS)
    pw1 = getpass.getpass(f"Password of {name}: ")
    if not pw1:
        raise CliError("empty password", EXIT_BAD_ARGS)
    pw2 = getpass.getpass(f"Type password of {name} again for confirmation: ")
    if pw1 != pw2:
        raise CliError("given passwords are different", EXIT_BAD_ARGS)
    return pw1


def _read_password_stdin() -> str:
    """etcdctl's ``fmt.Scanf("%s")``: the first word on stdin (empty if none)."""
    line = sys.stdin.readline() if sys.stdin is not None else ""
    words = line.split()
    return words[0] if words else ""


@auth_app.command("enable")
def auth_enable_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Enables authentication (creates the root role and grants it to root if needed)."""
    from protocol.errors import RootRoleNotExist

    g = globals_of(ctx)
    with errors():
        nargs(args, 0, "auth enable command does not accept any arguments")
        with client(g) as c:
            while True:
                try:
                    c.auth.auth_enable()
                    break
                except RootRoleNotExist:  # etcdctl: add the root role, grant it to root, again
                    c.auth.role_add("root")
                    c.auth.user_grant_role("root", "root")
        say("Authentication Enabled")


@auth_app.command("disable")
def auth_disable_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Disables authentication."""
    g = globals_of(ctx)
    with errors():
        nargs(args, 0, "auth disable command does not accept any arguments")
        with client(g) as c:
            c.auth.auth_disable()
        say("Authentication Disabled")


@auth_app.command("status")
def auth_status_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Returns authentication status (etcdctl 3.5's command)."""
    g = globals_of(ctx)
    with errors():
        nargs(args, 0, "auth status command does not accept any arguments")
        with client(g) as c:
            resp = c.auth.auth_status()
        _auth_printer(g).auth_status(resp)


@user_app.command("add")
def user_add_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<user name or user:password>"),
    interactive: bool = typer.Option(True, "--interactive/--no-interactive",
                                     help="Read password from stdin instead of interactive terminal"),
    new_user_password: str = typer.Option("", "--new-user-password", help="Supply password from the command line flag"),
    no_password: bool = typer.Option(False, "--no-password", help="Create a user without password (key based auth only)"),
    public_key: Optional[str] = typer.Option(None, "--public-key",
                                             help="the user's CURVE public key (Z85 or @file): with "
                                                  "--client-cert-auth a client with this key is this user"),
) -> None:
    """Adds a new user."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "user add command requires user name as its argument")[0]
        password: Optional[str] = None
        if not no_password:
            if new_user_password:
                password = new_user_password
            else:
                user, sep, pw = name.partition(":")
                if not sep:
                    password = _read_password_interactive(name) if interactive else _read_password_stdin()
                else:
                    if not user:
                        raise CliError("empty user name is not allowed", EXIT_BAD_ARGS)
                    name, password = user, pw
        with client(g) as c:
            try:
                resp = c.auth.user_add(name, password, no_password=no_password, public_key=public_key)
            except ValueError as exc:  # a bad --public-key
                raise CliError(str(exc), EXIT_BAD_ARGS) from None
        _auth_printer(g).header_only(resp, f"User {name} created")


@user_app.command("delete")
def user_delete_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<user name>")) -> None:
    """Deletes a user."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "user delete command requires user name as its argument")[0]
        with client(g) as c:
            resp = c.auth.user_delete(name)
        _auth_printer(g).header_only(resp, f"User {name} deleted")


@user_app.command("get")
def user_get_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<user name>"),
    detail: bool = typer.Option(False, "--detail", help="Show permissions of roles granted to the user"),
) -> None:
    """Gets detailed information of a user."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "user get command requires user name as its argument")[0]
        printer = _auth_printer(g)
        with client(g) as c:
            resp = c.auth.user_get(name)
            if not detail:
                printer.user_get(name, resp)
                return
            say(f"User: {name}")
            for role in resp.roles:
                out().write(b"\n")
                printer.role_get(role, c.auth.role_get(role))


@user_app.command("list")
def user_list_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Lists all users."""
    g = globals_of(ctx)
    with errors():
        nargs(args, 0, "user list command requires no arguments")
        with client(g) as c:
            resp = c.auth.user_list()
        _auth_printer(g).user_list(resp)


@user_app.command("passwd")
def user_passwd_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<user name>"),
    interactive: bool = typer.Option(True, "--interactive/--no-interactive",
                                     help="If true, read password from stdin instead of interactive terminal"),
) -> None:
    """Changes password of user."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "user passwd command requires user name as its argument")[0]
        password = _read_password_interactive(name) if interactive else _read_password_stdin()
        with client(g) as c:
            resp = c.auth.user_change_password(name, password)
        _auth_printer(g).header_only(resp, "Password updated")


@user_app.command("grant-role")
def user_grant_role_cmd(ctx: typer.Context,
                        args: Optional[list[str]] = typer.Argument(None, metavar="<user name> <role name>")) -> None:
    """Grants a role to a user."""
    g = globals_of(ctx)
    with errors():
        user, role = nargs(args, 2, "user grant command requires user name and role name as its argument")
        with client(g) as c:
            resp = c.auth.user_grant_role(user, role)
        _auth_printer(g).header_only(resp, f"Role {role} is granted to user {user}")


@user_app.command("revoke-role")
def user_revoke_role_cmd(ctx: typer.Context,
                         args: Optional[list[str]] = typer.Argument(None, metavar="<user name> <role name>")) -> None:
    """Revokes a role from a user."""
    g = globals_of(ctx)
    with errors():
        user, role = nargs(args, 2, "user revoke-role requires user name and role name as its argument")
        with client(g) as c:
            resp = c.auth.user_revoke_role(user, role)
        _auth_printer(g).header_only(resp, f"Role {role} is revoked from user {user}")


@role_app.command("add")
def role_add_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Adds a new role."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "role add command requires role name as its argument")[0]
        with client(g) as c:
            resp = c.auth.role_add(name)
        _auth_printer(g).header_only(resp, f"Role {name} created")


@role_app.command("delete")
def role_delete_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Deletes a role."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "role delete command requires role name as its argument")[0]
        with client(g) as c:
            resp = c.auth.role_delete(name)
        _auth_printer(g).header_only(resp, f"Role {name} deleted")


@role_app.command("get")
def role_get_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Gets detailed information of a role."""
    g = globals_of(ctx)
    with errors():
        name = nargs(args, 1, "role get command requires role name as its argument")[0]
        with client(g) as c:
            resp = c.auth.role_get(name)
        _auth_printer(g).role_get(name, resp)


@role_app.command("list")
def role_list_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Lists all roles."""
    g = globals_of(ctx)
    with errors():
        nargs(args, 0, "role list command requires no arguments")
        with client(g) as c:
            resp = c.auth.role_list()
        _auth_printer(g).role_list(resp)


def _perm_range_args(args: list[str], prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    """etcdctl's permRange: the wire key and range_end of a permission."""
    from protocol.client.types import prefix_end

    key = arg(args[0])
    if prefix and from_key:
        raise CliError("--from-key and --prefix flags are mutually exclusive", EXIT_BAD_ARGS)
    if not key:
        # the empty key is "\x00"; with --prefix/--from-key: every key
        return b"\x00", (b"\x00" if prefix or from_key else b"")
    if len(args) == 1:
        if prefix:
            return key, prefix_end(key)
        return key, (b"\x00" if from_key else b"")
    if prefix:
        raise CliError("unexpected endkey argument with --prefix flag", EXIT_BAD_ARGS)
    if from_key:
        raise CliError("unexpected endkey argument with --from-key flag", EXIT_BAD_ARGS)
    return key, arg(args[1])


_PERM_PREFIX = typer.Option(False, "--prefix", help="grant a prefix permission")
_PERM_FROM_KEY = typer.Option(False, "--from-key", help="grant a permission of keys that are greater than or "
                                                         "equal to the given key using byte compare")


@role_app.command("grant-permission")
def role_grant_permission_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<role name> <permission type> <key> [endkey]"),
    prefix: bool = _PERM_PREFIX, from_key: bool = _PERM_FROM_KEY,
) -> None:
    """Grants a key to a role."""
    from protocol.client.types import perm_type_name

    g = globals_of(ctx)
    with errors():
        args = args or []
        if len(args) < 3:
            raise CliError("role grant command requires role name, permission type, and key [endkey] as its "
                           "argument", EXIT_BAD_ARGS)
        try:
            perm = perm_type_name(args[1])
        except ValueError as exc:
            raise CliError(str(exc), EXIT_BAD_ARGS) from None
        key, end = _perm_range_args(args[2:], prefix, from_key)
        with client(g) as c:
            resp = c.auth.role_grant_permission(args[0], perm, key, end)
        _auth_printer(g).header_only(resp, f"Role {args[0]} updated")


@role_app.command("revoke-permission")
def role_revoke_permission_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<role name> <key> [endkey]"),
    prefix: bool = typer.Option(False, "--prefix", help="revoke a prefix permission"),
    from_key: bool = typer.Option(False, "--from-key", help="revoke a permission of keys that are greater than or "
                                                            "equal to the given key using byte compare"),
) -> None:
    """Revokes a key from a role."""
    g = globals_of(ctx)
    with errors():
        args = args or []
        if len(args) < 2:
            raise CliError("role revoke-permission command requires role name and key [endkey] as its argument",
                           EXIT_BAD_ARGS)
        key, end = _perm_range_args(args[1:], prefix, from_key)
        with client(g) as c:
            resp = c.auth.role_revoke_permission(args[0], key, end)
        _auth_printer(g).role_revoke_permission(resp, args[0], arg(args[1]), end)
