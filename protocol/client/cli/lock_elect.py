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

from protocol.client.cli.common import (EXIT_BAD_ARGS, CliError, arg, client, errors, globals_of, print_kv,
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


def lock_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<lockname> [exec-command arg1 arg2 ...]"),
    ttl: int = typer.Option(10, "--ttl", help="timeout for session"),
) -> None:
    """Acquires a named lock. With a command: runs it while holding the lock (environment
    ETCD_LOCK_KEY and ETCD_LOCK_REV) and exits with its exit code; without: prints the
    lock key and holds it until Ctrl-C. A lock is only as safe as its fencing (README)."""
    import subprocess

    from protocol.client.concurrency import Lock, Session

    g = globals_of(ctx)
    with errors():
        args = args or []
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
                        env = dict(os.environ, ETCD_LOCK_KEY=os.fsdecode(lock.key),
                                   ETCD_LOCK_REV=str(lock.header.revision if lock.header else lock.revision))
                        try:
                            rc = subprocess.call(args[1:], env=env)
                        except OSError as exc:
                            raise CliError(str(exc)) from None
                        if rc:
                            raise typer.Exit(rc if rc > 0 else 128 - rc)
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
