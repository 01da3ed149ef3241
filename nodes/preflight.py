"""The start-up check of a data dir: before any actor runs, the supervisor refuses to start
a node whose consensus log or store cannot be trusted (etcd refuses the same states:
"state.commit is out of range", "backend.ConsistentIndex must be >= last snapshot index").

Why: a member that lost part of its log (a damaged disk, bytes overwritten) forgets
entries and votes it had acknowledged, which Raft counts on; and a store that has applied
entries past the end of the log skips the different entries the cluster later writes at
those indexes (writes time out on that member and are never applied there). Starting
such a member endangers the cluster; refusing it costs one member, which is replaced.

What is checked (read-only: nothing in the data dir changes, refused or not):
- the consensus log (actors/consensus/wal.py `verify`): no record fails its checksum
  (a record cut short at the end of the file is a torn append: dropped, as always), its
  files are readable, its entries are consecutive after the compaction point, and its hard
  state's commit index is within the log;
- the store (actors/storage/offline.py): readable, its applied index not past the end of
  the log, unless it is exactly the index of the snapshot last installed into it (the log
  catches up from the leader after an install), and not before the log's compaction point
  (the entries it would need next are gone).

A refusal is one line (`PreflightError`, shown as the node's start-up error) that names
the data dir, what is wrong, and the fix: remove the member and add it again with an
empty data dir, or restore from a snapshot.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from actors.consensus.wal import WALDamaged, verify
from actors.storage.offline import StoreUnreadable, read_indexes

CONSENSUS_DIR = "consensus"  # as the consensus actor names it (actors/consensus/actor.py)


class PreflightError(Exception):
    """The data dir cannot be trusted; the message is one line that names the fix."""


@dataclass
class Preflight:
    """What the check found (for the start-up log line)."""

    last_index: int = 0
    snapshot_index: int = 0
    commit: int = 0
    applied_index: int = 0
    installed_index: int = 0
    took_ms: float = 0.0


def fix_text(data_dir: str, member_id: int | None = None) -> str:
    who = f" {member_id:x}" if member_id else " <id>"
    return (f"this member must not rejoin with it: remove it and add it again (`qkvctl member remove{who}`, "
            f"`qkvctl member add`, move {data_dir} aside and start with an empty data dir and "
            "--initial-cluster-state existing), or restore from a snapshot (`qkvutl snapshot restore`)")


def check(data_dir: str, member_id: int | None = None) -> Preflight:
    """Check `data_dir`; raise `PreflightError` when the node must not start on it."""
    started = time.monotonic()
    data_dir = os.path.abspath(data_dir)
    found = Preflight()
    try:
        _check(data_dir, found)
    except (WALDamaged, StoreUnreadable, _Refused) as exc:
        why = str(exc).replace(data_dir + os.sep, "")  # paths inside the data dir, shortened
        raise PreflightError(f"data dir {data_dir} cannot be trusted: {why}; {fix_text(data_dir, member_id)}") \
            from None
    found.took_ms = round((time.monotonic() - started) * 1000, 1)
    return found


class _Refused(Exception):
    pass


def _check(data_dir: str, found: Preflight) -> None:
    wal_path = os.path.join(data_dir, CONSENSUS_DIR)
    log = f"the consensus log ({CONSENSUS_DIR}/)"
    try:
        wal = verify(wal_path)
    except WALDamaged as exc:
        raise WALDamaged(f"{log} is damaged: {exc}") from None
    store = read_indexes(data_dir)
    if wal is not None:
        found.last_index, found.snapshot_index = wal.last_index, wal.snapshot.index
        found.commit = wal.hard_state.commit
    if store is not None:
        found.applied_index, found.installed_index = store.applied_index, store.installed_index
    gone = "the entries the store needs next are gone"
    if store is None or store.applied_index == 0:
        # A new member, or a store restored from a snapshot file (applied index 0): the
        # log brings everything.
        if wal is not None and wal.snapshot.index > 0:
            raise _Refused(f"the store has applied nothing but {log} was compacted at entry {wal.snapshot.index}: "
                           f"{gone}")
        return
    where = f"the store ({os.path.basename(store.path)}/)"
    applied = store.applied_index
    if wal is None:
        raise _Refused(f"{where} has applied entry {applied} but there is no consensus log ({CONSENSUS_DIR}/)")
    if applied > wal.last_index and applied != store.installed_index:
        raise _Refused(f"{where} has applied entry {applied} but {log} ends at entry {wal.last_index}: "
                       "the log lost entries it had acknowledged")
    if applied < wal.snapshot.index:
        raise _Refused(f"{where} has applied entry {applied} but {log} was compacted at entry "
                       f"{wal.snapshot.index}: {gone}")
