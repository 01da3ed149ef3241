import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests import lanes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/nodeproc.py, tests/fakeserver.py

if lanes.FAST:  # `make test-fast`: property tests without a count of their own (tests/lanes.py)
    settings.register_profile("fast", max_examples=lanes.FAST_DEFAULT_EXAMPLES)
    settings.load_profile("fast")


def pytest_addoption(parser):
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="rewrite the Raft transcripts (tests/unit/raft_testdata/*.txt) "
                          "with the actual output instead of comparing")


@pytest.fixture
def node_factory(tmp_path):
    """Start real nodes; every one is killed at the end of the test, pass or fail
    (`NodeProcess.discard`: tests of the clean stop call `stop()` themselves)."""
    from nodeproc import NodeProcess

    started: list[NodeProcess] = []

    def make(name: str = "n1", args: list[str] | None = None, env: dict | None = None, start: bool = True,
             metrics: bool = False):
        node = NodeProcess(tmp_path, name, args, env, metrics=metrics)
        started.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in started:
        node.discard()


@pytest.fixture
def cluster_factory(tmp_path):
    """Start real clusters; every node is killed at the end of the test, pass or fail
    (`Cluster.discard`)."""
    from nodeproc import Cluster

    made: list = []

    def make(size: int = 3, args: list[str] | None = None, start: bool = True, metrics: bool = False):
        cluster = Cluster(tmp_path, size, args, metrics=metrics)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.discard()
