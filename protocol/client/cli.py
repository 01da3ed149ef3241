"""``qkvctl``: etcdctl v3's commands, flags and output shapes for quorumkv.

zmq and the client are imported inside the commands, so ``qkvctl --help`` starts fast.
Errors print ``Error: <message>`` on stderr and exit with etcdctl's codes: 1 for a
failed request, 128 for bad arguments, 3 for bad txn input, 4 for an unsupported
feature (for example ``-w table`` on ``get``).
Global flags may appear anywhere on the line, as with etcdctl (``qkvctl get k -w json``).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import typer

DEFAULT_ENDPOINTS = "tcp://127.0.0.1:7379"
VERSION = "0.1.0"
API_VERSION = "3.4"

EXIT_ERROR = 1
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_BAD_ARGS = 128

app = typer.Typer(
    name="qkvctl", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="A command line client for quorumkv (etcdctl v3 compatible).",
)
endpoint_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Endpoint related commands")
benchmark_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="Benchmark the server (etcd tools/benchmark style)")
member_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="Membership related commands")
app.add_typer(endpoint_app, name="endpoint")
app.add_typer(benchmark_app, name="benchmark")
lease_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Lease related commands")
app.add_typer(member_app, name="member")
app.add_typer(lease_app, name="lease")
alarm_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Alarm related commands")
app.add_typer(alarm_app, name="alarm")
snapshot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Manages etcd node snapshots")
app.add_typer(snapshot_app, name="snapshot")
auth_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Enable or disable authentication")
app.add_typer(auth_app, name="auth")
user_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="User related commands")
app.add_typer(user_app, name="user")
role_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Role related commands")
app.add_typer(role_app, name="role")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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

    def client_options(self) -> dict[str, Any]:
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


def _g(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


def _out() -> Any:
    sys.stdout.flush()
    return getattr(sys.stdout, "buffer", sys.stdout)


def _err() -> Any:
    sys.stderr.flush()
    return getattr(sys.stderr, "buffer", sys.stderr)


def _arg(s: str) -> bytes:
    """A command-line argument as the bytes the user typed."""
    return os.fsencode(s)


@contextmanager
def _errors() -> Iterator[None]:
    from protocol.client.output import UnsupportedFormat
    from protocol.client.txnparse import TxnParseError
    from protocol.errors import AuthFailed, QkvError

    try:
        yield
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except TxnParseError as exc:
        _fail(str(exc), exc.exit_code)
    except UnsupportedFormat as exc:
        _fail(str(exc), EXIT_BAD_FEATURE)
    except AuthFailed as exc:  # etcdctl: the client could not be created (ExitBadConnection)
        _fail(exc.message, EXIT_BAD_CONNECTION)
    except QkvError as exc:
        _fail(exc.message, EXIT_ERROR)
    finally:
        try:
            sys.stdout.flush()
        except ValueError:
            pass


def _fail(message: str, code: int) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _client(g: Globals, endpoints: list[str] | None = None) -> Any:
    from protocol.client.client import Client

    try:
        return Client(endpoints or g.endpoints, timeout=g.command_timeout_s, **g.client_options())
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_ARGS) from None


def _printer(g: Globals, value_only: bool = False) -> Any:
    from protocol.client.output import Printer

    return Printer(g.write_out, _out(), is_hex=g.is_hex, value_only=value_only)


# -- global options ---------------------------------------------------------------------------
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
    with _errors():
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


# -- KV commands ----------------------------------------------------------------------------------
@app.command("put")
def put_cmd(
    ctx: typer.Context,
    key: Optional[str] = typer.Argument(None),
    value: Optional[str] = typer.Argument(None, help="the value (read from stdin if omitted)"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="return the previous key-value pair"),
    ignore_value: bool = typer.Option(False, "--ignore-value", help="update with current value"),
    ignore_lease: bool = typer.Option(False, "--ignore-lease", help="update with current lease"),
    lease: str = typer.Option("0", "--lease", help="lease ID (in hexadecimal) to attach"),
) -> None:
    """Puts the given key into the store."""
    from protocol.client.txnparse import parse_lease

    g = _g(ctx)
    with _errors():
        if key is None:
            raise CliError("put command needs 1 argument and input from stdin or 2 arguments",
                           EXIT_BAD_ARGS)
        if ignore_value and value is not None:
            raise CliError("put command needs only 1 argument when 'ignore-value' is set",
                           EXIT_BAD_ARGS)
        data = b""
        if not ignore_value:
            if value is not None:
                data = _arg(value)
            else:
                stdin = getattr(sys.stdin, "buffer", sys.stdin)
                data = stdin.read() if stdin is not None else b""
                if isinstance(data, str):
                    data = data.encode()
                if not data:
                    raise CliError("put command needs 1 argument and input from stdin or "
                                   "2 arguments", EXIT_BAD_ARGS)
        lease_id = parse_lease(lease)
        printer = _printer(g)
        with _client(g) as c:
            resp = c.put(_arg(key), data, lease=lease_id, prev_kv=prev_kv,
                         ignore_value=ignore_value, ignore_lease=ignore_lease)
        printer.put(resp)


def _range_args(args: list[str], prefix: bool, from_key: bool, what: str) -> tuple[bytes, Any]:
    if not args or len(args) > 2:
        raise CliError(f"{what} command needs one argument as key and an optional argument as "
                       "range_end", EXIT_BAD_ARGS)
    if prefix and from_key:
        raise CliError("`--prefix` and `--from-key` cannot be set at the same time, choose one",
                       EXIT_BAD_ARGS)
    if len(args) > 1 and (prefix or from_key):
        raise CliError("too many arguments, only accept one argument when `--prefix` or "
                       "`--from-key` is set", EXIT_BAD_ARGS)
    return _arg(args[0]), (_arg(args[1]) if len(args) > 1 else None)


@app.command("get")
def get_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    consistency: str = typer.Option("l", "--consistency", help="Linearizable(l) or Serializable(s)"),
    from_key: bool = typer.Option(False, "--from-key",
                                  help="Get keys that are greater than or equal to the given key"),
    keys_only: bool = typer.Option(False, "--keys-only", help="Get only the keys"),
    count_only: bool = typer.Option(False, "--count-only", help="Get only the count"),
    limit: int = typer.Option(0, "--limit", help="Maximum number of results"),
    order: str = typer.Option("", "--order", help="Order of results; ASCEND or DESCEND"),
    prefix: bool = typer.Option(False, "--prefix", help="Get keys with matching prefix"),
    print_value_only: bool = typer.Option(False, "--print-value-only",
                                          help='Only write values when using the "simple" output format'),
    rev: int = typer.Option(0, "--rev", help="Specify the kv revision"),
    sort_by: str = typer.Option("", "--sort-by",
                                help="Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION"),
) -> None:
    """Gets the key or a range of keys."""
    from protocol.client.txnparse import TxnParseError, sort_options

    g = _g(ctx)
    with _errors():
        key, range_end = _range_args(args or [], prefix, from_key, "get")
        if consistency not in ("l", "s"):
            raise CliError(f'unknown consistency flag "{consistency}"', EXIT_BAD_FEATURE)
        try:
            sort_order, sort_target = sort_options(order, sort_by)
        except TxnParseError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        if count_only and g.write_out not in ("fields", "json"):
            raise CliError("--count-only is only for `--write-out=fields`", EXIT_BAD_ARGS)
        if print_value_only and g.write_out != "simple":
            raise CliError("print-value-only is only for `--write-out=simple`", EXIT_BAD_ARGS)
        printer = _printer(g, value_only=print_value_only)
        printer._need("simple", "json", "fields")
        with _client(g) as c:
            resp = c.get(key, range_end, prefix=prefix, from_key=from_key, limit=max(0, limit),
                         revision=max(0, rev), sort_order=sort_order, sort_target=sort_target,
                         serializable=consistency == "s", keys_only=keys_only,
                         count_only=count_only)
        printer.get(resp)


@app.command("del")
def del_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    prefix: bool = typer.Option(False, "--prefix", help="delete keys with matching prefix"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="return deleted key-value pairs"),
    from_key: bool = typer.Option(False, "--from-key",
                                  help="delete keys that are greater than or equal to the given key"),
) -> None:
    """Removes the specified key or range of keys [key, range_end)."""
    g = _g(ctx)
    with _errors():
        key, range_end = _range_args(args or [], prefix, from_key, "del")
        printer = _printer(g)
        printer._need("simple", "json", "fields")
        with _client(g) as c:
            resp = c.delete(key, range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        printer.delete(resp)


@app.command("watch")
def watch_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<key> [range_end]"),
    prefix: bool = typer.Option(False, "--prefix", help="Watch on a prefix if prefix is set"),
    rev: int = typer.Option(0, "--rev", help="Revision to start watching"),
    prev_kv: bool = typer.Option(False, "--prev-kv", help="get the previous key-value pair before the event happens"),
    progress_notify: bool = typer.Option(False, "--progress-notify", help="get periodic watch progress notification from server"),
) -> None:
    """Watches events stream on keys or prefixes (until Ctrl-C)."""
    g = _g(ctx)
    with _errors():
        args = args or []
        if not args:
            raise CliError("watch in non-interactive mode requires at least one argument", EXIT_BAD_ARGS)
        if len(args) > 2:
            raise CliError("too many arguments", EXIT_BAD_ARGS)
        if prefix and len(args) > 1:
            raise CliError("`--prefix` cannot be set with range_end", EXIT_BAD_ARGS)
        key, range_end = _arg(args[0]), (_arg(args[1]) if len(args) > 1 else None)
        printer = _printer(g)
        printer._need("simple", "json", "fields")
        with _client(g) as c:
            with c.watch(key, range_end, prefix=prefix, start_revision=max(0, rev), prev_kv=prev_kv,
                         progress_notify=progress_notify) as watcher:
                for resp in watcher:
                    if resp.canceled:
                        sys.stderr.write(f"watch was canceled ({resp.cancel_reason})\n")
                        sys.stderr.flush()
                        break
                    _print_watch(printer, resp)
        raise CliError("watch is canceled by the server", 5)


def _print_watch(printer: Any, resp: Any) -> None:
    """etcdctl 3.4's watch output for one response."""
    from protocol.client.output import dumps, header_json, kv_json

    out = printer.out
    if resp.progress_notify:
        out.write(b"progress notify: %d\n" % resp.revision)
    if printer.fmt == "json":
        events = []
        for e in resp.events:
            ev: dict[str, Any] = {}
            if e.type == "DELETE":
                ev["type"] = 1
            ev["kv"] = kv_json(e.kv)
            if e.prev_kv is not None:
                ev["prev_kv"] = kv_json(e.prev_kv)
            events.append(ev)
        printer._line(dumps({"Header": header_json(resp.header), "Events": events,
                             "CompactRevision": resp.compact_revision, "Canceled": resp.canceled,
                             "Created": False}))
    elif printer.fmt == "fields":
        printer._hdr_fields(resp.header)
        for e in resp.events:
            printer._line(f'"Type" : {e.type}')
            if e.prev_kv is not None:
                printer._kv_fields(e.prev_kv, "Prev")
            printer._kv_fields(e.kv)
    else:
        for e in resp.events:
            printer._line(e.type)
            if e.prev_kv is not None:
                printer._kv_simple(e.prev_kv)
            printer._kv_simple(e.kv)
    out.flush()


