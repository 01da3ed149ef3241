"""The short robustness run in `make test` (about 4 minutes): nine fault scenarios, one
of them on a 1-node cluster, one with real link cuts between network namespaces where
the machine allows it, one secure, and one whose traffic and watchers go through etcd's
gRPC API (grpc-kill), each with recorded KV and watch traffic checked for
linearizability and the watch guarantees, equal hashes on every member, no alarm, and
no lost acknowledged write. `make robustness DURATION=600` runs longer."""
from __future__ import annotations

import pytest
from harness import GRPC_SCENARIOS, run
from netns import netns_available

RUNS = [
    ("kill-leader", "faults"),
    ("kill-actor", "faults"),
    ("pause-actor", "faults"),
    ("isolate-leader", "netns"),
    ("crash-storage", "faults"),
    ("snapshot-follower", "faults"),
    ("single-crash", "faults"),
    ("secure", "faults"),
    ("grpc-kill", "faults"),
]


@pytest.mark.parametrize("scenario,network", RUNS, ids=[f"{s}-{n}" for s, n in RUNS])
def test_short_robustness_run(scenario, network, tmp_path):
    if network == "netns":
        ok, why = netns_available()
        if not ok:
            pytest.skip(f"network namespaces need CAP_NET_ADMIN: {why}")
    result = run(scenario, seed=[s for s, _ in RUNS].index(scenario) + 1, duration_s=16, workdir=tmp_path,
                 report_root=tmp_path / "reports", network=network)
    print(f"{scenario}: {result.get('ops_checked')} ops checked, {result.get('uncertain')} uncertain, "
          f"watch {result.get('watch')}, counts {result.get('counts')}, schedule {result.get('schedule')}")
    assert result.get("ok"), (
        f"{scenario} failed: {result.get('error')}; alarms {result.get('alarms')}\n"
        + "\n".join(result.get("violations", [])[:3])
        + f"\nreport: {result.get('report')}\nreplay: {result.get('replay')}"
    )
    if scenario in GRPC_SCENARIOS:  # the checks held for traffic that really went through gRPC
        counts, watch = result.get("counts") or {}, result.get("watch") or {}
        assert counts.get("put") and counts.get("cas") and counts.get("mtxn"), f"too few gRPC writes: {counts}"
        assert watch.get("events"), (f"no watch event came through gRPC: {watch}; "
                                     f"watchers' counts {result.get('watch_counts')}")
