"""Alarms: cluster-wide conditions raised and disarmed through the Raft log (etcd 3.4's
alarm store and its capped/corrupt appliers).

Rules:
- pure: no I/O; the MVCC store applies alarm entries and asks ``refusal`` before every op,
  so every member refuses exactly the same entries (the decision depends only on the log);
- an alarm is ``(member_id, type)``; the set lives in the store's ``meta`` column family
  under ``META_PREFIX + member_id (8 bytes BE) + type``, written in the same batch as the
  entry that changed it, so it survives restarts and snapshots;
- NOSPACE (the backend passed ``--quota-backend-bytes``): ``put``, a ``txn`` with a put in
  any branch (nested txns too; etcd looks one level deep) and ``lease_grant`` fail with
  ``no_space``; deletes, compaction, revocations and reads go on, so space can be freed;
- CORRUPT (members' hashes differ at one revision): every write fails with ``corrupt``
  (put, delete_range, a txn with a put or delete, compact, lease grant/revoke/expiry), as in
  etcd's applierV3Corrupt; reads and read-only txns go on (etcd 3.4 serves them outside the
  applier too); lease checkpoints and alarm entries are always applied.
"""
from __future__ import annotations

import struct
from typing import Iterable

from actors.storage.mvcc.shapes import Op
from protocol.errors import Corrupt, NoSpace, QkvError

NOSPACE = "NOSPACE"
CORRUPT = "CORRUPT"
ALARM_TYPES = (NOSPACE, CORRUPT)
META_PREFIX = b"alarm/"
META_END = b"alarm0"  # the first key after every META_PREFIX key ("0" follows "/")

Alarm = tuple[int, str]  # (member_id, type)
_U64 = struct.Struct(">Q")
_CORRUPT_REFUSED = frozenset(("put", "delete_range", "compact", "lease_grant", "lease_revoke",
                              "lease_expire"))


def alarm_key(member_id: int, alarm: str) -> bytes:
    return META_PREFIX + _U64.pack(member_id) + alarm.encode()


def parse_alarm_key(key: bytes) -> Alarm:
    rest = key[len(META_PREFIX):]
    return _U64.unpack(rest[:8])[0], rest[8:].decode()


def activate(alarms: frozenset[Alarm], member_id: int, alarm: str) -> tuple[frozenset[Alarm], list[Alarm]]:
    """The set with the alarm raised, and the alarms that are new (empty: already raised)."""
    item = (member_id, alarm)
    if item in alarms:
        return alarms, []
    return alarms | {item}, [item]


def deactivate(alarms: frozenset[Alarm], member_id: int, alarm: str,
               exact: bool = False) -> tuple[frozenset[Alarm], list[Alarm]]:
    """The set without the matching alarms (member_id 0 = every member, alarm "" = every
    type; ``exact``: only ``(member_id, alarm)`` itself, member 0 too, as etcd's
    Deactivate), and the alarms removed, sorted."""
    if exact:
        gone = [(member_id, alarm)] if (member_id, alarm) in alarms else []
        return alarms - set(gone), gone
    gone = sorted(a for a in alarms if member_id in (0, a[0]) and alarm in ("", a[1]))
    return alarms - set(gone), gone


def to_wire(alarms: Iterable[Alarm]) -> list[dict[str, int | str]]:
    return [{"member_id": m, "alarm": a} for m, a in sorted(alarms)]


def active_types(alarms: Iterable[Alarm]) -> set[str]:
    return {a for _, a in alarms}


def _ops_put(ops: list[Op]) -> bool:
    return any(o["op"] == "put" or (o["op"] == "txn" and txn_puts(o)) for o in ops)


def txn_puts(txn: Op) -> bool:
    """Whether either branch of a txn (or of a txn nested in it) holds a put."""
    return _ops_put(txn["success"]) or _ops_put(txn["failure"])


def txn_writes(txn: Op) -> bool:
    """Whether either branch of a txn (or of a nested one) holds a put or a delete."""
    for ops in (txn["success"], txn["failure"]):
        for o in ops:
            if o["op"] in ("put", "delete_range") or (o["op"] == "txn" and txn_writes(o)):
                return True
    return False


def refusal(alarms: frozenset[Alarm], op: Op) -> QkvError | None:
    """The error an op gets while these alarms are active, or None when it may run."""
    if not alarms:
        return None
    kinds = active_types(alarms)
    kind = op.get("op")
    if CORRUPT in kinds and (kind in _CORRUPT_REFUSED or (kind == "txn" and txn_writes(op))):
        return Corrupt()
    if NOSPACE in kinds and (kind in ("put", "lease_grant") or (kind == "txn" and txn_puts(op))):
        return NoSpace()
    return None


def adds_data(op: Op) -> bool:
    """Requests the quota check applies to before proposing (etcd's quota Cost > 0)."""
    kind = op.get("op")
    return kind in ("put", "lease_grant") or (kind == "txn" and txn_puts(op))
