"""``lock`` and ``elect`` (etcdctl's lock_command.go, elect_command.go), on
protocol/client/concurrency.py's sessions.

Rules:
- the lock or candidacy lives on a session (a lease kept alive); closing the session
  revokes the lease, which deletes the lock or candidate key even when the explicit
  release/resign before it failed (that failure is reported on stderr, not hidden);
- without a command, they hold until Ctrl-C/SIGTERM (exit 0) or until the session is
  lost (``session expired``, exit 1).
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Optional

import typer

from protocol.client.cli.common import (EXIT_BAD_ARGS, EXIT_ERROR, CliError, arg, client, errors, globals_of, print_kv,
                                        stop_on_signal)

if TYPE_CHECKING:
    from protocol.client.concurrency import Session


def _wait_for_signal(session: Session) -> bool:
    """Block until Ctrl-C / SIGTERM (True) or the session is lost (False)."""
    with stop_on_signal() as stop:
        while not stop.is_set():
            if session.done.wait(0.1):
                return False
        return True


def _best_effort(what: str, step: Callable[[], None]) -> None:
    """Run a release/resign whose failure the session's revoke repairs: report, go on."""
    from protocol.errors import QkvError

    try:
        step()
    except QkvError as exc:
        sys.stderr.write(f"{what} failed ({exc.message}); the session's lease revoke removes its key\n")
        sys.stderr.flush()


def split_lock_args(raw: list[str], ttl: int) -> tuple[list[str], int]:
    """etcdctl's (cobra's) reading of ``lock``'s arguments, which click leaves raw after the
    lock name: before ``--``, ``--ttl N``/``--ttl=N`` anywhere is the flag and ``-h``
    asks for help; ``--`` ends the flags and is dropped, what follows is the command as
    given. Unlike etcdctl, an unknown dash argument before ``--`` is kept as a command
    argument (``lock name sh -c 'echo hi'`` works). Returns (positional args, ttl)."""
    args: list[str] = []
    i = 0
    while i < len(raw):
        a = raw[i]
        if a == "--":
            args.extend(raw[i + 1:])
            break
        if a in ("-h", "--help"):
            raise _HelpWanted()
        if a == "--ttl" or a.startswith("--ttl="):
            value = a.partition("=")[2] if "=" in a else (raw[i + 1] if i + 1 < len(raw) else None)
            if value is None:
                raise CliError("flag needs an argument: --ttl", EXIT_ERROR)
            try:
                ttl = int(value)
            except ValueError:
                raise CliError(f'invalid argument "{value}" for "--ttl" flag: strconv.ParseInt: parsing '
                               f'"{value}": invalid syntax', EXIT_ERROR) from None
            i += 1 if "=" in a else 2
            continue
        args.append(a)
        i += 1
    return args, ttl


class _HelpWanted(Exception):
    pass


def exec_failure(argv0: str, exc: OSError) -> str:
    """Go's os/exec error text for a command that could not start."""
    import errno
    import shutil

    if "/" not in argv0 and shutil.which(argv0) is None:
        return f'exec: "{argv0}": executable file not found in $PATH'
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    if exc.errno == errno.ENOENT:
        reason = "no such file or directory"
    return f"fork/exec {argv0}: {reason}"


def exit_failure(rc: int) -> str:
    """Go's ``*exec.ExitError`` text: ``exit status N`` or ``signal: killed``."""
    import signal

    if rc >= 0:
        return f"exit status {rc}"
    name = signal.strsignal(-rc) or f"signal {-rc}"
    return f"signal: {name[:1].lower()}{name[1:]}"


def lock_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<lockname> [exec-command arg1 arg2 ...]"),
    ttl: int = typer.Option(10, "--ttl", help="timeout for session"),
) -> None:
    """Acquires a named lock. With a command (after the name, or after `--`): runs it while
    holding the lock, with ETCD_LOCK_KEY/ETCD_LOCK_REV and QKV_LOCK_KEY/QKV_LOCK_REV in its
    environment; a command that fails exits 1 (`Error: exit status N`), as etcdctl 3.4.
    Without one: prints the lock key and holds it until Ctrl-C. A lock is only as safe as
    its fencing (README)."""
    import subprocess

    from protocol.client.concurrency import Lock, Session

    g = globals_of(ctx)
    with errors():
        try:
            args, ttl = split_lock_args(args or [], ttl)
        except _HelpWanted:
            sys.stdout.write(ctx.get_help() + "\n")
            return
        if not args:
            raise CliError("lock takes a lock name argument and an optional command to execute",
                           EXIT_BAD_ARGS)
        with client(g) as c:
            session = Session(c, ttl=ttl)
            try:
                lock = Lock(session, arg(args[0]))
                lock.acquire()
                try:
                    kv = c.get(lock.key)
                    if len(args) > 1:
                        key = os.fsdecode(lock.key)
                        rev = str(lock.header.revision if lock.header else lock.revision)
                        # the lock's variables win over inherited ones of the same name
                        env = dict(os.environ, ETCD_LOCK_KEY=key, ETCD_LOCK_REV=rev,
                                   QKV_LOCK_KEY=key, QKV_LOCK_REV=rev)
                        sys.stdout.flush()
                        try:
                            rc = subprocess.call(args[1:], env=env)
                        except OSError as exc:
                            raise CliError(exec_failure(args[1], exc)) from None
                        if rc:
                            raise CliError(exit_failure(rc))
                        return
                    if kv.kvs:
                        print_kv(g, kv.header, kv.kvs[0])
                    if not _wait_for_signal(session):
                        raise CliError("session expired")
                finally:
                    _best_effort("releasing the lock", lock.release)
            finally:
                session.close()


def elect_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<election-name> [proposal]"),
    listen: bool = typer.Option(False, "-l", "--listen", help="observation mode"),
    ttl: int = typer.Option(10, "--ttl", help="timeout for session"),
) -> None:
    """Observes and participates in leader election: campaigns with the proposal and, once
    elected, prints the leader key and value and holds until Ctrl-C (then resigns); with
    -l, prints every leader as it changes."""
    from protocol.client.concurrency import Election, Session

    g = globals_of(ctx)
    with errors():
        args = args or []
        if len(args) != 1 + (0 if listen else 1):
            if not args or len(args) > 2:
                raise CliError("elect takes one election name argument and an optional proposal",
                               EXIT_BAD_ARGS)
            if not listen and len(args) == 1:
                raise CliError("no proposal argument but -l not set", EXIT_BAD_ARGS)
            if listen and len(args) == 2:
                raise CliError("proposal given but -l set", EXIT_BAD_ARGS)
        name = arg(args[0])
        with client(g) as c:
            if listen:
                from protocol.client.concurrency import Observer
                from protocol.client.types import ResponseHeader

                with Observer(c, name + b"/") as it, stop_on_signal() as stop:
                    while not stop.is_set():
                        kv = it.get(timeout=0.2)
                        if kv is not None:
                            print_kv(g, ResponseHeader(revision=it.revision), kv)
                return
            session = Session(c, ttl=ttl)
            try:
                e = Election(session, name)
                e.campaign(arg(args[1]))
                try:
                    lead = c.get(e.key)
                    if lead.kvs:
                        print_kv(g, lead.header, lead.kvs[0])
                    if not _wait_for_signal(session):
                        raise CliError("session expired")
                finally:
                    _best_effort("resigning", e.resign)
            finally:
                session.close()
