"""The gateway's part of a full disk (issue 12, item 4; actors/runtime/diskfault.py).

Storage and consensus report `disk` (None, or {"state": "no_space" | "io_error", "path",
"error", "since_s"}) in the status the gateway polls every 250 ms. From those reports:
- while a local actor reports one, requests that need the log (`is_write`, and
  `authenticate`, whose entry this member's storage could not apply) are refused at once:
  `no_space` for a full disk, `unavailable` for another disk error (retryable: another
  member may take it). Reads go on. Membership ops go to consensus, which refuses them
  itself while its log cannot be written;
- reads take their usual path: storage serves a read that waits for entries it cannot
  apply at once on a one-voter cluster, and refuses it (`unavailable`) elsewhere
  (actors/storage/actor.py `_stalled_reads`);
- a full disk raises the NOSPACE alarm of this member through the log: proposed when the
  episode starts and again every ALARM_REPEAT_S while it lasts (this member's storage
  cannot apply it, so the gateway cannot see it become active). It commits only where a
  leader can write: a follower's consensus forwards it to its leader; a leader whose own
  log is full takes nothing, so it is not proposed there (on a one-node cluster the alarm
  cannot commit while the disk is full: `status` shows NOSPACE for this member from the
  local report, `annotate`);
- once no local actor reports a fault, an alarm this gateway raised for the disk is
  disarmed by itself: `alarm_disarm` is proposed at once (the alarm may have committed
  while this member's storage could not apply it), then while storage shows it active,
  unless the store is over `--quota-backend-bytes` (past the quota it is the quota's alarm,
  which the operator disarms, as in etcd). The gateway watches until its storage has
  applied past the commit index seen DISARM_WATCH_S after the disk came back, so an
  alarm proposal that was still in flight is disarmed too.

`DiskGuard` holds no sockets: `tick` returns the ops to propose (server entries, req_id 0).
"""
from __future__ import annotations

from typing import Any, Mapping

from protocol import errors

NOSPACE = "NOSPACE"
ALARM_REPEAT_S = 5.0  # a NOSPACE proposal is repeated this often while the disk is full
DISARM_REPEAT_S = 1.0  # a disarm is repeated this often while the alarm shows active
DISARM_WATCH_S = 3.0  # after the disk came back: how long before the watch index is taken


def local_fault(storage_status: Mapping[str, Any], consensus_status: Mapping[str, Any]) -> dict | None:
    """The disk fault a local actor reports (storage's first), or None."""
    for status in (storage_status, consensus_status):
        fault = status.get("disk") if isinstance(status, dict) else None
        if isinstance(fault, dict):
            return fault
    return None


class DiskGuard:
    def __init__(self, member_id: int, log: Any) -> None:
        self.member_id = member_id
        self.log = log
        self.raised = False  # this gateway proposed NOSPACE for the disk and has not finished
        self.last_activate = -1e9
        self.last_disarm = -1e9
        self.cleared_at: float | None = None
        self.watch_index: int | None = None
        self.disarms = 0

    def _alarm(self) -> dict:
        return {"member_id": self.member_id, "alarm": NOSPACE}

    def check(self, op: dict, needs_log: bool, storage_status: Mapping[str, Any],
              consensus_status: Mapping[str, Any]) -> errors.QkvError | None:
        """The error for a request while a local disk refuses writes; None to go on."""
        if not needs_log and op.get("op") != "authenticate":
            return None
        fault = local_fault(storage_status, consensus_status)
        if fault is None:
            return None
        if fault.get("state") == "no_space":
            return errors.NoSpace(f"etcdserver: mvcc: database space exceeded: the disk of member "
                                  f"{self.member_id:x} is full; writes are refused until space is freed")
        return errors.Unavailable(f"etcdserver: member {self.member_id:x} cannot write to its disk (I/O error); "
                                  "writes are refused until it can")

    def tick(self, now: float, storage_status: Mapping[str, Any], consensus_status: Mapping[str, Any],
             over_quota: bool = False) -> list[dict]:
        """The alarm ops to propose now."""
        fault = local_fault(storage_status, consensus_status)
        if fault is not None:
            self.cleared_at = None
            self.watch_index = None
            if fault.get("state") != "no_space":
                return []
            log_full = isinstance(consensus_status.get("disk"), dict)
            if log_full and consensus_status.get("lead") == self.member_id:
                return []  # a leader that cannot write its log takes nothing (one-node cluster)
            if now - self.last_activate < ALARM_REPEAT_S:
                return []
            self.last_activate = now
            if not self.raised:
                self.log.warning("disk_alarm_raised", member=f"{self.member_id:x}", alarm=NOSPACE,
                                 path=fault.get("path"), error=fault.get("error"))
            self.raised = True
            return [{"op": "alarm_activate", "member_id": self.member_id, "alarm": NOSPACE}]
        if not self.raised:
            return []
        back = self.cleared_at is None  # the first look since the disk came back
        if self.cleared_at is None:
            self.cleared_at = now
        cleared_at = self.cleared_at
        active = self._alarm() in (storage_status.get("alarms") or [])
        if active and over_quota:
            self.log.warning("disk_alarm_kept", member=f"{self.member_id:x}", alarm=NOSPACE,
                             reason="the store is over --quota-backend-bytes: disarm it once space is freed")
            self.raised = False
            return []
        # At once when the disk is back (the alarm may have committed while this member's
        # storage could not apply it: the disarm commits after it), then while it shows.
        if (active or (back and not over_quota)) and now - self.last_disarm >= DISARM_REPEAT_S:
            self.last_disarm = now
            if self.disarms == 0:
                self.log.info("disk_alarm_disarm_proposed", member=f"{self.member_id:x}", alarm=NOSPACE,
                              reason="the disk takes writes again")
            self.disarms += 1
            return [{"op": "alarm_disarm", "member_id": self.member_id, "alarm": NOSPACE}]
        if active:
            return []
        if now - cleared_at < DISARM_WATCH_S:
            return []
        if self.watch_index is None:
            self.watch_index = int(consensus_status.get("commit") or 0)
            return []
        if int(storage_status.get("applied_index") or 0) >= self.watch_index:
            self.raised = False  # no proposal of ours can still commit unseen
            self.disarms = 0
        return []

    def annotate(self, response: dict, storage_status: Mapping[str, Any], consensus_status: Mapping[str, Any]) -> None:
        """A `status` reply while this member's disk is full says NOSPACE for it, as an
        active alarm would (on a one-node cluster the alarm cannot commit meanwhile)."""
        fault = local_fault(storage_status, consensus_status)
        if fault is None or fault.get("state") != "no_space":
            return
        alarm = self._alarm()
        alarms = list(response.get("alarms") or [])
        if alarm not in alarms:
            alarms.append(alarm)
            alarms.sort(key=lambda a: (a["member_id"], a["alarm"]))
            response["alarms"] = alarms
            response["errors"] = list(response.get("errors") or []) + [
                f"memberID:{self.member_id} alarm:{NOSPACE}"]
        response["errors"] = list(response["errors"]) + [
            "disk full: this member cannot write its data; writes are refused until space is freed"]
