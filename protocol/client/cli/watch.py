"""``watch`` (etcdctl 3.4's watch_command.go): one watch until Ctrl-C, optionally running
a command per event (``watch key -- cmd args``), or ``-i``: watch requests read from stdin.

Rules, as etcdctl's:
- ``--`` ends the watch's own arguments; what follows is the command, run once per event
  after the response is printed, with ETCD_WATCH_REVISION, ETCD_WATCH_EVENT_TYPE,
  ETCD_WATCH_KEY, ETCD_WATCH_VALUE in its environment (the last three Go-quoted:
  ``"PUT"``, ``"foo"``) and the same values as QKV_WATCH_*; a command that fails ends the
  watch: ``command ["sh" "-c" "exit 2"] error (exit status 2)`` on stderr, exit 1;
- QKVCTL_WATCH_KEY / QKVCTL_WATCH_RANGE_END (etcdctl's ETCDCTL_WATCH_*) give the key and
  range end instead of arguments (giving both is an error);
- ``-i``: each stdin line is ``watch [options] key [range_end] [-- cmd args]`` (started at
  once, printed as they come) or ``progress`` (asks every watch for a progress
  notification); a bad line is reported on stderr and skipped; a bad flag or a ``--``
  without a command ends it (exit 128); the end of stdin ends it as etcdctl ends
  (``Error reading watch request line: EOF``, exit 3).
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import typer

from protocol.client.cli.common import (EXIT_BAD_ARGS, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, CliError,
                                        arg, client, errors, globals_of, printer, raw_args, stop_on_signal)

if TYPE_CHECKING:
    from protocol.client.client import Client
    from protocol.client.output import Printer
    from protocol.client.watch import Watcher, WatchResponse

EXIT_WATCH_CANCELED = 5
ENV_KEY, ENV_RANGE_END = "QKVCTL_WATCH_KEY", "QKVCTL_WATCH_RANGE_END"
ERR_ARGS = "bad number of arguments"
ERR_SEPARATOR = "bad number of arguments (found separator --, but no commands)"
ERR_CONFLICT_ENV = "bad number of arguments (found conflicting environment key)"
MAX_LINE = 1 << 20  # -i: a longer stdin line is refused, not buffered


@dataclass
class WatchSpec:
    key: bytes
    range_end: Optional[bytes]
    prefix: bool
    rev: int
    prev_kv: bool
    progress_notify: bool
    command: list[str]


def watch_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="[key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]"),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Interactive mode"),
    prefix: bool = typer.Option(False, "--prefix", help="Watch on a prefix if prefix is set"),
    rev: int = typer.Option(0, "--rev", help="Revision to start watching"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="get the previous key-value pair before the event happens"),
    progress_notify: bool = typer.Option(False, "--progress-notify", help="get periodic watch progress notification from server"),
) -> None:
    """Watches events stream on keys or prefixes (until Ctrl-C)."""
    g = globals_of(ctx)
    with errors():
        env_key, env_range = _env_range()
        p = printer(g)
        p.need("simple", "json", "fields")
        if interactive:
            with client(g) as c:
                _interactive(c, p, env_key, env_range)
            return
        args = list(args or [])
        command: list[str] = []
        raw = raw_args()
        if "--" in raw:
            command = raw[raw.index("--") + 1:]
            if not command:
                raise CliError(ERR_SEPARATOR, EXIT_BAD_ARGS)
            args = args[:max(0, len(args) - len(command))]
        spec = _spec(args, env_key, env_range, prefix, rev, prev_kv, progress_notify, command)
        with client(g) as c, stop_on_signal() as stop:
            with _open(c, spec) as watcher:
                while not stop.is_set():
                    resp = watcher.get(timeout=0.2)
                    if resp is None:
                        continue
                    if not _show(p, resp, spec.command):
                        break
        if stop.is_set():
            raise typer.Exit(EXIT_INTERRUPTED)  # as a Ctrl-C always ended it
        raise CliError("watch is canceled by the server", EXIT_WATCH_CANCELED)


def _env_range() -> tuple[str, str]:
    from protocol.client.output import go_quote

    env_key, env_range = os.environ.get(ENV_KEY, ""), os.environ.get(ENV_RANGE_END, "")
    if not env_key and env_range:
        raise CliError(f"{ENV_KEY} is empty but got {ENV_RANGE_END}={go_quote(os.fsencode(env_range))}",
                       EXIT_BAD_ARGS)
    return env_key, env_range


def _spec(args: list[str], env_key: str, env_range: str, prefix: bool, rev: int, prev_kv: bool,
          progress_notify: bool, command: list[str]) -> WatchSpec:
    """The key range to watch from the positional arguments or the environment."""
    if env_key:
        if args:
            raise CliError(ERR_CONFLICT_ENV, EXIT_BAD_ARGS)
        args = [env_key] + ([env_range] if env_range else [])
    if not args:
        raise CliError(ERR_ARGS, EXIT_BAD_ARGS)
    if len(args) > 2:
        raise CliError("too many arguments", EXIT_BAD_ARGS)
    if prefix and len(args) > 1:
        raise CliError("`range_end` and `--prefix` are mutually exclusive", EXIT_BAD_ARGS)
    return WatchSpec(arg(args[0]), arg(args[1]) if len(args) > 1 else None, prefix, rev, prev_kv,
                     progress_notify, command)


def _open(c: Client, spec: WatchSpec) -> Watcher:
    return c.watch(spec.key, spec.range_end, prefix=spec.prefix, start_revision=max(0, spec.rev),
                   prev_kv=spec.prev_kv, progress_notify=spec.progress_notify)


def _show(p: Printer, resp: WatchResponse, command: list[str]) -> bool:
    """Print one response and run the command per event; False once the watch is over
    (canceled). A failing command raises CliError (exit 1)."""
    if resp.canceled:
        sys.stderr.write(f"watch was canceled ({resp.cancel_reason})\n")
        sys.stderr.flush()
        return False
    p.watch(resp)
    for ev in resp.events if command else ():
        _run_command(command, resp.header.revision, ev.type, ev.kv.key, ev.kv.value)
    return True


def _run_command(command: list[str], revision: int, etype: str, key: bytes, value: bytes) -> None:
    from protocol.client.cli.lock_elect import exec_failure, exit_failure
    from protocol.client.output import go_quote

    env = dict(os.environ)
    for prefix in ("QKV_WATCH_", "ETCD_WATCH_"):
        env.update({prefix + "REVISION": str(revision), prefix + "EVENT_TYPE": go_quote(etype.encode()),
                    prefix + "KEY": go_quote(key), prefix + "VALUE": go_quote(value)})
    sys.stdout.flush()
    try:
        rc = subprocess.call(command, env=env)
        failure = exit_failure(rc) if rc else ""
    except OSError as exc:
        failure = exec_failure(command[0], exc)
    if failure:
        shown = "[" + " ".join(go_quote(os.fsencode(a)) for a in command) + "]"
        sys.stderr.write(f"command {shown} error ({failure})\n")
        sys.stderr.flush()
        raise typer.Exit(EXIT_ERROR)


# -- interactive mode -------------------------------------------------------------------------
def parse_watch_line(tokens: list[str], env_key: str, env_range: str) -> WatchSpec:
    """One ``watch ...`` line of -i (``tokens[0] == "watch"``), flags parsed as etcdctl's
    flag set does. CliError(EXIT_BAD_ARGS) ends the session; ValueError only skips the line."""
    words = tokens[1:]
    command: list[str] = []
    if "--" in words:
        i = words.index("--")
        words, command = words[:i], words[i + 1:]
        if not command:
            raise CliError(ERR_SEPARATOR, EXIT_BAD_ARGS)
    prefix = prev_kv = progress_notify = False
    rev = 0
    positional: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        name, eq, value = w.partition("=")
        if name == "--rev":
            if not eq:
                if i + 1 >= len(words):
                    raise CliError("flag needs an argument: --rev", EXIT_BAD_ARGS)
                value, i = words[i + 1], i + 1
            try:
                rev = int(value)
            except ValueError:
                raise CliError(f'invalid argument "{value}" for "--rev" flag: strconv.ParseInt: parsing '
                               f'"{value}": invalid syntax', EXIT_BAD_ARGS) from None
        elif name in ("--prefix", "--prev-kv", "--progress-notify", "-i", "--interactive"):
            on = not eq or value.lower() in ("1", "t", "true")
            if name == "--prefix":
                prefix = on
            elif name == "--prev-kv":
                prev_kv = on
            elif name == "--progress-notify":
                progress_notify = on
        elif w.startswith("-") and len(w) > 1:
            kind = "flag" if w.startswith("--") else "shorthand flag"
            shown = w.split("=", 1)[0] if w.startswith("--") else f"'{w[1:2]}' in {w}"
            raise CliError(f"unknown {kind}: {shown}", EXIT_BAD_ARGS)
        else:
            positional.append(w)
        i += 1
    if env_key:
        if positional and not command:
            raise CliError(ERR_CONFLICT_ENV, EXIT_BAD_ARGS)
        positional = [env_key] + ([env_range] if env_range else []) + positional
    if not positional:
        raise CliError(ERR_ARGS, EXIT_BAD_ARGS)
    if len(positional) > 2:
        raise ValueError("too many arguments")
    if prefix and len(positional) > 1:
        raise ValueError("`range_end` and `--prefix` are mutually exclusive")
    return WatchSpec(arg(positional[0]), arg(positional[1]) if len(positional) > 1 else None, prefix, rev,
                     prev_kv, progress_notify, command)


def _stdin_lines(lines: queue.Queue[Optional[str]]) -> None:
    """Reader thread: stdin lines into the queue, None at the end (or on a read error)."""
    try:
        while True:
            line = sys.stdin.readline(MAX_LINE + 1) if sys.stdin is not None else ""
            if not line:
                break
            lines.put(line)
    except (OSError, ValueError):
        pass
    lines.put(None)


def _interactive(c: Client, p: Printer, env_key: str, env_range: str) -> None:
    from protocol.client.txnparse import TxnParseError, argify
    from protocol.errors import QkvError

    lines: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=_stdin_lines, args=(lines,), name="qkvctl-watch-stdin", daemon=True).start()
    watchers: list[Watcher] = []
    print_lock = threading.Lock()
    failed = threading.Event()

    def deliver(command: list[str]) -> Callable[[WatchResponse], None]:
        def on_response(resp: WatchResponse) -> None:
            if failed.is_set():
                return
            with print_lock:
                try:
                    _show(p, resp, command)
                except typer.Exit:
                    failed.set()
        return on_response

    def complain(text: str) -> None:
        with print_lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    try:
        with stop_on_signal() as stop:
            while not stop.is_set() and not failed.is_set():
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    raise CliError("Error reading watch request line: EOF", EXIT_INVALID_INPUT)
                if len(line) > MAX_LINE:
                    raise CliError(f"Error reading watch request line: longer than {MAX_LINE} bytes",
                                   EXIT_INVALID_INPUT)
                text = line[:-1] if line.endswith("\n") else line
                try:
                    tokens = argify(text)
                except TxnParseError as exc:
                    complain(f"Invalid command {text} ({exc})")
                    continue
                if not tokens:
                    complain(f"Invalid command: {text} (watch and progress supported)")
                    continue
                if tokens[0] == "progress":
                    for w in watchers:
                        w.request_progress()
                    continue
                if tokens[0] != "watch":
                    complain(f"Invalid command {text} (only support watch)")
                    continue
                if len(tokens) < 2 and not env_key:
                    complain(f"Invalid command {text} (command type or key is not provided)")
                    continue
                try:
                    spec = parse_watch_line(tokens, env_key, env_range)
                except ValueError as exc:
                    complain(f"Invalid command {text} ({exc})")
                    continue
                try:
                    watcher = _open(c, spec)
                except QkvError as exc:
                    complain(f"Invalid command {text} ({exc.message})")
                    continue
                watchers.append(watcher.start(deliver(spec.command)))
        if failed.is_set():
            raise typer.Exit(EXIT_ERROR)
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        for w in watchers:
            w.cancel()
