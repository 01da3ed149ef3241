"""``snapshot save|status|restore`` (etcdctl's snapshot_command.go; the work is in
protocol/client/snapshot.py). ``snapshot restore`` builds a data dir with server code, so
the work is ``qkvutl snapshot restore`` (nodes/utl.py, as etcd 3.5 moved it into etcdutl):
``qkvctl snapshot restore`` runs it, as etcdctl 3.4 restores itself."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional

import typer

from protocol.client.cli.common import EXIT_BAD_ARGS, CliError, Globals, errors, globals_of, out

if TYPE_CHECKING:
    from protocol.client.snapshot import SnapshotStatus

snapshot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Manages quorumkv node snapshots")

RESTORE_MOVED = ("snapshot restore builds a member's data dir offline with server code, which is not "
                 "installed here: use `qkvutl snapshot restore` (same arguments and flags) where it is")


@snapshot_app.command("save")
def snapshot_save_cmd(
    ctx: typer.Context,
    filename: Optional[str] = typer.Argument(None, metavar="<filename>"),
    consistency: str = typer.Option("l", "--consistency",
                                    help="l: holds every write acknowledged before (needs a leader); "
                                         "s: what this member has applied"),
) -> None:
    """Stores a quorumkv node backend snapshot to a given file."""
    g = globals_of(ctx)
    with errors():
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
        out().write(f"Snapshot saved at {filename}\n".encode())


def status_text(st: SnapshotStatus, write_out: str) -> str:
    """``snapshot status`` in one of etcdctl's formats (qkvutl prints the same)."""
    from protocol.client.output import dumps, humanize_bytes, render_table

    if write_out == "json":
        return dumps({"hash": st.hash, "revision": st.revision, "totalKey": st.total_key,
                      "totalSize": st.total_size}) + "\n"
    if write_out == "table":
        return render_table(["hash", "revision", "total keys", "total size"],
                            [[f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size)]])
    if write_out == "fields":
        return (f'"Hash" : {st.hash}\n"Revision" : {st.revision}\n"Keys" : {st.total_key}\n'
                f'"Size" : {st.total_size}\n')
    return f"{st.hash:x}, {st.revision}, {st.total_key}, {humanize_bytes(st.total_size)}\n"


def snapshot_status(filename: Optional[str], write_out: str) -> None:
    """Check a snapshot file's hash and print its status (a CliError when it is unusable)."""
    from protocol.client.snapshot import SnapshotFileError, status

    if not filename:
        raise CliError("snapshot status requires exactly one argument", EXIT_BAD_ARGS)
    try:
        st = status(filename)
    except SnapshotFileError as exc:
        raise CliError(str(exc)) from None
    out().write(status_text(st, write_out).encode())


@snapshot_app.command("status")
def snapshot_status_cmd(ctx: typer.Context, filename: Optional[str] = typer.Argument(None, metavar="<filename>")) -> None:
    """Gets backend snapshot status of a given file (after checking its hash)."""
    g: Globals = globals_of(ctx)
    with errors():
        snapshot_status(filename, g.write_out)


@snapshot_app.command("restore", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def snapshot_restore_cmd(ctx: typer.Context) -> None:
    """Restores a quorumkv member snapshot to a data directory (runs `qkvutl snapshot restore`:
    same arguments and flags, --skip-hash-check included)"""
    with errors():
        raise typer.Exit(run_qkvutl(["snapshot", "restore", *ctx.args]))


def run_qkvutl(args: list[str]) -> int:
    """`snapshot restore` builds a member's data dir with server code, which this client
    package does not import (tests/unit/test_pure_imports.py): it runs qkvutl, as etcdctl 3.4
    restores itself. Its report goes to stderr, where etcdctl 3.4 logs its restore (stdout
    stays empty); its exit code is ours."""
    import subprocess

    from protocol.client.cli.maintenance import qkvutl_command

    try:
        proc = subprocess.run([*qkvutl_command(), *args], stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as exc:
        raise CliError(f"cannot run qkvutl: {exc}: {RESTORE_MOVED}") from None
    if proc.returncode and b"No module named 'nodes" in proc.stderr:
        raise CliError(RESTORE_MOVED)
    sys.stderr.write(proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace"))
    sys.stderr.flush()
    return proc.returncode
