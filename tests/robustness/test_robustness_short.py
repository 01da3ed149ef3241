"""The short robustness run in `make test`: six fault scenarios against a real 3-node
cluster, each with recorded traffic checked for linearizability, equal hashes on every
member, and no lost acknowledged write. `make robustness DURATION=600` runs longer."""
from __future__ import annotations

import pytest
from harness import run

SCENARIOS = ["kill-leader", "kill-actor", "pause-actor", "isolate-leader", "crash-storage", "snapshot-follower"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_short_robustness_run(scenario, tmp_path):
    result = run(scenario, seed=SCENARIOS.index(scenario) + 1, duration_s=15, workdir=tmp_path,
                 report_root=tmp_path / "reports")
    print(f"{scenario}: {result.get('ops_checked')} ops checked, {result.get('uncertain')} uncertain, "
          f"counts {result.get('counts')}, schedule {result.get('schedule')}")
    assert result.get("ok"), (
        f"{scenario} failed: {result.get('error')}\n" + "\n".join(result.get("violations", [])[:3])
        + f"\nreport: {result.get('report')}\nreplay: {result.get('replay')}"
    )