@app.command("txn")
def txn_cmd(
    ctx: typer.Context,
    interactive: bool = typer.Option(False, "-i", "--interactive",
                                     help="Input transaction in interactive mode"),
) -> None:
    """Txn processes all the requests in one transaction (read from stdin)."""
    from protocol.client.txnparse import parse_txn

    g = _g(ctx)
    with _errors():
        printer = _printer(g)
        printer._need("simple", "json", "fields")

        def prompt(title: str) -> None:
            sys.stdout.write(title + "\n")
            sys.stdout.flush()

        compares, success, failure = parse_txn(sys.stdin, prompt if interactive else None)
        with _client(g) as c:
            resp = c.txn(compares, success, failure)
        printer.txn(resp)


@app.command("compaction")
def compaction_cmd(
    ctx: typer.Context,
    revision: Optional[str] = typer.Argument(None, metavar="<revision>"),
    physical: bool = typer.Option(False, "--physical",
                                  help="'true' to wait for compaction to physically remove all old revisions"),
) -> None:
    """Compacts the event history in the store."""
    g = _g(ctx)
    with _errors():
        if revision is None:
            raise CliError("compaction command needs 1 argument", EXIT_BAD_ARGS)
        try:
            rev = int(revision)
        except ValueError:
            raise CliError(f'strconv.ParseInt: parsing "{revision}": invalid syntax') from None
        printer = _printer(g)
        with _client(g) as c:
            c.compact(rev, physical=physical)
        printer.compact(rev)


