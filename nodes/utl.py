"""``qkvutl``: the offline tools, on a member's files, with the member stopped (etcd's
etcdutl). They need server code (the store, the member file), which the client package
``qkvctl`` must not import (tests/unit/test_pure_imports.py), so they live here in nodes/.

    qkvutl snapshot restore FILE --name N --initial-cluster ... --data-dir D
    qkvutl snapshot status FILE [-w json|table|fields]
    qkvutl defrag --data-dir D
    qkvutl version

Rules:
- nothing here talks to a running member; a member must be stopped before ``defrag``
  touches its data dir (RocksDB's lock refuses a second opener: the error says so);
- ``snapshot restore`` writes only into a new or empty data dir and removes what it wrote
  on failure (nodes/restore.py);
- errors print ``Error: <message>`` on stderr and exit 1 (128 for bad arguments), as qkvctl's.
Run it as ``qkvutl`` (pyproject [project.scripts]) or ``python -m nodes.utl``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

import typer

from protocol import VERSION
from protocol.client.cli.common import EXIT_BAD_ARGS, EXIT_BAD_FEATURE, CliError, errors, out
from protocol.client.cli.root import hoist_global_flags, run_app

app = typer.Typer(
    name="qkvutl", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Offline tools for a stopped quorumkv member's files (etcdutl's counterpart of qkvctl).",
)
snapshot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Manages quorumkv snapshot files")
app.add_typer(snapshot_app, name="snapshot")

FORMATS = ("simple", "json", "table", "fields")


@dataclass(frozen=True)
class UtlGlobals:
    write_out: str


@app.callback()
def _root(
    ctx: typer.Context,
    write_out: str = typer.Option("simple", "-w", "--write-out",
                                  help="set the output format (fields, json, simple, table)"),
) -> None:
    with errors():
        if write_out not in FORMATS:
            raise CliError(f"unknown output format {write_out!r} (fields, json, simple, table)",
                           EXIT_BAD_FEATURE)
        ctx.obj = UtlGlobals(write_out)


def _globals(ctx: typer.Context) -> UtlGlobals:
    obj = ctx.find_root().obj
    assert isinstance(obj, UtlGlobals)
    return obj


@snapshot_app.command("restore")
def snapshot_restore_cmd(
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
    skip_hash_check: bool = typer.Option(False, "--skip-hash-check",
                                         help="Ignore snapshot integrity hash value (required if copied from "
                                              "data directory)"),
) -> None:
    """Restores a snapshot into a new data dir for one member of a new cluster
    (start it with `qkv --initial-cluster-state new` and the same flags)."""
    with errors():
        from nodes.restore import RestoreError, restore, restore_config

        if not filename:
            raise CliError("snapshot restore requires exactly one argument", EXIT_BAD_ARGS)
        try:
            cfg = restore_config(name, initial_cluster, initial_cluster_token, initial_advertise_peer_urls,
                                 data_dir)
            res = restore(filename, cfg, skip_hash_check=skip_hash_check)
        except RestoreError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"restore failed: {exc}") from None
        out().write((f"Restored snapshot {filename} (revision {res.meta.revision}, {res.meta.key_count} keys) "
                     f"into {res.data_dir}: member {res.name} ({res.member_id:x}) of cluster "
                     f"{res.cluster_id:x}\n").encode())


@snapshot_app.command("status")
def snapshot_status_cmd(ctx: typer.Context,
                        filename: Optional[str] = typer.Argument(None, metavar="<filename>")) -> None:
    """Gets backend snapshot status of a given file (after checking its hash)."""
    from protocol.client.cli.snapshot import snapshot_status

    g = _globals(ctx)
    with errors():
        snapshot_status(filename, g.write_out)


@dataclass(frozen=True)
class DefragResult:
    store: str
    before_bytes: int  # RocksDB's files and memtables (Backend.size_bytes), as `endpoint status` counts
    after_bytes: int


def defragment(data_dir: str) -> DefragResult:
    """Compact a stopped member's store fully (as the running member's defrag does);
    CliError when there is no store, it cannot be read, or the member still runs."""
    from actors.storage.backend import RocksBackend
    from actors.storage.offline import StoreUnreadable, read_indexes

    if not os.path.isdir(data_dir):
        raise CliError(f"--data-dir {data_dir} is not a directory", EXIT_BAD_ARGS)
    try:
        found = read_indexes(data_dir)  # the store the member would open; its log checked first
    except StoreUnreadable as exc:
        raise CliError(f"{exc} (is the member still running? stop it first)") from None
    if found is None:
        raise CliError(f"{data_dir} holds no member store")
    try:
        backend = RocksBackend(found.path)
    except Exception as exc:  # rocksdict raises a bare Exception ("IO error: lock ...")
        raise CliError(f"cannot open the store {found.path} (is the member still running? stop it "
                       f"first): {' '.join(str(exc).split())[:300]}") from None
    try:
        before = backend.size_bytes()
        backend.defragment()
        backend.sync()
        return DefragResult(found.path, before, backend.size_bytes())
    finally:
        backend.close()


@app.command("defrag")
def defrag_cmd(
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="the data directory of a stopped member"),
) -> None:
    """Defragments the store of a stopped member's data dir (qkvctl defrag does it online)."""
    from protocol.client.output import humanize_bytes

    with errors():
        if not data_dir:
            raise CliError("defrag needs --data-dir (to defragment running members: qkvctl defrag)",
                           EXIT_BAD_ARGS)
        res = defragment(data_dir)
        out().write((f"Finished defragmenting data dir {data_dir}: store {humanize_bytes(res.before_bytes)} -> "
                     f"{humanize_bytes(res.after_bytes)}\n").encode())


@app.command("version")
def version_cmd() -> None:
    """Prints the version of qkvutl."""
    sys.stdout.write(f"qkvutl version: {VERSION}\n")


def run(argv: list[str] | None = None) -> int:
    """Run qkvutl with ``argv`` (without the program name); return the exit code."""
    # -w may follow the command (`qkvutl snapshot status f -w json`), as with etcdutl.
    args = list(sys.argv[1:] if argv is None else argv)
    # Go's "--skip-hash-check=true|false", as etcdctl takes it
    args = [a for a in ("--skip-hash-check" if a.lower() in ("--skip-hash-check=true", "--skip-hash-check=1")
                        else None if a.lower() in ("--skip-hash-check=false", "--skip-hash-check=0") else a
                        for a in args) if a is not None]
    return run_app(app, "qkvutl", hoist_global_flags(args))


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
