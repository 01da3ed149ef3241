"""The whole hostile set (issue 12) against one 3-node cluster with an honest writer
beside it. At the end: no actor died, every acknowledged write is readable on every
member, `hash_kv` is equal everywhere, and every actor's peak RSS stayed under
RSS_LIMIT_MIB. Figures (honest latency per phase, peak RSS per actor) are printed.

Order: n1 is made the leader; the request-level attacks run on every member at once
(slow readers, stalled and greedy subscribers, a huge topic, expensive txns); then n3's
disk (a small tmpfs) fills up and empties; then n2 is killed, its log tail damaged, it
refuses to start, and is replaced (member remove, member add) by n4.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attacks
from hostile_support import Honest, RssWatch, ballast, refusal

from nodeproc import Cluster, NodeProcess, wait_for
from protocol.client import Client

FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]
# Peak RSS of any one actor over the whole scenario (README "Limits"). The leader's
# consensus jumps within 0.2 s from ~140 to 330-423 MiB in about half the runs while n3's
# disk fills (the issue-12 consensus code does it too: 397 MiB); cause not found yet.
RSS_LIMIT_MIB = 512
DISK_MIB = 256  # n3's filesystem: room for the attacks' data, then filled with ballast


def _qkvctl(urls: list[str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", "from protocol.client.cli import main; main()",
                           "--endpoints", ",".join(urls), "--command-timeout", "10s", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"qkvctl {args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_hostile_scenario(tmpfs, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, args=FAST)
    n1, n2, n3 = cluster.nodes
    small_fs = tmpfs(tmp_path / "disk3", DISK_MIB)  # skips where mounting is not permitted
    n3.data_dir = str(small_fs / "n3.qkv")  # n3's data dir on a small filesystem
    extra: list[NodeProcess] = []
    watches: dict[str, RssWatch] = {}
    honest: Honest | None = None
    socks = []
    try:
        cluster.start()
        lead = cluster.leader()
        if lead is not n1:
            assert lead.request({"op": "move_leader", "target_id": n1.member_id}, timeout=10)["ok"]
            wait_for(lambda: cluster.leader() is n1, 20, "n1 to lead")
        for n in cluster.nodes:
            watches[n.name] = RssWatch(n)
            watches[n.name].start()
        honest = Honest(n1.client_url)
        honest.start()
        wait_for(lambda: len(honest.samples["before"]) >= 50, 30, "honest baseline")

        # --- set-up: a 1 MiB value and a 25,000-key range ---------------------------
        assert attacks.request(n1.client_url, {"op": "put", "key": b"big", "value": b"b" * attacks.MiB})["ok"]
        attacks.put_many(n1.client_url, b"range/", 25_000)

        # --- items 1-3 on every member at once ----------------------------------------
        honest.phase("requests")
        for n in cluster.nodes:
            socks.append(attacks.slow_reader(n.client_url, b"big", 300))
            socks.append(attacks.stalled_subscriber(n.watch_url, b"watched/"))
            assert attacks.raw_subscribe_is_closed(n.watch_url, b"W1" + b"t" * (8 * attacks.MiB))
            socks.extend(attacks.many_subscriptions(n.watch_url, 5_000))
        for size in (4096, 1_500_000):
            for i in range(20):
                reply = attacks.request(n2.client_url, {"op": "put", "key": b"watched/%d" % i, "value": b"w" * size})
                assert reply and reply.get("ok"), reply
        for req in (attacks.range_compare_txn(b"range/"), attacks.nested_tree()):
            reply, took = attacks.timed(n1.client_url, req)
            print(f"expensive txn: {'ok' if reply and reply.get('ok') else (reply or {}).get('error')} in {took:.2f} s")
            assert reply is not None and (reply.get("ok") or reply["error"]["code"] == "too_many_ops"), reply
        for s in socks:
            s.close(0)
        socks = []

        # --- item 4: n3's disk fills up and empties ------------------------------------
        # (its NOSPACE alarm then makes the whole cluster refuse puts, as etcd's does)
        honest.phase("disk_full")
        room = ballast(small_fs)
        attacks.put_many(n1.client_url, b"fill/", 2_000, value=b"f" * 4096, allow=("no_space",))

        def refused() -> bool:
            r = attacks.request(n3.client_url, {"op": "put", "key": b"on-full", "value": b"x"}, timeout=5)
            return bool(r) and not r.get("ok") and r["error"]["code"] == "no_space"

        wait_for(refused, 60, "n3 to refuse writes with no_space")
        r = attacks.request(n3.client_url, {"op": "range", "key": b"big", "serializable": True})
        assert r and r.get("ok") and r["kvs"][0]["value"] == b"b" * attacks.MiB, r
        room.unlink()
        wait_for(lambda: (attacks.request(n3.client_url, {"op": "put", "key": b"after-full", "value": b"x"},
                                          timeout=5) or {}).get("ok"), 60, "n3 to take writes again")

        # --- item 5: n2's log tail is damaged; it refuses to start; it is replaced ---------
        honest.phase("damaged_log")
        n2.kill()
        attacks.damage_random_tail(attacks.wal_file(n2))
        print("damaged member:", refusal(n2))
        urls = [n1.client_url, n3.client_url]
        _qkvctl(urls, "member", "remove", f"{n2.member_id:x}")
        n4 = NodeProcess(tmp_path, "n4")
        extra.append(n4)
        out = _qkvctl(urls, "member", "add", "n4", f"--peer-urls={n4.peer_url}")
        env = dict(line.split("=", 1) for line in out.splitlines()[2:] if "=" in line)
        n4.args = ["--initial-cluster", env["QKV_INITIAL_CLUSTER"].strip('"'),
                   "--initial-advertise-peer-urls", env["QKV_INITIAL_ADVERTISE_PEER_URLS"].strip('"'),
                   "--initial-cluster-state", "existing", *FAST]
        n4.start(timeout=60)

        honest.stop()
        print("honest client:", honest.report())
        while_full = honest.failures_by_phase.pop("disk_full", [])
        assert not honest.failures_by_phase, honest.failures_by_phase
        # While n3's alarm stood, puts were refused (the one in flight as it filled may time out).
        assert all(op == "put" and err != "no reply" and err["code"] in ("no_space", "timeout")
                   for op, err in while_full), while_full

        # --- the end state ---------------------------------------------------------------
        members = [n1, n3, n4]
        assert len(cluster.converged_hashes(members, timeout=90)) == 1
        for n in members:
            with Client([n.client_url], timeout=10) as one:
                got = {kv.key: kv.value for kv in one.get(b"honest/", prefix=True, serializable=True).kvs}
            lost = honest.lost(got)
            assert not lost, (n.name, lost[:5])
        peaks = {name: w.stop() for name, w in watches.items()}
        print("peak RSS MiB:", {name: {r: round(v) for r, v in p.items()} for name, p in peaks.items()})
        for name in ("n1", "n3"):
            assert not watches[name].restarted(), (name, watches[name].restarted())
        for name, p in peaks.items():
            for role, mib in p.items():
                assert mib < RSS_LIMIT_MIB, (name, role, mib)
    finally:
        for s in socks:
            s.close(0)
        if honest is not None and honest.is_alive():
            honest.stop()
        for w in watches.values():
            w.stop()
        for n in extra:
            n.discard()
        cluster.discard()
