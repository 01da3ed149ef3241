"""`make robustness DURATION=600`: robustness runs for a total duration, scenario after
scenario (each fault kind in turn, then random mixes), with a summary of operations
checked and violations found. `--scenario NAME --seed N --duration S` replays one run."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import SCENARIOS, run  # noqa: E402
from netns import netns_available  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=600, help="total seconds (one run's with --scenario)")
    ap.add_argument("--run-seconds", type=float, default=40, help="seconds per run")
    ap.add_argument("--scenario", choices=[*SCENARIOS, "random"])
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--reports", default="robustness-reports")
    ap.add_argument("--network", choices=["faults", "netns", "both"], default="faults",
                    help="partitions by the transport's fault layer, by real link cuts between "
                         "network namespaces (needs CAP_NET_ADMIN), or runs alternating the two")
    args = ap.parse_args(argv)
    reports = Path(args.reports).resolve()
    plan = [(args.scenario, args.seed, args.duration)] if args.scenario else None
    netns_ok, netns_why = netns_available() if args.network != "faults" else (False, "")
    started = time.monotonic()
    totals = {"runs": 0, "ops": 0, "watch_events": 0, "violations": 0, "failed": 0}
    i = 0
    while True:
        if plan is not None:
            if not plan:
                break
            scenario, seed, seconds = plan.pop(0)
        else:
            if time.monotonic() - started >= args.duration:
                break
            names = list(SCENARIOS) + ["random"]
            scenario, seed, seconds = names[i % len(names)], args.seed + i, args.run_seconds
        i += 1
        work = Path(tempfile.mkdtemp(prefix="qkv-robust-"))
        try:
            network = args.network
            if network == "both":
                # Flip every cycle too, so each scenario runs on both networks.
                network = "netns" if (i + i // (len(SCENARIOS) + 1)) % 2 == 0 else "faults"
            if network == "netns" and not netns_ok:
                print(f"network namespaces unavailable ({netns_why}): running with the fault layer", flush=True)
                network = "faults"
            res = run(scenario, seed, seconds, work, report_root=reports, network=network)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        totals["runs"] += 1
        totals["ops"] += res.get("ops_checked", 0)
        totals["violations"] += len(res.get("violations", []))
        totals["failed"] += 0 if res.get("ok") else 1
        status = "ok" if res.get("ok") else "FAILED"
        watch = res.get("watch") or {}
        totals["watch_events"] += watch.get("events", 0)
        print(f"[{time.monotonic() - started:6.0f}s] {scenario:<17} seed {seed:<6} {network:<6} {status}: "
              f"{res.get('ops_checked', 0)} ops checked, {res.get('uncertain', 0)} uncertain, "
              f"{watch.get('events', 0)} watch events in {watch.get('sessions', 0)} sessions, "
              f"{res.get('actor_deaths', 0)} actor deaths seen by supervisors, "
              f"{res.get('snapshots_installed', 0)} snapshots installed, counts {res.get('counts')}, "
              f"schedule {res.get('schedule')}", flush=True)
        if not res.get("ok"):
            for v in res.get("violations", [])[:3]:
                print(v, flush=True)
            print(f"  error: {res.get('error')}; hashes equal: {res.get('hashes_equal')}; alarms: "
                  f"{res.get('alarms')}; report: {res.get('report')}\n  replay: {res.get('replay')}",
                  flush=True)
    print(f"summary: {totals['runs']} runs, {totals['ops']} operations checked, "
          f"{totals['watch_events']} watch events checked, "
          f"{totals['violations']} violations, {totals['failed']} failed runs", flush=True)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
