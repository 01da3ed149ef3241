"""The ``qkvctl`` command tree (etcdctl's ctl.go): the global flags, every command group
registered in one place, and the entry point with etcdctl's argument conventions."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from protocol import VERSION
from protocol.client.cli import auth, bench, kv, lease, lock_elect, maintenance, member, mirror, snapshot, watch
from protocol.client.cli.common import (
    API_VERSION, DEFAULT_ENDPOINTS, EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR, EXIT_INTERRUPTED, CliError,
    Globals, errors, parse_duration, set_raw_args, split_user,
)

app = typer.Typer(
    name="qkvctl", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
    help="A command line client for quorumkv (etcdctl v3 compatible).",
)
# Every global flag may come from the environment, as etcdctl's ETCDCTL_<FLAG> (flag name
# upper-cased, "-" -> "_"); a flag on the command line wins over its variable.
ENV_PREFIX = "QKVCTL_"


def _env(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


@app.callback()
def _root(
    ctx: typer.Context,
    endpoints: str = typer.Option(DEFAULT_ENDPOINTS, "--endpoints", envvar=_env("--endpoints"),
                                  help="comma-separated endpoints (tcp://host:port or host:port)"),
    command_timeout: str = typer.Option("5s", "--command-timeout", envvar=_env("--command-timeout"),
                                        help="timeout for short running command (5s, 500ms)"),
    dial_timeout: str = typer.Option("2s", "--dial-timeout", hidden=True, envvar=_env("--dial-timeout"),
                                     help="accepted for etcdctl compatibility; unused"),
    write_out: str = typer.Option("simple", "-w", "--write-out", envvar=_env("--write-out"),
                                  help="set the output format (fields, json, simple, table)"),
    is_hex: bool = typer.Option(False, "--hex", envvar=_env("--hex"), help="print byte strings as hex encoded strings"),
    user: Optional[str] = typer.Option(None, "--user", envvar=_env("--user"),
                                       help="username[:password] for authentication (prompt if password is not supplied)"),
    password: Optional[str] = typer.Option(None, "--password", envvar=_env("--password"),
                                           help="password for authentication (if this option is used, --user "
                                                "option shouldn't include password)"),
    server_key: Optional[str] = typer.Option(None, "--server-key", envvar=_env("--server-key"),
                                             help="the server's CURVE public key (Z85, or @file of its .key "
                                                  "certificate): turns CURVE on and refuses any other server"),
    key_file: Optional[str] = typer.Option(None, "--key-file", envvar=_env("--key-file"),
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


def help_cmd(args: Optional[list[str]] = typer.Argument(None, metavar="[command]")) -> None:
    """Help about any command (`qkvctl help member add` = `qkvctl member add --help`)."""
    cmd = typer.main.get_command(app)
    for i, name in enumerate(args or []):
        subs = getattr(cmd, "commands", None)  # a group's subcommands
        sub = subs.get(name) if isinstance(subs, dict) else None
        if sub is None:  # cobra: the topic on stderr, the root help on stdout, exit 0
            sys.stderr.write(f"Unknown help topic [`{' '.join((args or [])[:i + 1])}`]\n")
            raise typer.Exit(run_app(app, "qkvctl", ["--help"]))
        cmd = sub
    raise typer.Exit(run_app(app, "qkvctl", [*(args or []), "--help"]))


completion_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                             help="Generate the autocompletion script for the specified shell")
COMPLETE_VAR = "_QKVCTL_COMPLETE"  # the variable the generated scripts set when they call qkvctl


def _completion_script(shell: str) -> None:
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    sys.stdout.write(get_completion_script(prog_name="qkvctl", complete_var=COMPLETE_VAR, shell=shell) + "\n")


@completion_app.command("bash")
def completion_bash_cmd() -> None:
    """Generate the autocompletion script for bash (`source <(qkvctl completion bash)`)."""
    _completion_script("bash")


@completion_app.command("zsh")
def completion_zsh_cmd() -> None:
    """Generate the autocompletion script for zsh (`source <(qkvctl completion zsh)`)."""
    _completion_script("zsh")


@completion_app.command("fish")
def completion_fish_cmd() -> None:
    """Generate the autocompletion script for fish (`qkvctl completion fish | source`)."""
    _completion_script("fish")


@completion_app.command("powershell")
def completion_powershell_cmd() -> None:
    """Generate the autocompletion script for powershell."""
    _completion_script("powershell")


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
app.add_typer(completion_app, name="completion")
app.command("help")(help_cmd)


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

    if os.environ.get(f"_{prog_name.upper()}_COMPLETE"):
        # A completion script asks for candidates: typer's shell classes answer (and exit).
        from typer._completion_classes import completion_init

        completion_init()
    set_raw_args(args)
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
