"""``make-mirror`` (etcdctl's make_mirror_command.go and clientv3/mirror): a continuous copy
of a prefix of this cluster (--endpoints) into another cluster (the destination).

How, as etcdctl does it: the initial sync reads the prefix at one revision R in pages of
1,000 keys and puts each key into the destination; then a watch from R+1 replays every
revision as one txn of its puts and deletes on the destination. Keys are renamed from
--prefix to --dest-prefix (default: the same prefix; --no-dest-prefix: the root). Leases
are not copied (as etcdctl). The count of copied keys and events is printed every 30 s.

Resuming (where etcdctl gives up):
- the source restarting or unreachable: the watch (protocol/client/watch.py) moves to
  another endpoint or waits for this one, then resumes from the last revision it
  delivered: nothing is skipped, nothing is copied twice;
- the destination restarting or unreachable: the txn of a revision is retried (with a
  pause growing to 2 s) until the destination takes it; the watch waits meanwhile, so the
  copy resumes from the last revision copied. A txn whose outcome was unknown is sent
  again: it writes the same values, so the copy is still right (the destination may show
  one more revision);
- the source compacted past the watch's position while it was away: the copy cannot be
  completed and make-mirror exits 1 with the compacted error, as etcdctl.
Errors the destination will give again (permission denied, request too large...) end
make-mirror with exit 1. A revision with more than MAX_OPS events (a large delete) is
sent as several txns. Ctrl-C/SIGTERM stop it (exit 130).
"""
from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from protocol.client.cli.common import (
    EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_INTERRUPTED, CliError, arg, client, errors, globals_of, say,
    split_user, stop_on_signal,
)

if TYPE_CHECKING:
    from protocol.client.client import Client
    from protocol.client.txn import Op

BATCH_LIMIT = 1000           # keys per page of the initial sync (clientv3/mirror batchLimit)
MAX_OPS = 128                # ops per destination txn (the server's default --max-txn-ops)
MAX_TXN_BYTES = 1024 * 1024  # bytes of keys and values per destination txn (under 1.5 MiB)
RETRY_CODES = frozenset({"no_leader", "not_leader", "unavailable", "too_many_requests", "stopping",
                         "timeout", "unknown_outcome", "auth_old_revision"})


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while waiting for the destination."""


def rename(key: bytes, prefix: bytes, dest_prefix: bytes) -> bytes:
    """etcdctl's modifyPrefix: strings.Replace(key, prefix, dest_prefix, 1)."""
    return key.replace(prefix, dest_prefix, 1) if prefix else dest_prefix + key


class Mirror:
    """The copy loop; `dest_apply(ops)` is retried on transient errors until `stop` is set."""

    def __init__(self, source: Client, dest: Client, prefix: bytes, dest_prefix: bytes,
                 stop: threading.Event, warn: Callable[[str], None]) -> None:
        self.source, self.dest = source, dest
        self.prefix, self.dest_prefix = prefix, dest_prefix
        self.stop = stop
        self.warn = warn
        self.total = 0
        self.revision = 0  # the last source revision copied to the destination

    def _apply(self, ops: list[Op]) -> None:
        from protocol.errors import QkvError

        for start in range(0, len(ops), MAX_OPS):
            chunk = ops[start:start + MAX_OPS]
            pause, failing = 0.1, False
            while True:
                try:
                    self.dest.txn([], chunk, [])
                    if failing:
                        self.warn("destination answers again: copying")
                    break
                except QkvError as exc:
                    if exc.code not in RETRY_CODES:
                        raise
                    if not failing:
                        self.warn(f"destination failed ({exc.message}): retrying until it answers")
                        failing = True
                if self.stop.wait(pause):
                    raise Interrupted
                pause = min(2.0, pause * 2)

    def _batches(self, items: list[tuple[Op, int]]) -> list[list[Op]]:
        """Ops in txns of at most MAX_OPS ops and about MAX_TXN_BYTES bytes."""
        out: list[list[Op]] = []
        cur: list[Op] = []
        size = 0
        for op, n in items:
            if cur and (len(cur) >= MAX_OPS or size + n > MAX_TXN_BYTES):
                out.append(cur)
                cur, size = [], 0
            cur.append(op)
            size += n
        if cur:
            out.append(cur)
        return out

    def sync_base(self) -> int:
        """Copy the prefix as it is at the current revision; that revision."""
        from protocol.client.txn import Op
        from protocol.client.types import FROM_KEY_END, prefix_end

        rev = self.source.get(self.prefix or FROM_KEY_END, limit=1).header.revision  # "now"
        key, end = (self.prefix, prefix_end(self.prefix)) if self.prefix else (FROM_KEY_END, FROM_KEY_END)
        while not self.stop.is_set():
            resp = self.source.get(key, end, revision=rev, limit=BATCH_LIMIT)
            items = [(Op.put(rename(kv.key, self.prefix, self.dest_prefix), kv.value), len(kv.key) + len(kv.value))
                     for kv in resp.kvs]
            for batch in self._batches(items):
                self._apply(batch)
                self.total += len(batch)
            if not resp.more or not resp.kvs:
                break
            key = resp.kvs[-1].key + b"\x00"
        self.revision = rev
        return rev

    def sync_updates(self, watch: Any) -> None:
        """Replay every revision after the base, one txn each (more if it is large)."""
        from protocol.client.txn import Op
        from protocol.errors import Compacted

        while not self.stop.is_set():
            try:
                resp = watch.get(timeout=0.5)
            except StopIteration:
                return
            if resp is None:
                continue
            if resp.canceled and resp.compact_revision:
                raise Compacted(resp.cancel_reason or None)
            items: list[tuple[Op, int]] = []
            for ev in resp.events:
                key = rename(ev.kv.key, self.prefix, self.dest_prefix)
                if ev.type == "PUT":
                    items.append((Op.put(key, ev.kv.value), len(key) + len(ev.kv.value)))
                else:
                    items.append((Op.delete(key), len(key)))
            if not items:
                continue
            for batch in self._batches(items):
                self._apply(batch)
                self.total += len(batch)
            self.revision = resp.header.revision


