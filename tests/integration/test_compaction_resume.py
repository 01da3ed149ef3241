"""Background compaction on a real 3-node cluster (issue 13): a member killed in the middle
of its physical compaction resumes it where it stopped after a restart, finishes it, and
ends with the same `hash_kv` as its peers. `compact` with `physical` answers once the
member's own physical compaction has reached the revision. Every node is stopped by the
fixture, pass or fail."""
from __future__ import annotations

import time

from nodeproc import log_events, ok, wait_for

BATCH_LIMIT = 50  # key versions per slice: ~12,500 versions make ~250 slices per member
KEYS = 2_000
TXNS = 125  # 2.5x what the peers' "slices > 100" check needs, the kill is at the 20th
PUTS_PER_TXN = 100


def _load(node) -> None:
    """TXNS revisions of PUTS_PER_TXN changes each: every key about 6 versions."""
    k = 0
    for t in range(TXNS):
        success = []
        for _ in range(PUTS_PER_TXN):
            success.append({"put": {"key": b"k/%05d" % (k % KEYS), "value": b"v%d" % t * 16}})
            k += 1
        if t % 10 == 9:  # and some deletes, so tombstones are compacted too
            success[-1] = {"delete_range": {"key": b"k/%05d" % ((k - 1) % KEYS)}}
        ok(node.request({"op": "txn", "compare": [], "success": success, "failure": []}, timeout=10))


def test_a_member_killed_during_its_physical_compaction_resumes_and_agrees(cluster_factory):
    cluster = cluster_factory(3, args=["--compaction-batch-limit", str(BATCH_LIMIT)])
    leader = cluster.leader()
    victim = next(n for n in cluster.nodes if n is not leader)
    # The victim's storage kills itself between two compaction slices (the 20th), again
    # each time the supervisor restarts it, until the test restarts the node without it.
    victim.kill()
    victim.env["QKV_FAILPOINTS"] = "compaction_slice@20"
    victim.start()
    _load(leader)
    revision = ok(leader.request({"op": "status"}))["header"]["revision"]
    compact_at = revision - 5
    ok(leader.request({"op": "compact", "revision": compact_at}, timeout=10))

    def storage_died() -> bool:
        return any(e.get("role") == "storage" for e in log_events(victim.log_text(), "actor_died"))

    wait_for(storage_died, 60, "the victim's storage to die between compaction slices", interval=0.05)
    victim.kill()
    victim.env.pop("QKV_FAILPOINTS")
    offset = len(victim.log_text())
    victim.start()

    def finished_after_restart() -> list[dict]:
        return log_events(victim.log_text()[offset:], "compaction_finished")

    done = wait_for(finished_after_restart, 60, "the restarted victim to finish its compaction")
    started = log_events(victim.log_text()[offset:], "compaction_started")
    assert started and started[0]["resumed"] is True, started
    # It resumed where the killed run stopped, not from the start.
    assert 0 < started[0]["physical_revision"] < compact_at, started
    assert done[0]["revision"] == compact_at and done[0]["slices"] >= 1, done
    for peer in cluster.nodes:
        if peer is not victim:
            wait_for(lambda p=peer: log_events(p.log_text(), "compaction_finished"), 60,
                     f"{peer.name} to finish its compaction")
            fin = log_events(peer.log_text(), "compaction_finished")[0]
            assert fin["revision"] == compact_at and fin["slices"] > 100, fin
            assert fin["revisions_removed"] >= TXNS * PUTS_PER_TXN * 0.9, fin
    assert len(cluster.converged_hashes()) == 1
    for n in cluster.nodes:
        reply = n.request({"op": "range", "key": b"k/00001", "revision": compact_at - 1, "serializable": True})
        assert reply is not None and not reply["ok"] and reply["error"]["code"] == "compacted", reply

    # `physical: true` answers once this member's own physical compaction reached it: the
    # reply took at least as long as that compaction (3,000 revisions, ~60 slices).
    for t in range(30):
        ok(victim.request({"op": "txn", "compare": [], "failure": [], "success": [
            {"put": {"key": b"k/%05d" % ((t * 100 + i) % KEYS), "value": b"again"}} for i in range(100)]}))
    again = ok(victim.request({"op": "status"}))["header"]["revision"] - 1
    t0 = time.monotonic()
    ok(victim.request({"op": "compact", "revision": again, "physical": True}, timeout=10))
    waited = time.monotonic() - t0

    def finished_again() -> list[dict]:
        return [e for e in log_events(victim.log_text()[offset:], "compaction_finished") if e["revision"] == again]

    fin = wait_for(finished_again, 10, "the victim's log line for the physical compaction")[0]
    assert fin["slices"] > 10 and waited >= fin["took_s"] * 0.9, (fin, waited)
    assert len(cluster.converged_hashes()) == 1
