"""Options for the deterministic simulator tests (tests/sim/test_sim.py)."""


def pytest_addoption(parser):
    group = parser.getgroup("sim", "deterministic Raft + MVCC simulation")
    group.addoption("--sim-seeds", type=int, default=500,
                    help="number of seeds test_sim runs (default 500)")
    group.addoption("--sim-start", type=int, default=0, help="first seed test_sim runs")