@app.command("version")
def version_cmd() -> None:
    """Prints the version of qkvctl."""
    sys.stdout.write(f"qkvctl version: {VERSION}\nAPI version: {API_VERSION}\n")


# -- endpoint ---------------------------------------------------------------------------------
def _cluster_endpoints(g: Globals, cluster: bool) -> list[str]:
    """The --endpoints, or with --cluster every member's client URLs (from member list)."""
    if not cluster:
        return g.endpoints
    with _client(g) as c:
        members = c.member_list().members
    urls = [u for m in members for u in m.client_urls[:1]]
    if len(urls) < len(members):
        unknown = [m.name for m in members if not m.client_urls]
        sys.stderr.write(f"client URLs of {', '.join(unknown)} are not known yet (member not reachable)\n")
    return urls


_CLUSTER_OPT = typer.Option(False, "--cluster", help="use all endpoints from the cluster member list")


@endpoint_app.command("status")
def endpoint_status_cmd(ctx: typer.Context, cluster: bool = _CLUSTER_OPT) -> None:
    """Prints out the status of endpoints specified in `--endpoints` flag."""
    g = _g(ctx)
    with _errors():
        from protocol.errors import QkvError

        printer = _printer(g)
        statuses = []
        failed = False
        for ep in _cluster_endpoints(g, cluster):
            try:
                with _client(g, [ep]) as c:
                    statuses.append((ep, c.status()))
            except QkvError as exc:
                failed = True
                sys.stderr.write(f"Failed to get the status of endpoint {ep} ({exc.message})\n")
                sys.stderr.flush()
        printer.endpoint_status(statuses)
        if failed:
            raise typer.Exit(EXIT_ERROR)


@endpoint_app.command("health")
def endpoint_health_cmd(ctx: typer.Context, cluster: bool = _CLUSTER_OPT) -> None:
    """Checks the healthiness of endpoints specified in `--endpoints` flag: a linearizable
    get of the key "health" within --command-timeout."""
    g = _g(ctx)
    with _errors():
        from protocol.client.output import go_duration
        from protocol.errors import QkvError

        printer = _printer(g)
        endpoints = _cluster_endpoints(g, cluster)
        results: list[dict[str, Any]] = [{} for _ in endpoints]

        def check(i: int, ep: str) -> None:
            t0 = time.perf_counter()
            try:
                with _client(g, [ep]) as c:
                    c.get("health")
                results[i] = {"endpoint": ep, "health": True,
                              "took": go_duration(time.perf_counter() - t0), "error": ""}
            except QkvError as exc:
                results[i] = {"endpoint": ep, "health": False,
                              "took": go_duration(time.perf_counter() - t0), "error": exc.message}

        threads = [threading.Thread(target=check, args=(i, ep), daemon=True)
                   for i, ep in enumerate(endpoints)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        printer.endpoint_health(results, _err())
        if not all(r["health"] for r in results):
            raise CliError("unhealthy cluster", EXIT_ERROR)


@endpoint_app.command("hashkv")
def endpoint_hashkv_cmd(
    ctx: typer.Context,
    rev: int = typer.Option(0, "--rev", help="maximum revision to hash (default: latest revision)"),
    cluster: bool = _CLUSTER_OPT,
) -> None:
    """Prints the KV history hash for each endpoint in --endpoints."""
    g = _g(ctx)
    with _errors():
        from protocol.client.output import dumps, header_json, render_table

        rows = []
        for ep in _cluster_endpoints(g, cluster):
            with _client(g, [ep]) as c:
                rows.append((ep, c.hash_kv(rev)))
        if g.write_out == "json":
            _out().write((dumps([{"Endpoint": ep, "HashKV": {
                "header": header_json(r.header), "hash": r.hash, "compact_revision": r.compact_revision,
                "hash_revision": r.hash_revision}} for ep, r in rows]) + "\n").encode())
        elif g.write_out == "table":
            _out().write(render_table(["endpoint", "hash"], [[ep, str(r.hash)] for ep, r in rows]).encode())
        else:
            for ep, r in rows:
                _out().write(f"{ep}, {r.hash}\n".encode())


# -- member -----------------------------------------------------------------------------------
@member_app.command("list")
def member_list_cmd(ctx: typer.Context) -> None:
    """Lists all members in the cluster."""
    g = _g(ctx)
    with _errors():
        from protocol.client.output import dumps, header_json, render_table

        with _client(g) as c:
            resp = c.member_list()
        rows = [[f"{m.id:x}", "started" if m.client_urls else "unstarted", m.name, ",".join(m.peer_urls),
                 ",".join(m.client_urls), str(m.is_learner).lower()] for m in resp.members]
        if g.write_out == "json":
            _out().write((dumps({"header": header_json(resp.header), "members": [
                {"ID": m.id, "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls,
                 "watchURLs": m.watch_urls, "isLearner": m.is_learner} for m in resp.members]}) + "\n").encode())
        elif g.write_out == "table":
            _out().write(render_table(["ID", "status", "name", "peer addrs", "client addrs", "is learner"],
                                      rows).encode())
        else:
            for row in rows:
                _out().write((", ".join(row) + "\n").encode())


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


def _member_change_out(g: Globals, resp: Any, line: str) -> None:
    from protocol.client.output import dumps, header_json

    if g.write_out == "json":
        body: dict[str, Any] = {"header": header_json(resp.header)}
        for key in ("member", "members"):
            value = getattr(resp, key, None)
            if value is None:
                continue
            ms = value if isinstance(value, list) else [value]
            out = [{"ID": m.id, "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls,
                    "isLearner": m.is_learner} for m in ms]
            body[key] = out if isinstance(value, list) else out[0]
        _out().write((dumps(body) + "\n").encode())
    else:
        _out().write((line + "\n").encode())


@member_app.command("add")
def member_add_cmd(ctx: typer.Context,
                   name: str = typer.Argument(..., help="name of the new member"),
                   peer_urls: str = typer.Option(..., "--peer-urls", help="comma separated peer URLs for the new member"),
                   learner: bool = typer.Option(False, "--learner", help="indicates if the new member is raft learner"),
                   peer_key: str = typer.Option("", "--peer-key", help="the new member's peer public key (Z85, or "
                                                "@ and its NAME.key file from qkv keygen); required with peer security")
                   ) -> None:
    """Adds a member into the cluster."""
    g = _g(ctx)
    with _errors():
        urls = _peer_urls_opt(peer_urls)
        peer_key = _peer_key_opt(peer_key)
        with _client(g) as c:
            resp = c.member_add(name, urls, is_learner=learner, peer_key=peer_key)
        new_id = resp.member.id
        _member_change_out(g, resp, f"Member {new_id:16x} added to cluster {resp.header.cluster_id:16x}")
        if g.write_out not in ("json", "fields", "table"):
            conf = [f"{name if m.id == new_id else m.name}={u}" for m in resp.members for u in m.peer_urls]
            _out().write(("\n"
                          f'QKV_NAME="{name}"\n'
                          f'QKV_INITIAL_CLUSTER="{",".join(conf)}"\n'
                          f'QKV_INITIAL_ADVERTISE_PEER_URLS="{",".join(urls)}"\n'
                          'QKV_INITIAL_CLUSTER_STATE="existing"\n').encode())
            keys = [f"{name if m.id == new_id else m.name}={m.peer_key}" for m in resp.members if m.peer_key]
            if keys:
                # single quotes: Z85 keys hold $, ! and & that a shell would expand in double quotes
                _out().write(f"QKV_INITIAL_CLUSTER_KEYS='{','.join(keys)}'\n".encode())


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


@member_app.command("remove")
def member_remove_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex")) -> None:
    """Removes a member from the cluster."""
    g = _g(ctx)
    with _errors():
        mid = _member_id_arg(member_id)
        with _client(g) as c:
            resp = c.member_remove(mid)
        _member_change_out(g, resp, f"Member {mid:16x} removed from cluster {resp.header.cluster_id:16x}")


@member_app.command("update")
def member_update_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex"),
                      peer_urls: str = typer.Option(..., "--peer-urls", help="comma separated peer URLs for the updated member")
                      ) -> None:
    """Updates a member in the cluster."""
    g = _g(ctx)
    with _errors():
        mid = _member_id_arg(member_id)
        urls = _peer_urls_opt(peer_urls)
        with _client(g) as c:
            resp = c.member_update(mid, urls)
        _member_change_out(g, resp, f"Member {mid:16x} updated in cluster {resp.header.cluster_id:16x}")


