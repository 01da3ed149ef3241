"""What every ``qkvctl`` command shares: exit codes, the global flags, the error mapping,
the client and printer factories.

Rules:
- a command runs its body inside ``errors()``: a ``CliError``, ``TxnParseError``,
  ``UnsupportedFormat`` or ``QkvError`` becomes ``Error: <message>`` on stderr and the exit
  code etcdctl uses (1 failed request, 2 bad connection/auth, 3 bad txn input,
  4 unsupported feature, 128 bad arguments);
- zmq and the client are imported inside the functions (``qkvctl --help`` stays fast);
  their types come in under ``TYPE_CHECKING`` only.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, BinaryIO, Iterator, NoReturn, Optional, TypedDict, cast

import typer

from protocol import VERSION

if TYPE_CHECKING:
    from protocol.client.client import Client
    from protocol.client.output import Printer
    from protocol.client.types import KeyValue, ResponseHeader

DEFAULT_ENDPOINTS = "tcp://127.0.0.1:7379"
API_VERSION = "3.4"

EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_BAD_ARGS = 128
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C ended a command that runs until interrupted


_raw_args: list[str] = []


def set_raw_args(args: list[str]) -> None:
    """The argument list the command line parser got (root.run_app sets it)."""
    _raw_args[:] = args


def raw_args() -> list[str]:
    """The arguments as given, with the ``--`` that the parser drops (etcdctl's watch reads
    os.Args for it the same way)."""
    return list(_raw_args)


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ClientOptions(TypedDict):
    """The Client's security keyword arguments."""

    user: Optional[str]
    password: Optional[str]
    server_key: Optional[str]
    key_file: Optional[str]


@dataclass
class Globals:
    endpoints: list[str]
    command_timeout_s: float
    write_out: str
    is_hex: bool
    user: Optional[str] = None       # --user, without the ":password" part
    password: Optional[str] = None   # None: not given yet (asked for on first use)
    server_key: Optional[str] = None
    key_file: Optional[str] = None

    def client_options(self) -> ClientOptions:
        """The Client's security options; asks for the password on a terminal when
        --user named none (etcdctl's behavior)."""
        if self.user and self.password is None:
            self.password = ask_password("Password: ")
        return {"user": self.user or None, "password": self.password,
                "server_key": self.server_key or None, "key_file": self.key_file or None}


def ask_password(prompt: str) -> str:
    """etcdctl's speakeasy prompt: only on a terminal (stdin carries data otherwise)."""
    import getpass

    if not (sys.stdin is not None and sys.stdin.isatty()):
        raise CliError("the password is missing and stdin is not a terminal to ask for it: "
                       "give --password or --user name:password", EXIT_ERROR)
    return getpass.getpass(prompt)


def split_user(user: Optional[str], password: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """etcdctl's --user/--password: with --password, --user is the whole name; otherwise
    ``name:password`` splits at the first colon; a name alone leaves the password to ask."""
    if not user:
        return None, None
    if password:
        return user, password
    name, sep, pw = user.partition(":")
    return (name, pw) if sep else (user, None)


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``5s``, ``500ms``, ``1m30s``); a bare number is seconds."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise CliError(f'invalid duration "{text}"', EXIT_BAD_ARGS)
    return total


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


def out() -> BinaryIO:
    """stdout as bytes (flushed first, so text and bytes keep their order)."""
    sys.stdout.flush()
    return cast("BinaryIO", getattr(sys.stdout, "buffer", sys.stdout))


def err() -> BinaryIO:
    sys.stderr.flush()
    return cast("BinaryIO", getattr(sys.stderr, "buffer", sys.stderr))


def say(text: str) -> None:
    """One line on stdout, flushed."""
    out().write(text.encode() + b"\n")
    sys.stdout.flush()


def arg(s: str) -> bytes:
    """A command-line argument as the bytes the user typed."""
    return os.fsencode(s)


def nargs(args: Optional[list[str]], n: int, message: str) -> list[str]:
    """Exactly ``n`` positional arguments, or ``CliError(message)`` (bad args)."""
    args = args or []
    if len(args) != n:
        raise CliError(message, EXIT_BAD_ARGS)
    return args


@contextmanager
def errors() -> Iterator[None]:
    from protocol.client.output import UnsupportedFormat
    from protocol.client.txnparse import TxnParseError
    from protocol.errors import AuthFailed, QkvError

    try:
        yield
    except CliError as exc:
        fail(str(exc), exc.exit_code)
    except TxnParseError as exc:
        fail(str(exc), exc.exit_code)
    except UnsupportedFormat as exc:
        fail(str(exc), EXIT_BAD_FEATURE)
    except AuthFailed as exc:  # etcdctl: the client could not be created (ExitBadConnection)
        fail(exc.message, EXIT_BAD_CONNECTION)
    except QkvError as exc:
        fail(exc.message, EXIT_ERROR)
    finally:
        try:
            sys.stdout.flush()
        except ValueError:
            pass


@contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set the yielded event instead of raising KeyboardInterrupt: a
    command that runs until interrupted checks it between bounded waits and leaves through
    its own cleanup. (A KeyboardInterrupt raised at an arbitrary point can land between a
    lock's acquire and its `with` body, leaving the lock held, and the cleanup that needs it
    then hangs: `qkvctl elect -l` once ignored Ctrl-C that way.)"""
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (in-process tests): the caller's loop still ends
            pass
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def fail(message: str, code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def client(g: Globals, endpoints: list[str] | None = None) -> Client:
    from protocol.client.client import Client

    try:
        return Client(endpoints or g.endpoints, timeout=g.command_timeout_s, **g.client_options())
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_ARGS) from None


def printer(g: Globals, value_only: bool = False) -> Printer:
    from protocol.client.output import Printer

    return Printer(g.write_out, out(), is_hex=g.is_hex, value_only=value_only)


def print_kv(g: Globals, header: ResponseHeader, kv: KeyValue) -> None:
    """One key-value pair as ``get`` prints it (lock, elect)."""
    from protocol.client.types import RangeResponse

    printer(g).get(RangeResponse(header, [kv], False, 1))
    sys.stdout.flush()


def cluster_endpoints(g: Globals, cluster: bool) -> list[str]:
    """The --endpoints, or with --cluster every member's client URLs (from member list)."""
    if not cluster:
        return g.endpoints
    with client(g) as c:
        members = c.member_list().members
    urls = [u for m in members for u in m.client_urls[:1]]
    if len(urls) < len(members):
        unknown = [m.name for m in members if not m.client_urls]
        sys.stderr.write(f"client URLs of {', '.join(unknown)} are not known yet (member not reachable)\n")
    return urls


CLUSTER_OPT = typer.Option(False, "--cluster", help="use all endpoints from the cluster member list")