def make_mirror_cmd(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, metavar="<destination>"),
    prefix: str = typer.Option("", "--prefix", help="Key-value prefix to mirror"),
    dest_prefix: str = typer.Option("", "--dest-prefix",
                                    help="destination prefix to mirror a prefix to a different prefix in the "
                                         "destination cluster"),
    no_dest_prefix: bool = typer.Option(False, "--no-dest-prefix",
                                        help="mirror key-values to the root of the destination cluster"),
    dest_server_key: Optional[str] = typer.Option(None, "--dest-server-key",
                                                  help="the destination's CURVE public key (Z85, or @file)"),
    dest_key_file: Optional[str] = typer.Option(None, "--dest-key-file",
                                                help="this client's CURVE secret certificate for the destination"),
    dest_user: Optional[str] = typer.Option(None, "--dest-user",
                                            help="destination username[:password] for authentication"),
    dest_password: Optional[str] = typer.Option(None, "--dest-password", help="destination password"),
    dest_insecure_transport: bool = typer.Option(True, "--dest-insecure-transport/--no-dest-insecure-transport",
                                                 help="accepted for etcdctl compatibility (CURVE is "
                                                      "--dest-server-key)"),
    dest_cert: str = typer.Option("", "--dest-cert", hidden=True, help="TLS: not supported"),
    dest_key: str = typer.Option("", "--dest-key", hidden=True, help="TLS: not supported"),
    dest_cacert: str = typer.Option("", "--dest-cacert", hidden=True, help="TLS: not supported"),
    print_interval: float = typer.Option(30.0, "--print-interval", hidden=True,
                                         help="seconds between the printed counts (etcdctl: 30)"),
) -> None:
    """Makes a mirror at the destination quorumkv cluster"""
    from protocol.client.client import Client

    g = globals_of(ctx)
    with errors():
        if not args or len(args) != 1:
            raise CliError("make-mirror takes one destination argument", EXIT_BAD_ARGS)
        if dest_cert or dest_key or dest_cacert:
            raise CliError("--dest-cert/--dest-key/--dest-cacert: quorumkv has no TLS; the destination's "
                           "transport security is CURVE (--dest-server-key, --dest-key-file)", EXIT_BAD_FEATURE)
        if no_dest_prefix and dest_prefix:
            raise CliError("`--dest-prefix` and `--no-dest-prefix` cannot be set at the same time, choose one",
                           EXIT_BAD_ARGS)
        src_prefix = arg(prefix)
        to_prefix = b"" if no_dest_prefix else arg(dest_prefix) if dest_prefix else src_prefix
        name, pw = split_user(dest_user, dest_password)
        try:
            dest = Client([args[0]], timeout=g.command_timeout_s, user=name, password=pw,
                          server_key=dest_server_key or None, key_file=dest_key_file or None)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_BAD_ARGS) from None
        with stop_on_signal() as stop, client(g) as source, dest:
            mirror = Mirror(source, dest, src_prefix, to_prefix, stop, _warn)
            printer = threading.Thread(target=_print_total, args=(mirror, stop, print_interval), daemon=True)
            printer.start()
            try:
                rev = mirror.sync_base()
                if stop.is_set():
                    raise Interrupted
                # watch(b"", prefix=True) is the whole keyspace, as the sync's from-key range
                with source.watch(src_prefix, prefix=True, start_revision=rev + 1) as w:
                    mirror.sync_updates(w)
                raise Interrupted
            except Interrupted:
                raise typer.Exit(EXIT_INTERRUPTED) from None
            finally:
                stop.set()


def _warn(text: str) -> None:
    sys.stderr.write(f"make-mirror: {text}\n")
    sys.stderr.flush()


def _print_total(mirror: Mirror, stop: threading.Event, interval: float) -> None:
    """etcdctl prints the running total every 30 s."""
    while not stop.wait(interval):
        try:
            say(str(mirror.total))
        except (ValueError, OSError):
            return


__all__ = ["Mirror", "make_mirror_cmd", "rename"]