@member_app.command("promote")
def member_promote_cmd(ctx: typer.Context, member_id: str = typer.Argument(..., help="member ID, in hex")) -> None:
    """Promotes a non-voting member in the cluster."""
    g = _g(ctx)
    with _errors():
        mid = _member_id_arg(member_id)
        with _client(g) as c:
            resp = c.member_promote(mid)
        _member_change_out(g, resp, f"Member {mid:16x} promoted in cluster {resp.header.cluster_id:16x}")


@app.command("move-leader")
def move_leader_cmd(ctx: typer.Context, transferee_id: str = typer.Argument(..., help="member id, in hex")) -> None:
    """Transfers leadership to another member of the cluster."""
    g = _g(ctx)
    with _errors():
        try:
            target = int(transferee_id, 16)
        except ValueError:
            raise CliError(f"bad member id {transferee_id!r}: expected hex", EXIT_BAD_ARGS) from None
        with _client(g) as c:
            leader = c.status().leader
            c.move_leader(target)
        _out().write(f"Leadership transferred from {leader:x} to {target:x}\n".encode())


# -- maintenance: alarm, defrag --------------------------------------------------------------
def _print_alarms(g: Globals, resp: Any) -> None:
    from protocol.client.output import dumps, header_json

    if g.write_out == "json":
        _out().write((dumps({"header": header_json(resp.header), "alarms": [
            {"memberID": a.member_id, "alarm": a.alarm} for a in resp.alarms]}) + "\n").encode())
    else:
        for a in resp.alarms:
            _out().write(f"{a}\n".encode())


@alarm_app.command("list")
def alarm_list_cmd(ctx: typer.Context) -> None:
    """Lists all alarms."""
    g = _g(ctx)
    with _errors():
        with _client(g) as c:
            _print_alarms(g, c.alarm_list())


@alarm_app.command("disarm")
def alarm_disarm_cmd(ctx: typer.Context) -> None:
    """Disarms all alarms."""
    g = _g(ctx)
    with _errors():
        with _client(g) as c:
            _print_alarms(g, c.alarm_disarm())


@app.command("defrag")
def defrag_cmd(ctx: typer.Context, cluster: bool = _CLUSTER_OPT) -> None:
    """Defragments the storage of the etcd members with given endpoints (the members keep
    serving meanwhile)."""
    g = _g(ctx)
    with _errors():
        from protocol.errors import QkvError

        failed = False
        for ep in _cluster_endpoints(g, cluster):
            try:
                with _client(g, [ep]) as c:
                    c.defragment()
                _out().write(f"Finished defragmenting etcd member[{ep}]\n".encode())
            except QkvError as exc:
                failed = True
                sys.stderr.write(f"Failed to defragment etcd member[{ep}] ({exc.message})\n")
                sys.stderr.flush()
        if failed:
            raise typer.Exit(EXIT_ERROR)


# -- lease ------------------------------------------------------------------------------------------
EXIT_BAD_CONNECTION = 2


def _lease_id_arg(text: Optional[str], what: str) -> int:
    if text is None:
        raise CliError(f"lease {what} command needs 1 argument", EXIT_BAD_ARGS)
    try:
        return int(text, 16)
    except ValueError:
        raise CliError(f'bad lease ID arg (strconv.ParseInt: parsing "{text}": invalid syntax), '
                       "expecting ID in Hex", EXIT_BAD_ARGS) from None


def _lease_json(header: Any, **fields: Any) -> str:
    from protocol.client.output import dumps

    h = header
    return dumps({"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision,
                  "raft_term": h.raft_term, **fields})


def _lease_fields(header: Any, rows: list[tuple[str, Any]]) -> None:
    printer = _printer(Globals([], 1, "fields", False))
    printer._hdr_fields(header)
    for name, value in rows:
        printer._line(f'"{name}" : {value}')


