"""Run the deterministic simulator over many seeds, or replay one.

    .venv/bin/python -m tests.sim.run --seeds 100000 [--start N] [--nodes 3|5]
    .venv/bin/python -m tests.sim.run --seed 1234 [--nodes 5] --verbose
    .venv/bin/python -m tests.sim.run --membership --seeds 10000   # with membership changes
    python tests/sim/run.py --seeds 1000
    python tests/sim/run.py --leases --seeds 10000   (leases: tests/sim/leases.py)
Exit status 1 when a seed fails (its replay command is printed); --keep-going runs on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: make `tests.sim` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    __package__ = "tests.sim"

from tests.sim.full import FullSim  # noqa: E402
from tests.sim.leases import LeaseSim  # noqa: E402
from tests.sim.membership import MembershipSim  # noqa: E402
from tests.sim.sim import Sim, SimFailure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="replay exactly this seed")
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--nodes", type=int, choices=(3, 5), help="cluster size (default: drawn)")
    ap.add_argument("--steps", type=int, help="safety-phase steps (default: drawn, 300-600)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print a trace")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    ap.add_argument("--no-pre-vote", action="store_true")
    ap.add_argument("--no-check-quorum", action="store_true")
    ap.add_argument("--leases", action="store_true", help="the lease simulator (tests/sim/leases.py)")
    ap.add_argument("--membership", action="store_true",
                    help="membership changes too (tests/sim/membership.py: add learner, promote, remove)")
    ap.add_argument("--two-voter-removals", action="store_true",
                    help="with --membership: also remove a voter from two (a known hazard)")
    args = ap.parse_args(argv)

    sim_class = {(False, False): Sim, (True, False): LeaseSim, (False, True): MembershipSim,
                 (True, True): FullSim}[(args.leases, args.membership)]
    extra = {"two_voter_removals": True} if args.two_voter_removals else {}

    def one(seed: int, verbose: bool) -> dict:
        return sim_class(seed, nodes=args.nodes, steps=args.steps, verbose=verbose,
                         pre_vote=not args.no_pre_vote, check_quorum=not args.no_check_quorum, **extra).run()

    if args.seed is not None:
        try:
            stats = one(args.seed, args.verbose)
        except SimFailure as e:
            traceback.print_exception(e.__cause__ or e) if args.verbose else None
            print(f"FAIL {e}")
            return 1
        print(f"seed {args.seed} ok: {stats}")
        return 0

    t0 = time.monotonic()
    failures: list[int] = []
    totals: dict[str, int] = {}
    last_report = t0
    for k, seed in enumerate(range(args.start, args.start + args.seeds), 1):
        try:
            stats = one(seed, False)
        except SimFailure as e:
            failures.append(seed)
            print(f"FAIL {e}", flush=True)
            if not args.keep_going:
                break
            continue
        for name, v in stats.items():
            totals[name] = totals.get(name, 0) + v
        now = time.monotonic()
        if now - last_report >= 10 or k == args.seeds:
            last_report = now
            print(f"{k}/{args.seeds} seeds, {len(failures)} failed, {now - t0:.0f}s "
                  f"({(now - t0) / k * 1000:.0f} ms/seed)", flush=True)
    n = k if args.seeds else 0
    print(f"summary: seeds {args.start}..{args.start + n - 1}: {n - len(failures)} passed, "
          f"{len(failures)} failed{(' ' + str(failures[:20])) if failures else ''}; "
          f"{time.monotonic() - t0:.1f}s; totals {totals}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
