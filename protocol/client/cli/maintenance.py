"""Maintenance commands: ``endpoint status|health|hashkv``, ``alarm list|disarm``,
``defrag`` (etcdctl's ep_command.go, alarm_command.go, defrag_command.go).

All of them talk to running members but ``defrag --data-dir`` (offline, as etcdctl's),
which runs ``qkvutl defrag --data-dir`` (nodes/utl.py): this client package imports no
server code.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TypedDict

import typer

from protocol.client.cli.common import (
    CLUSTER_OPT, EXIT_BAD_ARGS, EXIT_ERROR, CliError, Globals, client, cluster_endpoints, err, errors, globals_of,
    out, printer,
)

if TYPE_CHECKING:
    from protocol.client.types import AlarmResponse, HashKVResponse, StatusResponse

endpoint_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Endpoint related commands")
alarm_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Alarm related commands")


@endpoint_app.command("status")
def endpoint_status_cmd(ctx: typer.Context, cluster: bool = CLUSTER_OPT) -> None:
    """Prints out the status of endpoints specified in `--endpoints` flag."""
    g = globals_of(ctx)
    with errors():
        from protocol.errors import QkvError

        p = printer(g)
        statuses: list[tuple[str, StatusResponse]] = []
        failed = False
        for ep in cluster_endpoints(g, cluster):
            try:
                with client(g, [ep]) as c:
                    statuses.append((ep, c.status()))
            except QkvError as exc:
                failed = True
                sys.stderr.write(f"Failed to get the status of endpoint {ep} ({exc.message})\n")
                sys.stderr.flush()
        p.endpoint_status(statuses)
        if failed:
            raise typer.Exit(EXIT_ERROR)


class Health(TypedDict):
    endpoint: str
    health: bool
    took: str
    error: str


@endpoint_app.command("health")
def endpoint_health_cmd(ctx: typer.Context, cluster: bool = CLUSTER_OPT) -> None:
    """Checks the healthiness of endpoints specified in `--endpoints` flag: a linearizable
    get of the key "health" within --command-timeout."""
    g = globals_of(ctx)
    with errors():
        from protocol.client.output import go_duration
        from protocol.errors import QkvError

        p = printer(g)
        endpoints = cluster_endpoints(g, cluster)
        results: list[Health] = [Health(endpoint=ep, health=False, took="", error="") for ep in endpoints]

        def check(i: int, ep: str) -> None:
            t0 = time.perf_counter()
            try:
                with client(g, [ep]) as c:
                    c.get("health")
                results[i] = Health(endpoint=ep, health=True,
                                    took=go_duration(time.perf_counter() - t0), error="")
            except QkvError as exc:
                results[i] = Health(endpoint=ep, health=False,
                                    took=go_duration(time.perf_counter() - t0), error=exc.message)

        threads = [threading.Thread(target=check, args=(i, ep), daemon=True)
                   for i, ep in enumerate(endpoints)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        p.endpoint_health([dict(r) for r in results], err())
        if not all(r["health"] for r in results):
            raise CliError("unhealthy cluster", EXIT_ERROR)


@endpoint_app.command("hashkv")
def endpoint_hashkv_cmd(
    ctx: typer.Context,
    rev: int = typer.Option(0, "--rev", help="maximum revision to hash (default: latest revision)"),
    cluster: bool = CLUSTER_OPT,
) -> None:
    """Prints the KV history hash for each endpoint in --endpoints."""
    g = globals_of(ctx)
    with errors():
        from protocol.client.output import dumps, header_json, render_table

        rows: list[tuple[str, HashKVResponse]] = []
        for ep in cluster_endpoints(g, cluster):
            with client(g, [ep]) as c:
                rows.append((ep, c.hash_kv(rev)))
        if g.write_out == "json":
            out().write((dumps([{"Endpoint": ep, "HashKV": {
                "header": header_json(r.header), "hash": r.hash, "compact_revision": r.compact_revision,
                "hash_revision": r.hash_revision}} for ep, r in rows]) + "\n").encode())
        elif g.write_out == "table":
            out().write(render_table(["endpoint", "hash"], [[ep, str(r.hash)] for ep, r in rows]).encode())
        elif g.write_out == "fields":
            from protocol.client.output import go_quote

            for ep, r in rows:
                h = r.header
                out().write((f'"ClusterID" : {h.cluster_id}\n"MemberID" : {h.member_id}\n'
                             f'"Revision" : {h.revision}\n"RaftTerm" : {h.raft_term}\n'
                             f'"Endpoint" : {go_quote(ep.encode())}\n"Hash" : {r.hash}\n\n').encode())
        else:
            for ep, r in rows:
                out().write(f"{ep}, {r.hash}\n".encode())


# etcd's AlarmType enum (etcdserverpb.AlarmType): its JSON carries the number.
ALARM_TYPE = {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}


def _print_alarms(g: Globals, resp: AlarmResponse) -> None:
    """etcdctl 3.4's alarm output: ``memberID:N alarm:NAME `` lines; json as etcd 3.4
    prints it (the enum as its number, no header: its AlarmResponse has none, so an empty
    list is ``{}``); fields: the header and ``"MemberID"``/``"AlarmType"`` per alarm
    (etcdctl 3.4 crashes on its missing header there); table is not supported (exit 4)."""
    from protocol.client.output import dumps

    if g.write_out == "json":
        body = {"alarms": [{"memberID": a.member_id, "alarm": ALARM_TYPE.get(a.alarm, a.alarm)}
                           for a in resp.alarms]} if resp.alarms else {}
        out().write((dumps(body) + "\n").encode())
    elif g.write_out == "fields":
        h = resp.header
        text = (f'"ClusterID" : {h.cluster_id}\n"MemberID" : {h.member_id}\n'
                f'"Revision" : {h.revision}\n"RaftTerm" : {h.raft_term}\n')
        for a in resp.alarms:
            text += f'"MemberID" : {a.member_id}\n"AlarmType" : {a.alarm}\n\n'
        out().write(text.encode())
    else:
        for a in resp.alarms:
            out().write(f"{a} \n".encode())  # Go's %+v of the struct ends with a space


@alarm_app.command("list")
def alarm_list_cmd(ctx: typer.Context) -> None:
    """Lists all alarms."""
    g = globals_of(ctx)
    with errors():
        printer(g).need("simple", "json", "fields")
        with client(g) as c:
            _print_alarms(g, c.alarm_list())


@alarm_app.command("disarm")
def alarm_disarm_cmd(ctx: typer.Context) -> None:
    """Disarms all alarms."""
    g = globals_of(ctx)
    with errors():
        printer(g).need("simple", "json", "fields")
        with client(g) as c:
            _print_alarms(g, c.alarm_disarm())


def defrag_cmd(
    ctx: typer.Context,
    cluster: bool = CLUSTER_OPT,
    data_dir: str = typer.Option("", "--data-dir",
                                 help="Optional. If present, defragments a data directory not in use by a "
                                      "member (runs `qkvutl defrag --data-dir`)"),
) -> None:
    """Defragments the storage of the quorumkv members with given endpoints (the members
    keep serving meanwhile)."""
    g = globals_of(ctx)
    with errors():
        from protocol.errors import QkvError

        if data_dir:
            _defrag_offline(data_dir)
            return
        failed = False
        for ep in cluster_endpoints(g, cluster):
            try:
                with client(g, [ep]) as c:
                    c.defragment()
                out().write(f"Finished defragmenting quorumkv member[{ep}]\n".encode())
            except QkvError as exc:
                failed = True
                sys.stderr.write(f"Failed to defragment quorumkv member[{ep}] ({exc.message})\n")
                sys.stderr.flush()
        if failed:
            raise typer.Exit(EXIT_ERROR)


def qkvutl_command() -> list[str]:
    """How to run qkvutl (the offline tools, in the server package that qkvctl must not
    import): the script beside this interpreter, else on PATH, else ``-m nodes.utl``."""
    import os
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "qkvutl")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("qkvutl")
    return [found] if found else [sys.executable, "-m", "nodes.utl"]


def _defrag_offline(data_dir: str) -> None:
    """etcdctl 3.4's ``defrag --data-dir``: nothing printed on success; on failure
    ``Failed to defragment ... data[DIR] (reason)`` on stderr, exit 1. The work is
    qkvutl's (it refuses a data dir a running member holds)."""
    import subprocess

    try:
        proc = subprocess.run([*qkvutl_command(), "defrag", "--data-dir", data_dir],
                              stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as exc:
        raise CliError(f"cannot run qkvutl for an offline defrag: {exc}") from None
    if proc.returncode == 0:
        return
    lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
    reason = next((ln[len("Error: "):] for ln in lines if ln.startswith("Error: ")),
                  lines[-1] if lines else f"qkvutl exited with {proc.returncode}")
    sys.stderr.write(f"Failed to defragment quorumkv data[{data_dir}] ({reason})\n")
    sys.stderr.flush()
    raise typer.Exit(EXIT_ERROR)
