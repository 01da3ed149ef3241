"""The gateway's part of a full disk (actors/gateway/diskguard.py): which requests are
refused, which reads are served from storage at once, and the NOSPACE alarm raised and
disarmed by itself."""
from actors.gateway import diskguard as G
from actors.gateway.diskguard import DiskGuard
from protocol import errors

ME = 0x51
OTHER = 0x52
FULL = {"state": "no_space", "path": "/d/storage", "error": "IO error: No space left on device", "since_s": 1.0}
EIO = {"state": "io_error", "path": "/d/consensus", "error": "IO error: Input/output error", "since_s": 1.0}
ALARM = {"member_id": ME, "alarm": "NOSPACE"}


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **kw):
        self.lines.append(event)

    info = warning


def members(*ids, learners=()):
    return [{"id": i, "is_learner": False} for i in ids] + [{"id": i, "is_learner": True} for i in learners]


def cons(lead=OTHER, disk=None, ids=(ME, OTHER, 0x53), commit=100):
    return {"lead": lead, "disk": disk, "members": members(*ids), "commit": commit}


def guard():
    return DiskGuard(ME, Log())


def test_healthy_disk_refuses_nothing():
    g = guard()
    op = {"op": "put", "key": b"k", "value": b"v"}
    assert g.check(op, True, {"disk": None}, cons()) is None
    assert g.check({"op": "range", "key": b"k"}, False, {}, {}) is None


def test_writes_refused_with_no_space_reads_go_on():
    g = guard()
    for op in ({"op": "put"}, {"op": "delete_range"}, {"op": "txn"}, {"op": "compact"}, {"op": "lease_grant"}):
        err = g.check(op, True, {"disk": FULL}, cons())
        assert isinstance(err, errors.NoSpace) and f"{ME:x}" in err.message and "/d/" not in err.message
    assert isinstance(g.check({"op": "authenticate"}, False, {"disk": FULL}, cons()), errors.NoSpace)
    read = {"op": "range", "key": b"k"}
    assert g.check(read, False, {"disk": FULL}, cons()) is None
    assert read == {"op": "range", "key": b"k"}  # untouched: storage decides (_stalled_reads)


def test_log_full_refuses_too_and_io_errors_are_unavailable():
    g = guard()
    assert isinstance(g.check({"op": "put"}, True, {}, cons(disk=FULL)), errors.NoSpace)
    err = g.check({"op": "put"}, True, {}, cons(disk=EIO))
    assert isinstance(err, errors.Unavailable) and err.retryable


def test_alarm_proposed_on_a_follower_and_repeated():
    g = guard()
    ops = g.tick(0.0, {"disk": FULL}, cons())
    assert ops == [{"op": "alarm_activate", "member_id": ME, "alarm": "NOSPACE"}]
    assert g.log.lines == ["disk_alarm_raised"]
    assert g.tick(1.0, {"disk": FULL}, cons()) == []
    assert g.tick(G.ALARM_REPEAT_S, {"disk": FULL}, cons()) == ops
    assert g.log.lines == ["disk_alarm_raised"]  # one line per episode


def test_no_alarm_from_a_leader_whose_log_is_full_nor_for_io_errors():
    g = guard()
    assert g.tick(0.0, {"disk": FULL}, cons(lead=ME, disk=FULL, ids=(ME,))) == []
    assert g.tick(0.0, {"disk": EIO}, cons()) == []
    assert not g.raised


def test_disarmed_once_the_disk_is_back():
    g = guard()
    g.tick(0.0, {"disk": FULL}, cons())
    disarm = [{"op": "alarm_disarm", "member_id": ME, "alarm": "NOSPACE"}]
    # Back: disarmed at once (the alarm may have committed unseen: storage could not apply).
    assert g.tick(1.0, {"disk": None, "alarms": [], "applied_index": 90}, cons(commit=100)) == disarm
    assert g.tick(1.5, {"disk": None, "alarms": [], "applied_index": 95}, cons(commit=100)) == []
    # It shows active (its activation applied after that look): disarmed again, repeated.
    st = {"alarms": [ALARM], "applied_index": 101}
    assert g.tick(2.0, st, cons()) == disarm
    assert g.tick(2.5, st, cons()) == []
    assert g.tick(2.0 + G.DISARM_REPEAT_S, st, cons()) == disarm
    assert g.log.lines == ["disk_alarm_raised", "disk_alarm_disarm_proposed"]
    # Gone; after the watch window the watch index is taken, then reached: done.
    st = {"alarms": [], "applied_index": 105}
    assert g.tick(1.0 + G.DISARM_WATCH_S, st, cons(commit=110)) == []
    assert g.raised and g.watch_index == 110
    assert g.tick(5.0 + G.DISARM_WATCH_S, {"alarms": [], "applied_index": 110}, cons(commit=120)) == []
    assert not g.raised


def test_other_members_alarms_and_quota_alarms_are_left_alone():
    g = guard()
    st = {"alarms": [{"member_id": OTHER, "alarm": "NOSPACE"}, ALARM], "applied_index": 1}
    assert g.tick(0.0, st, cons()) == []  # never raised for the disk here
    g.tick(1.0, {"disk": FULL}, cons())
    assert g.tick(2.0, st, cons(), over_quota=True) == []  # over the quota: the operator's
    assert not g.raised and "disk_alarm_kept" in g.log.lines
    g = guard()
    g.tick(1.0, {"disk": FULL}, cons())
    assert g.tick(2.0, {"alarms": []}, cons(), over_quota=True) == []  # not at once either


def test_status_says_nospace_while_full():
    g = guard()
    response = {"alarms": [], "errors": []}
    g.annotate(response, {"disk": FULL}, cons())
    assert response["alarms"] == [ALARM]
    assert f"memberID:{ME} alarm:NOSPACE" in response["errors"]
    assert any(e.startswith("disk full") for e in response["errors"])
    response = {"alarms": [ALARM], "errors": [f"memberID:{ME} alarm:NOSPACE"]}
    g.annotate(response, {}, cons(disk=FULL))
    assert response["alarms"] == [ALARM] and len(response["errors"]) == 2
    response = {"alarms": [], "errors": []}
    g.annotate(response, {"disk": EIO}, cons())
    assert response == {"alarms": [], "errors": []}
