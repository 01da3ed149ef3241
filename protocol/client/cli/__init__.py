"""``qkvctl``: etcdctl v3's commands, flags and output shapes for quorumkv.

One module per command group, as etcdctl has one file per command
(etcdctl/ctlv3/command/*_command.go):

    root.py         the command tree, global flags, entry point (ctl.go)
    common.py       exit codes, Globals, error mapping, client/printer factories
    kv.py           put, get, del, txn, compaction
    watch.py        watch
    lease.py        lease grant|revoke|timetolive|list|keep-alive
    lock_elect.py   lock, elect
    member.py       member list|add|remove|update|promote, move-leader
    maintenance.py  endpoint status|health|hashkv, alarm list|disarm, defrag
    snapshot.py     snapshot save|status (restore: `qkvutl`, nodes/utl.py)
    auth.py         auth, user, role
    bench.py        benchmark put|range|txn-put

zmq and the client are imported inside the commands, so ``qkvctl --help`` starts fast.
Errors print ``Error: <message>`` on stderr and exit with etcdctl's codes: 1 for a
failed request, 128 for bad arguments, 3 for bad txn input, 4 for an unsupported
feature (for example ``-w table`` on ``get``).
Global flags may appear anywhere on the line, as with etcdctl (``qkvctl get k -w json``).
Nothing here imports actors/ or nodes/ (tests/unit/test_pure_imports.py checks it): the
offline tools that open a data dir are ``qkvutl`` (nodes/utl.py).
"""
from __future__ import annotations

from protocol import VERSION
from protocol.client.cli.common import (
    API_VERSION, DEFAULT_ENDPOINTS, EXIT_BAD_ARGS, EXIT_BAD_CONNECTION, EXIT_BAD_FEATURE, EXIT_ERROR,
    EXIT_INVALID_INPUT, CliError, Globals, parse_duration, split_user,
)
from protocol.client.cli.root import app, hoist_global_flags, main, normalize_bool_flags, run, run_app

__all__ = [
    "API_VERSION", "DEFAULT_ENDPOINTS", "EXIT_BAD_ARGS", "EXIT_BAD_CONNECTION", "EXIT_BAD_FEATURE",
    "EXIT_ERROR", "EXIT_INVALID_INPUT", "VERSION", "CliError", "Globals", "app", "hoist_global_flags",
    "main", "normalize_bool_flags", "parse_duration", "run", "run_app", "split_user",
]