def _need_lease_format(g: Globals) -> None:
    from protocol.client.output import UnsupportedFormat

    if g.write_out not in ("simple", "json", "fields"):
        raise UnsupportedFormat(f"{g.write_out} not supported as output format")


def _say(text: str) -> None:
    _out().write(text.encode() + b"\n")
    sys.stdout.flush()


@lease_app.command("grant")
def lease_grant_cmd(ctx: typer.Context, ttl: Optional[str] = typer.Argument(None, metavar="<ttl>")) -> None:
    """Creates leases."""
    g = _g(ctx)
    with _errors():
        if ttl is None:
            raise CliError("lease grant command needs TTL argument", EXIT_BAD_ARGS)
        try:
            seconds = int(ttl)
        except ValueError:
            raise CliError(f'bad TTL (strconv.ParseInt: parsing "{ttl}": invalid syntax)',
                           EXIT_BAD_ARGS) from None
        _need_lease_format(g)
        with _client(g) as c:
            try:
                resp = c.lease_grant(seconds)
            except Exception as exc:
                from protocol.errors import QkvError

                if isinstance(exc, QkvError):
                    raise CliError(f"failed to grant lease ({exc.message})") from None
                raise
        if g.write_out == "json":
            _say(_lease_json(resp.header, ID=resp.id, TTL=resp.ttl, Error=""))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [("ID", resp.id), ("TTL", resp.ttl)])
        else:
            _say(f"lease {resp.id:016x} granted with TTL({resp.ttl}s)")


@lease_app.command("revoke")
def lease_revoke_cmd(ctx: typer.Context, lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>")) -> None:
    """Revokes leases."""
    from protocol.errors import QkvError

    g = _g(ctx)
    with _errors():
        lid = _lease_id_arg(lease_id, "revoke")
        _need_lease_format(g)
        with _client(g) as c:
            try:
                resp = c.lease_revoke(lid)
            except QkvError as exc:
                raise CliError(f"failed to revoke lease ({exc.message})") from None
        if g.write_out == "json":
            from protocol.client.output import dumps, header_json

            _say(dumps({"header": header_json(resp.header)}))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [])
        else:
            _say(f"lease {lid:016x} revoked")


@lease_app.command("timetolive")
def lease_timetolive_cmd(
    ctx: typer.Context,
    lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>"),
    keys: bool = typer.Option(False, "--keys", help="Get keys attached to this lease"),
) -> None:
    """Get lease information."""
    import base64

    from protocol.client.output import go_quote

    g = _g(ctx)
    with _errors():
        lid = _lease_id_arg(lease_id, "timetolive")
        _need_lease_format(g)
        with _client(g) as c:
            resp = c.lease_time_to_live(lid, keys=keys)
        if g.write_out == "json":
            _say(_lease_json(resp.header, id=resp.id or lid, ttl=resp.ttl, **{
                "granted-ttl": resp.granted_ttl,
                "keys": [base64.b64encode(k).decode() for k in resp.keys] if resp.keys else None}))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [("ID", resp.id or lid), ("TTL", resp.ttl),
                                        ("GrantedTTL", resp.granted_ttl)]
                          + [("Key", go_quote(k)) for k in resp.keys])
        elif resp.ttl == -1:
            _say(f"lease {lid:016x} already expired")
        else:
            text = f"lease {lid:016x} granted with TTL({resp.granted_ttl}s), remaining({resp.ttl}s)"
            if keys:
                names = " ".join(os.fsdecode(k) for k in resp.keys)
                text += f", attached keys([{names}])"
            _say(text)


@lease_app.command("list")
def lease_list_cmd(ctx: typer.Context) -> None:
    """List all active leases."""
    g = _g(ctx)
    with _errors():
        _need_lease_format(g)
        with _client(g) as c:
            resp = c.lease_leases()
        if g.write_out == "json":
            _say(_lease_json(resp.header, leases=[{"id": l.id} for l in resp.leases]))
        elif g.write_out == "fields":
            _lease_fields(resp.header, [("ID", l.id) for l in resp.leases])
        else:
            _say(f"found {len(resp.leases)} leases")
            for l in resp.leases:
                _say(f"{l.id:016x}")


def _keepalived(g: Globals, header: Any, lid: int, ttl: int) -> None:
    if g.write_out == "json":
        _say(_lease_json(header, ID=lid, TTL=ttl))
    elif g.write_out == "fields":
        _lease_fields(header, [("ID", lid), ("TTL", ttl)])
    else:
        _say(f"lease {lid:016x} keepalived with TTL({ttl})")


@lease_app.command("keep-alive")
def lease_keepalive_cmd(
    ctx: typer.Context,
    lease_id: Optional[str] = typer.Argument(None, metavar="<leaseID>"),
    once: bool = typer.Option(False, "--once", help="Resets the keep-alive time to its original value and exits immediately"),
) -> None:
    """Keeps leases alive (renew), every TTL/3 seconds until Ctrl-C or the lease expires."""
    from protocol.errors import LeaseNotFound, QkvError

    g = _g(ctx)
    with _errors():
        lid = _lease_id_arg(lease_id, "keep-alive")
        _need_lease_format(g)
        with _client(g) as c:
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
            while True:
                sent = time.monotonic()
                try:
                    resp = router.keepalive(lid)
                except LeaseNotFound:
                    break
                except QkvError:
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                    continue
                if resp.ttl <= 0:
                    break
                deadline = sent + resp.ttl
                _keepalived(g, resp.header, lid, resp.ttl)
                time.sleep(max(resp.ttl / 3.0, 0.05))
        if g.write_out == "simple":
            _say(f"lease {lid:016x} expired or revoked.")


# -- lock and elect -------------------------------------------------------------------------------
def _print_kv(g: Globals, header: Any, kv: Any) -> None:
    from protocol.client.types import RangeResponse

    _printer(g).get(RangeResponse(header, [kv], False, 1))
    sys.stdout.flush()


