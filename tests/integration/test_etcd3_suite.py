"""python-etcd3 0.12.0's own test suite against a quorumkv 3-member cluster's gRPC
endpoints (issue 18's acceptance: "the test suite of one public etcd client library ...
run against quorumkv"), through tests/compat/run_etcd3_suite.py: every failure must be
one of KNOWN_BY_DESIGN, each with its reason. The same suite passes whole against etcd
3.4.23 (``run_etcd3_suite.py --compare-etcd``)."""
from __future__ import annotations

import os

import pytest

from tests.compat import run_etcd3_suite as suite

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(suite.ETCDCTL),
                       reason=f"{suite.ETCDCTL} is not installed: python-etcd3's tests shell out to etcdctl 3.4"),
]


def test_python_etcd3_suite_against_quorumkv(tmp_path):
    try:
        cache = suite.fetch_suite()
    except suite.SuiteUnavailable as exc:
        pytest.skip(f"python-etcd3 {suite.ETCD3_VERSION}'s tests could not be fetched (no network?): {exc}")
    result = suite.run_against_quorumkv(tmp_path, cache)
    print(suite.report([result]))
    assert result.total > 0, result.output[-3000:]
    unexpected = result.unexpected()
    assert not unexpected, f"{suite.report([result])}\n\n{result.output[-6000:]}"
