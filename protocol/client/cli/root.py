"""The ``qkvctl`` command tree (etcdctl's ctl.go): the global flags, every command group
registered in one place, and the entry point with etcdctl's argument conventions."""
from __future__ import annotations

import sys
from typing import Optional

import typer

from protocol import VERSION
from protocol.client.cli import auth, bench, kv, lease, lock_elect, maintenance, member, mirror, snapshot, watch
from protocol.client.cli.common import (
    API_VERSION, DEFAULT_ENDPOINTS, EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR, EXIT_INTERRUPTED, CliError,
    Globals, errors, parse_duration, split_user,
)

app = typer.Typer(
    name="qkvctl", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="A command line client for quorumkv (etcdctl v3 compatible).",
)


@app.callback()
def _root(
    ctx: typer.Context,
    endpoints: str = typer.Option(DEFAULT_ENDPOINTS, "--endpoints", envvar="QKVCTL_ENDPOINTS",
                                  help="comma-separated endpoints (tcp://host:port or host:port)"),
    command_timeout: str = typer.Option("5s", "--command-timeout",
                                        help="timeout for short running command (5s, 500ms)"),
    dial_timeout: str = typer.Option("2s", "--dial-timeout", hidden=True,
                                     help="accepted for etcdctl compatibility; unused"),
    write_out: str = typer.Option("simple", "-w", "--write-out",
                                  help="set the output format (fields, json, simple, table)"),
    is_hex: bool = typer.Option(False, "--hex", help="print byte strings as hex encoded strings"),
    user: Optional[str] = typer.Option(None, "--user", envvar="QKVCTL_USER",
                                       help="username[:password] for authentication (prompt if password is not supplied)"),
    password: Optional[str] = typer.Option(None, "--password", envvar="QKVCTL_PASSWORD",
                                           help="password for authentication (if this option is used, --user "
                                                "option shouldn't include password)"),
    server_key: Optional[str] = typer.Option(None, "--server-key", envvar="QKVCTL_SERVER_KEY",
                                             help="the server's CURVE public key (Z85, or @file of its .key "
                                                  "certificate): turns CURVE on and refuses any other server"),
    key_file: Optional[str] = typer.Option(None, "--key-file", envvar="QKVCTL_KEY_FILE",
                                           help="this client's CURVE secret certificate (NAME.key_secret); "
                                                "default: a fresh key per run"),
) -> None:
    with errors():
        from protocol.client.output import FORMATS

        if write_out not in FORMATS:
            raise CliError(f"unknown output format {write_out!r} (fields, json, simple, table)",
                           EXIT_BAD_FEATURE)
        eps = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not eps:
            raise CliError("no endpoints given", EXIT_BAD_ARGS)
        timeout_s = parse_duration(command_timeout)
        parse_duration(dial_timeout)
        if timeout_s <= 0:
            raise CliError("--command-timeout must be > 0", EXIT_BAD_ARGS)
        name, pw = split_user(user, password)
        ctx.obj = Globals(eps, timeout_s, write_out, is_hex, name, pw, server_key, key_file)


def version_cmd() -> None:
    """Prints the version of qkvctl."""
    sys.stdout.write(f"qkvctl version: {VERSION}\nAPI version: {API_VERSION}\n")


# -- the command tree, in `qkvctl --help` order -----------------------------------------------
app.command("put")(kv.put_cmd)
app.command("get")(kv.get_cmd)
app.command("del")(kv.del_cmd)
app.command("watch")(watch.watch_cmd)
app.command("txn")(kv.txn_cmd)
app.command("compaction")(kv.compaction_cmd)
app.command("version")(version_cmd)
app.command("move-leader")(member.move_leader_cmd)
app.command("defrag")(maintenance.defrag_cmd)
app.command("lock", context_settings={"allow_interspersed_args": False,
                                      "ignore_unknown_options": True})(lock_elect.lock_cmd)
app.command("elect")(lock_elect.elect_cmd)
app.command("make-mirror")(mirror.make_mirror_cmd)
app.add_typer(maintenance.endpoint_app, name="endpoint")
app.add_typer(bench.benchmark_app, name="benchmark")
app.add_typer(bench.check_app, name="check")
app.add_typer(member.member_app, name="member")
app.add_typer(lease.lease_app, name="lease")
app.add_typer(maintenance.alarm_app, name="alarm")
app.add_typer(snapshot.snapshot_app, name="snapshot")
app.add_typer(auth.auth_app, name="auth")
app.add_typer(auth.user_app, name="user")
app.add_typer(auth.role_app, name="role")


# -- entry point: etcdctl's argument conventions on top of typer ------------------------------
_GLOBAL_WITH_VALUE = {"--endpoints", "--command-timeout", "--dial-timeout", "-w", "--write-out",
                      "--user", "--password", "--server-key", "--key-file"}
_GLOBAL_FLAGS = {"--hex"}
# Go-style "--flag=false" for the boolean flags of the auth commands.
_BOOL_FLAGS: dict[str, Optional[str]] = {"--interactive": "--no-interactive", "--no-password": None,
                                         "--detail": None, "--prefix": None, "--from-key": None}


def normalize_bool_flags(argv: list[str]) -> list[str]:
    """``--interactive=false`` -> ``--no-interactive``, ``--detail=true`` -> ``--detail``,
    ``--prefix=false`` -> (dropped), as cobra takes them. Stops at ``--``."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        name, sep, value = a.partition("=")
        if sep and name in _BOOL_FLAGS and value.lower() in ("true", "false", "1", "0", "t", "f"):
            negated = _BOOL_FLAGS[name]
            if value.lower() in ("true", "1", "t"):
                out.append(name)
            elif negated:
                out.append(negated)
            continue
        out.append(a)
    return out


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move global flags found after the command to the front, as cobra accepts them
    anywhere (``qkvctl get foo -w json``). Stops at ``--``."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        name = a.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE:
            if "=" in a or (a.startswith("-w") and len(a) > 2 and not a.startswith("--")):
                front.append(a)
                i += 1
            else:
                front.extend(argv[i:i + 2])
                i += 2
            continue
        if name in _GLOBAL_FLAGS:
            front.append(a)
            i += 1
            continue
        if a.startswith("-w") and not a.startswith("--") and len(a) > 2:  # -wjson
            front.append(a)
            i += 1
            continue
        rest.append(a)
        i += 1
    return front + rest


def run(argv: list[str] | None = None) -> int:
    """Run qkvctl with ``argv`` (without the program name); return the exit code."""
    return run_app(app, "qkvctl", hoist_global_flags(normalize_bool_flags(
        list(sys.argv[1:] if argv is None else argv))))


def run_app(typer_app: typer.Typer, prog_name: str, args: list[str]) -> int:
    """Run a typer app without its standalone mode: usage errors print ``Error: ...`` on
    stderr and exit 1, as etcdctl's do (qkvctl and qkvutl)."""
    # typer vendors click; its exception classes are reachable only through typer._click.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import Abort, Exit

    try:
        rv = typer_app(args=args, prog_name=prog_name, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        sys.stdout.write(exc.format_message() + "\n")
        return 0
    except UsageError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"Error: {exc.format_message()}\n")
        return EXIT_ERROR
    except ClickException as exc:
        sys.stderr.write(f"Error: {exc.format_message()}\n")
        return exc.exit_code
    except Exit as exc:
        return exc.exit_code
    except Abort:
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        try:
            sys.stdout.flush()
        except (ValueError, OSError):
            pass
    return rv if isinstance(rv, int) else 0


def main() -> None:
    sys.exit(run())