def _wait_for_signal(session: Any) -> bool:
    """Block until Ctrl-C / SIGTERM (True) or the session is lost (False)."""
    import signal

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (tests)
            pass
    try:
        while not stop.is_set():
            if session.done.wait(0.1):
                return False
        return True
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@app.command("lock", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
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

    g = _g(ctx)
    with _errors():
        args = args or []
        if not args:
            raise CliError("lock takes a lock name argument and an optional command to execute",
                           EXIT_BAD_ARGS)
        with _client(g) as c:
            session = Session(c, ttl=ttl)
            try:
                lock = Lock(session, _arg(args[0]))
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
                        _print_kv(g, kv.header, kv.kvs[0])
                    if not _wait_for_signal(session):
                        raise CliError("session expired")
                finally:
                    try:
                        lock.release()
                    except Exception:
                        pass
            finally:
                session.close()


@app.command("elect")
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

    g = _g(ctx)
    with _errors():
        args = args or []
        if len(args) != 1 + (0 if listen else 1):
            if not args or len(args) > 2:
                raise CliError("elect takes one election name argument and an optional proposal",
                               EXIT_BAD_ARGS)
            if not listen and len(args) == 1:
                raise CliError("no proposal argument but -l not set", EXIT_BAD_ARGS)
            if listen and len(args) == 2:
                raise CliError("proposal given but -l set", EXIT_BAD_ARGS)
        name = _arg(args[0])
        with _client(g) as c:
            if listen:
                from protocol.client.concurrency import Observer
                from protocol.client.types import ResponseHeader

                with Observer(c, name + b"/") as it:
                    try:
                        for kv in it:
                            _print_kv(g, ResponseHeader(revision=it.revision), kv)
                    except KeyboardInterrupt:
                        return
                return
            session = Session(c, ttl=ttl)
            try:
                e = Election(session, name)
                e.campaign(_arg(args[1]))
                try:
                    lead = c.get(e.key)
                    if lead.kvs:
                        _print_kv(g, lead.header, lead.kvs[0])
                    if not _wait_for_signal(session):
                        raise CliError("session expired")
                finally:
                    try:
                        e.resign()
                    except Exception:
                        pass
            finally:
                session.close()


# -- benchmark ------------------------------------------------------------------------------------
@dataclass
class _BenchCommon:
    clients: Optional[int] = None
    total: Optional[int] = None
    duration: Optional[float] = None


@benchmark_app.callback()
def _bench_root(
    ctx: typer.Context,
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent logical clients"),
    total: Optional[int] = typer.Option(None, "--total", help="total number of requests"),
    duration: Optional[float] = typer.Option(None, "--duration", help="run for this many seconds"),
) -> None:
    ctx.obj = _BenchCommon(clients, total, duration)


def _bench(ctx: typer.Context, kind: str, clients: Optional[int], total: Optional[int],
           duration: Optional[float], **kw: Any) -> None:
    from protocol.client import bench
    from protocol.client.client import normalize_endpoint

    g = _g(ctx)
    common = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, _BenchCommon) \
        else _BenchCommon()
    with _errors():
        clients = clients or common.clients or 1
        total = total if total is not None else common.total
        duration = duration if duration is not None else common.duration
        if total is not None and total < 1:
            raise CliError("--total must be >= 1", EXIT_BAD_ARGS)
        if duration is not None and duration <= 0:
            raise CliError("--duration must be > 0", EXIT_BAD_ARGS)
        if total is None and duration is None:
            total = 10_000
        if kw.get("consistency", "l") not in ("l", "s"):
            raise CliError(f'unknown consistency flag "{kw["consistency"]}"', EXIT_BAD_FEATURE)
        if clients < 1 or kw.get("key_space_size", 1) < 1:
            raise CliError("--clients and --key-space-size must be >= 1", EXIT_BAD_ARGS)
        curve, token = _bench_credentials(g)
        cfg = bench.BenchConfig(kind=kind, endpoints=[normalize_endpoint(e) for e in g.endpoints],
                                clients=clients, total=total, duration_s=duration,
                                timeout_s=g.command_timeout_s, curve=curve, token=token, **kw)
        result = bench.main(cfg, sys.stdout, sys.stderr)
        if result.error_count and not result.latencies_s:
            raise CliError(f"all {result.error_count} requests failed", EXIT_ERROR)


def _bench_credentials(g: Globals) -> tuple[tuple[bytes, bytes, bytes] | None, str | None]:
    """The global --server-key/--key-file/--user as the benchmark's raw sockets need them:
    a CURVE setup and one token (authenticated once, as etcd's benchmark does)."""
    options = g.client_options()
    if not options.get("server_key") and not options.get("user"):
        return None, None
    with _client(g) as c:
        sec = c._security
        token = sec.token(c)[0] if options.get("user") else None
        curve = (sec.public, sec.secret, sec.server_key) if sec.curve else None
    return curve, token or None


_CLIENTS = typer.Option(None, "--clients", help="concurrent logical clients (default 1)")
_TOTAL = typer.Option(None, "--total", help="total number of requests (default 10000)")
_DURATION = typer.Option(None, "--duration", help="run for this many seconds instead of --total")


@benchmark_app.command("put")
def bench_put(
    ctx: typer.Context,
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    key_size: int = typer.Option(8, "--key-size", help="key size of put request"),
    val_size: int = typer.Option(256, "--val-size", help="value size of put request"),
    key_space_size: int = typer.Option(1, "--key-space-size", help="maximum possible keys"),
    sequential_keys: bool = typer.Option(False, "--sequential-keys",
                                         help="use sequential keys from 0 to key-space-size-1"),
) -> None:
    """Benchmark put."""
    _bench(ctx, "put", clients, total, duration, key_size=key_size, val_size=val_size,
           key_space_size=key_space_size, sequential_keys=sequential_keys)


@benchmark_app.command("range")
def bench_range(
    ctx: typer.Context,
    key: str = typer.Argument(..., metavar="<key>"),
    range_end: Optional[str] = typer.Argument(None, metavar="[end-range]"),
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    consistency: str = typer.Option("l", "--consistency", help="Linearizable(l) or Serializable(s)"),
) -> None:
    """Benchmark range."""
    _bench(ctx, "range", clients, total, duration, key=_arg(key),
           range_end=_arg(range_end) if range_end else b"", consistency=consistency)


@benchmark_app.command("txn-put")
def bench_txn_put(
    ctx: typer.Context,
    clients: Optional[int] = _CLIENTS, total: Optional[int] = _TOTAL,
    duration: Optional[float] = _DURATION,
    key_size: int = typer.Option(8, "--key-size", help="key size of txn put"),
    val_size: int = typer.Option(256, "--val-size", help="value size of txn put"),
    key_space_size: int = typer.Option(1, "--key-space-size", help="maximum possible keys"),
    txn_ops: int = typer.Option(1, "--txn-ops", help="number of puts per txn"),
) -> None:
    """Benchmark put through txn."""
    _bench(ctx, "txn-put", clients, total, duration, key_size=key_size, val_size=val_size,
           key_space_size=key_space_size, txn_ops=txn_ops, sequential_keys=True)


