"""The fast lane: `make test-fast` (the edit loop) sets QKV_TEST_LANE=fast; `make test` and
a plain `pytest` run everything in full.

Rules:
- the fast lane runs every test; only property-based tests do less: Hypothesis example
  counts are a quarter (``examples(n)``; the tests with no count of their own get the
  "fast" profile, 25 instead of Hypothesis' 100);
- a failure either lane finds is saved in .hypothesis/ and replayed first by both lanes;
- nothing else may depend on the lane: a test that passes in the fast lane and fails in
  full differs in how many examples it tried, never in what it checks.
"""
from __future__ import annotations

import os

FAST = os.environ.get("QKV_TEST_LANE") == "fast"
FAST_DIVISOR = 4
FAST_DEFAULT_EXAMPLES = 25  # Hypothesis' own default is 100


def examples(n: int) -> int:
    """``max_examples`` for a property test whose full count is ``n``."""
    return max(3, n // FAST_DIVISOR) if FAST else n
