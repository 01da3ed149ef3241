"""Crashes under a write load: no acknowledged write is ever lost."""
from __future__ import annotations

import time

import pytest
from load import Writer, all_kvs

from nodeproc import wait_for


def check_acked_writes(node, writer: Writer) -> int:
    kvs = {kv["key"]: kv for kv in all_kvs(node.request, writer.prefix.encode())}
    missing = [k for k in writer.acked if k not in kvs]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    for key, rev in writer.acked.items():
        assert kvs[key]["mod_revision"] == rev and kvs[key]["value"] == key
    return len(kvs)


@pytest.mark.parametrize("role", ["consensus", "storage", "gateway", "watch"])
def test_kill_9_of_one_actor_heals_within_2s(node_factory, role):
    node = node_factory()
    writer = Writer(node.client_url)
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 200, 20, "writes before the kill")
        old = node.kill_actor(role)
        killed_at = time.monotonic()
        wait_for(lambda: node.actor_pids().get(role) not in (None, old), 5, f"{role} restart")
        wait_for(node.serves, 5, "the node to serve again")
        healed = time.monotonic() - killed_at
        before = len(writer.acked)
        wait_for(lambda: len(writer.acked) > before + 100, 10, "writes after the restart")
    finally:
        writer.stop()
    print(f"{role}: serving again {healed:.2f}s after kill -9; acked {len(writer.acked)}, failed {writer.failed}")
    assert healed < 2.0
    check_acked_writes(node, writer)


def test_kill_9_of_every_process_five_rounds(node_factory):
    node = node_factory()
    writer_total: dict[bytes, int] = {}
    highest_revision = 0
    for round_no in range(5):
        writer = Writer(node.client_url, prefix=f"round{round_no}/")
        writer.start()
        try:
            wait_for(lambda: len(writer.acked) > 300, 30, "writes before the crash")
        finally:
            node.kill()  # supervisor and all actors at once, mid-load
            writer.stop()
        node.start()
        for key, rev in writer.acked.items():
            writer_total[key] = rev
        # Every acknowledged write of every round reads back.
        kvs = {kv["key"]: kv for kv in all_kvs(node.request)}
        lost = [k for k in writer_total if k not in kvs]
        assert not lost, f"round {round_no}: {len(lost)} acknowledged writes lost"
        for key, rev in writer_total.items():
            assert kvs[key]["mod_revision"] == rev
        # Revisions have no holes: every key was put once, so the mod revisions of all
        # keys are exactly 2..current.
        status = node.request({"op": "status"})
        current = status["header"]["revision"]
        revisions = sorted(kv["mod_revision"] for kv in kvs.values())
        assert revisions == list(range(2, current + 1)), f"round {round_no}: revision holes"
        # The revision never goes backwards.
        assert current >= max(highest_revision, writer.max_revision)
        highest_revision = current
        print(f"round {round_no}: {len(writer.acked)} acked, {writer.failed} failed, revision {current}")