# -- snapshot (protocol/client/snapshot.py) ----------------------------------------------------
@snapshot_app.command("save")
def snapshot_save_cmd(
    ctx: typer.Context,
    filename: Optional[str] = typer.Argument(None, metavar="<filename>"),
    consistency: str = typer.Option("l", "--consistency",
                                    help="l: holds every write acknowledged before (needs a leader); "
                                         "s: what this member has applied"),
) -> None:
    """Stores an etcd node backend snapshot to a given file."""
    g = _g(ctx)
    with _errors():
        from protocol.client.snapshot import ProgressBar, SnapshotFileError, save

        if not filename:
            raise CliError("snapshot save expects one argument", EXIT_BAD_ARGS)
        if len(g.endpoints) != 1:
            raise CliError(f"snapshot must be requested to one selected node, not multiple {g.endpoints}",
                           EXIT_BAD_ARGS)
        if consistency not in ("l", "s"):
            raise CliError(f"unknown consistency flag {consistency!r}", EXIT_BAD_ARGS)
        progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
        try:
            save(g.endpoints[0], filename, timeout=g.command_timeout_s, serializable=consistency == "s",
                 progress=progress, **g.client_options())
        except SnapshotFileError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"could not write {filename}: {exc.strerror or exc}") from None
        _out().write(f"Snapshot saved at {filename}\n".encode())


@snapshot_app.command("status")
def snapshot_status_cmd(ctx: typer.Context, filename: Optional[str] = typer.Argument(None, metavar="<filename>")) -> None:
    """Gets backend snapshot status of a given file (after checking its hash)."""
    g = _g(ctx)
    with _errors():
        from protocol.client.output import dumps, humanize_bytes, render_table
        from protocol.client.snapshot import SnapshotFileError, status

        if not filename:
            raise CliError("snapshot status requires exactly one argument", EXIT_BAD_ARGS)
        try:
            st = status(filename)
        except SnapshotFileError as exc:
            raise CliError(str(exc)) from None
        if g.write_out == "json":
            text = dumps({"hash": st.hash, "revision": st.revision, "totalKey": st.total_key,
                          "totalSize": st.total_size}) + "\n"
        elif g.write_out == "table":
            text = render_table(["hash", "revision", "total keys", "total size"],
                                [[f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size)]])
        elif g.write_out == "fields":
            text = (f'"Hash" : {st.hash}\n"Revision" : {st.revision}\n"Keys" : {st.total_key}\n'
                    f'"Size" : {st.total_size}\n')
        else:
            text = f"{st.hash:x}, {st.revision}, {st.total_key}, {humanize_bytes(st.total_size)}\n"
        _out().write(text.encode())


@snapshot_app.command("restore")
def snapshot_restore_cmd(
    ctx: typer.Context,
    filename: Optional[str] = typer.Argument(None, metavar="<filename>"),
    name: Optional[str] = typer.Option(None, "--name", help="human-readable name for this member [default: default]"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="path to the data directory [default: <name>.qkv]"),
    initial_cluster: Optional[str] = typer.Option(None, "--initial-cluster",
                                                  help="initial cluster configuration for restore bootstrap"),
    initial_cluster_token: Optional[str] = typer.Option(None, "--initial-cluster-token",
                                                        help="initial cluster token for the cluster during restore "
                                                             "bootstrap [default: qkv-cluster]"),
    initial_advertise_peer_urls: Optional[str] = typer.Option(None, "--initial-advertise-peer-urls",
                                                              help="list of this member's peer URLs to advertise"),
) -> None:
    """Restores a snapshot into a new data dir for one member of a new cluster
    (start it with `qkv --initial-cluster-state new` and the same flags)."""
    _g(ctx)
    with _errors():
        from actors.storage.restore import RestoreError
        from protocol.client.snapshot import restore

        if not filename:
            raise CliError("snapshot restore requires exactly one argument", EXIT_BAD_ARGS)
        try:
            res = restore(filename, name=name, initial_cluster=initial_cluster,
                          initial_cluster_token=initial_cluster_token,
                          initial_advertise_peer_urls=initial_advertise_peer_urls, data_dir=data_dir)
        except RestoreError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"restore failed: {exc}") from None
        _out().write((f"Restored snapshot {filename} (revision {res.meta.revision}, {res.meta.key_count} keys) "
                      f"into {res.data_dir}: member {res.name} ({res.member_id:x}) of cluster "
                      f"{res.cluster_id:x}\n").encode())


# -- auth, user, role (etcdctl 3.4; `auth status` is 3.5's) ------------------------------
def _auth_printer(g: Globals) -> Any:
    from protocol.client.output import AuthPrinter

    return AuthPrinter(g.write_out, _out())


def _nargs(args: Optional[list[str]], n: int, message: str) -> list[str]:
    args = args or []
    if len(args) != n:
        raise CliError(message, EXIT_BAD_ARGS)
    return args


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

    g = _g(ctx)
    with _errors():
        _nargs(args, 0, "auth enable command does not accept any arguments")
        with _client(g) as c:
            while True:
                try:
                    c.auth.auth_enable()
                    break
                except RootRoleNotExist:  # etcdctl: add the root role, grant it to root, again
                    c.auth.role_add("root")
                    c.auth.user_grant_role("root", "root")
        _say("Authentication Enabled")


@auth_app.command("disable")
def auth_disable_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Disables authentication."""
    g = _g(ctx)
    with _errors():
        _nargs(args, 0, "auth disable command does not accept any arguments")
        with _client(g) as c:
            c.auth.auth_disable()
        _say("Authentication Disabled")


@auth_app.command("status")
def auth_status_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Returns authentication status (etcdctl 3.5's command)."""
    g = _g(ctx)
    with _errors():
        _nargs(args, 0, "auth status command does not accept any arguments")
        with _client(g) as c:
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
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "user add command requires user name as its argument")[0]
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
        with _client(g) as c:
            try:
                resp = c.auth.user_add(name, password, no_password=no_password, public_key=public_key)
            except ValueError as exc:  # a bad --public-key
                raise CliError(str(exc), EXIT_BAD_ARGS) from None
        _auth_printer(g).header_only(resp, f"User {name} created")


