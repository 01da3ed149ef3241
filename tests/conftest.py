import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests import lanes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/nodeproc.py, tests/fakeserver.py

if lanes.FAST:  # `make test-fast`: property tests without a count of their own (tests/lanes.py)
    settings.register_profile("fast", max_examples=lanes.FAST_DEFAULT_EXAMPLES)
    settings.load_profile("fast")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "threaded_only: a test of the threaded Client's own transport (fork, per-thread "
                   "sockets) or of qkvctl; not run against the asyncio client (tests/aioclient.py)")


@pytest.fixture(params=["thread", "asyncio"])
def client_kind(request):
    """Which client a library test runs against: the threaded ``Client`` or the asyncio
    ``AsyncClient`` behind tests/aioclient.py's synchronous adapter. A test takes
    ``make_client``/``client_kit`` (or the unit ``client`` fixture) and runs once per kind."""
    return request.param


@pytest.fixture
def client_kit(client_kind):
    """The kind's constructors (Client, Session, Lock, Election, Observer): tests/aioclient.Kit."""
    from aioclient import kit

    return kit(client_kind)


@pytest.fixture
def make_client(client_kit):
    """``make_client(endpoints, timeout=..., **kw)``: a client of the test's kind, closed at
    the end of the test."""
    made: list = []

    def make(*args, **kwargs):
        c = client_kit.Client(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


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