@user_app.command("delete")
def user_delete_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<user name>")) -> None:
    """Deletes a user."""
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "user delete command requires user name as its argument")[0]
        with _client(g) as c:
            resp = c.auth.user_delete(name)
        _auth_printer(g).header_only(resp, f"User {name} deleted")


@user_app.command("get")
def user_get_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<user name>"),
    detail: bool = typer.Option(False, "--detail", help="Show permissions of roles granted to the user"),
) -> None:
    """Gets detailed information of a user."""
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "user get command requires user name as its argument")[0]
        printer = _auth_printer(g)
        with _client(g) as c:
            resp = c.auth.user_get(name)
            if not detail:
                printer.user_get(name, resp)
                return
            _say(f"User: {name}")
            for role in resp.roles:
                _out().write(b"\n")
                printer.role_get(role, c.auth.role_get(role))


@user_app.command("list")
def user_list_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Lists all users."""
    g = _g(ctx)
    with _errors():
        _nargs(args, 0, "user list command requires no arguments")
        with _client(g) as c:
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
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "user passwd command requires user name as its argument")[0]
        password = _read_password_interactive(name) if interactive else _read_password_stdin()
        with _client(g) as c:
            resp = c.auth.user_change_password(name, password)
        _auth_printer(g).header_only(resp, "Password updated")


@user_app.command("grant-role")
def user_grant_role_cmd(ctx: typer.Context,
                        args: Optional[list[str]] = typer.Argument(None, metavar="<user name> <role name>")) -> None:
    """Grants a role to a user."""
    g = _g(ctx)
    with _errors():
        user, role = _nargs(args, 2, "user grant command requires user name and role name as its argument")
        with _client(g) as c:
            resp = c.auth.user_grant_role(user, role)
        _auth_printer(g).header_only(resp, f"Role {role} is granted to user {user}")


@user_app.command("revoke-role")
def user_revoke_role_cmd(ctx: typer.Context,
                         args: Optional[list[str]] = typer.Argument(None, metavar="<user name> <role name>")) -> None:
    """Revokes a role from a user."""
    g = _g(ctx)
    with _errors():
        user, role = _nargs(args, 2, "user revoke-role requires user name and role name as its argument")
        with _client(g) as c:
            resp = c.auth.user_revoke_role(user, role)
        _auth_printer(g).header_only(resp, f"Role {role} is revoked from user {user}")


@role_app.command("add")
def role_add_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Adds a new role."""
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "role add command requires role name as its argument")[0]
        with _client(g) as c:
            resp = c.auth.role_add(name)
        _auth_printer(g).header_only(resp, f"Role {name} created")


@role_app.command("delete")
def role_delete_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Deletes a role."""
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "role delete command requires role name as its argument")[0]
        with _client(g) as c:
            resp = c.auth.role_delete(name)
        _auth_printer(g).header_only(resp, f"Role {name} deleted")


@role_app.command("get")
def role_get_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, metavar="<role name>")) -> None:
    """Gets detailed information of a role."""
    g = _g(ctx)
    with _errors():
        name = _nargs(args, 1, "role get command requires role name as its argument")[0]
        with _client(g) as c:
            resp = c.auth.role_get(name)
        _auth_printer(g).role_get(name, resp)


@role_app.command("list")
def role_list_cmd(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Lists all roles."""
    g = _g(ctx)
    with _errors():
        _nargs(args, 0, "role list command requires no arguments")
        with _client(g) as c:
            resp = c.auth.role_list()
        _auth_printer(g).role_list(resp)


def _perm_range_args(args: list[str], prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    """etcdctl's permRange: the wire key and range_end of a permission."""
    from protocol.client.types import prefix_end

    key = _arg(args[0])
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
    return key, _arg(args[1])


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

    g = _g(ctx)
    with _errors():
        args = args or []
        if len(args) < 3:
            raise CliError("role grant command requires role name, permission type, and key [endkey] as its "
                           "argument", EXIT_BAD_ARGS)
        try:
            perm = perm_type_name(args[1])
        except ValueError as exc:
            raise CliError(str(exc), EXIT_BAD_ARGS) from None
        key, end = _perm_range_args(args[2:], prefix, from_key)
        with _client(g) as c:
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
    g = _g(ctx)
    with _errors():
        args = args or []
        if len(args) < 2:
            raise CliError("role revoke-permission command requires role name and key [endkey] as its argument",
                           EXIT_BAD_ARGS)
        key, end = _perm_range_args(args[1:], prefix, from_key)
        with _client(g) as c:
            resp = c.auth.role_revoke_permission(args[0], key, end)
        _auth_printer(g).role_revoke_permission(resp, args[0], _arg(args[1]), end)


# -- entry point ---------------------------------------------------------------------------------
_GLOBAL_WITH_VALUE = {"--endpoints", "--command-timeout", "--dial-timeout", "-w", "--write-out",
                      "--user", "--password", "--server-key", "--key-file"}
# Go-style "--flag=false" for the boolean flags of the auth commands.
_BOOL_FLAGS = {"--interactive": "--no-interactive", "--no-password": None, "--detail": None,
               "--prefix": None, "--from-key": None}


def normalize_bool_flags(argv: list[str]) -> list[str]:
    """``--interactive=false`` -> ``--no-interactive``, ``--detail=true`` -> ``--detail``,
    ``--prefix=false`` -> (dropped), as cobra takes them. Stops at ``--``."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        name, sep, value = a.partition("=")
        if sep and name in _BOOL_FLAGS and value.lower() in ("true", "false", "1", "0", "t", "f"):
            if value.lower() in ("true", "1", "t"):
                out.append(name)
            elif _BOOL_FLAGS[name]:
                out.append(_BOOL_FLAGS[name])
            continue
        out.append(a)
    return out
_GLOBAL_FLAGS = {"--hex"}


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
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import Abort, Exit

    args = hoist_global_flags(normalize_bool_flags(list(sys.argv[1:] if argv is None else argv)))
    try:
        rv = app(args=args, prog_name="qkvctl", standalone_mode=False)
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
        return 130
    finally:
        try:
            sys.stdout.flush()
        except (ValueError, OSError):
            pass
    return rv if isinstance(rv, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
