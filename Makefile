# quorumkv: every target sets itself up; a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA_DIR ?= ./default.qkv
PYTEST_ARGS ?=

.PHONY: protos run test test-fast typecheck bench bench-restart bench-cluster bench-watch bench-lease bench-client bench-scale bench-compare cluster sim robustness clean help

help:
	@echo "make run    - set up .venv and start one node (data dir $(DATA_DIR), clients on tcp://127.0.0.1:7379)"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make test-fast - unit tests and the simulator only (the edit loop)"
	@echo "make typecheck - mypy (pyproject [tool.mypy]: strict on the pure cores); make test and test-fast run it first"
	@echo "make bench  - benchmark a fresh local node (puts, serializable and linearizable gets, txn-puts)"
	@echo "make bench-restart - time a restart of a node holding 1,000,000 keys"
	@echo "make cluster - a local 3-node cluster in the foreground (Ctrl-C stops it)"
	@echo "make bench-cluster - benchmark a fresh local 3-node cluster"
	@echo "make bench-watch - watch fan-out, latency and memory figures"
	@echo "make bench-lease - keep-alive throughput with 10,000 leases, lock cycles with 1 and 16 contenders"
	@echo "make bench-client - client throughput: 1,000 asyncio tasks through one AsyncClient beside 64 threads through one Client"
	@echo "make bench-scale - Kubernetes-sized figures (1M keys, churn with compaction, paged list, 10k watchers, 10k leases) beside etcd 3.4's when /usr/bin/etcd is installed (< 20 min; SCALE_* env vars scale it)"
	@echo "make bench-compare - etcd 3.4 (when /usr/bin/etcd is installed) beside quorumkv, one node then 3 nodes, each fresh: puts with 1 and 64 clients, linearizable and serializable gets, watch delivery; requests/s, p99, ratio, CPU per 1,000 requests; and quorumkv through etcd's gRPC API with etcd's load generator (--grpc-only: those rows alone) (~6 min; BENCH_TOTAL etc. scale it)"
	@echo "make sim SEEDS=100000 - the deterministic simulator for many seeds: Raft + MVCC, then with membership changes and leases too"
	@echo "make robustness DURATION=600 [NETWORK=faults|netns|both] - fault scenarios with recorded histories, checked for linearizability and watch guarantees"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/qkv --data-dir $(DATA_DIR) --log-format console

# mypy before the tests, in both lanes: it takes seconds (less with its cache) and a type
# error found here is cheaper than the test failure it would become.
typecheck: $(STAMP)
	$(BIN)/python -m mypy

# The whole suite: the unit and simulator tests on four workers (as test-fast, at full
# counts), then everything that starts real nodes in one process (clusters need the cores).
test: typecheck
	$(BIN)/python -m pytest -q -n 4 tests/unit tests/sim $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q --ignore=tests/unit --ignore=tests/sim $(PYTEST_ARGS)

# The edit loop: every unit and simulator test, with less of each randomized one
# (tests/lanes.py): property tests try a quarter of their examples (QKV_TEST_LANE=fast), the
# simulator runs seeds 0-199 (make test: 0-499; make sim: 10,000), on four workers (pytest-xdist:
# these tests are CPU-bound or, the client tests run with both clients, wait on the timers of
# their own in-process servers, so four keep two cores busy; the node-starting half stays one
# process, its clusters need the cores). About 70 s on 2 cores.
test-fast: typecheck
	QKV_TEST_LANE=fast $(BIN)/python -m pytest -q -n 4 tests/unit tests/sim --sim-seeds 200 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_node.py

bench-restart: $(STAMP)
	$(BIN)/python tests/bench/bench_restart.py

bench-cluster: $(STAMP)
	$(BIN)/python tests/bench/bench_cluster.py

bench-watch: $(STAMP)
	$(BIN)/python tests/bench/bench_watch.py

bench-lease: $(STAMP)
	$(BIN)/python tests/bench/bench_lease.py
	$(BIN)/python tests/bench/bench_lock.py

bench-client: $(STAMP)
	$(BIN)/python tests/bench/bench_client.py

# `make protos` needs grpcio-tools, the optional `bench` extra (grpcio and protobuf, which the
# etcd comparisons' gRPC client uses, are runtime dependencies).
BENCH_STAMP := $(VENV)/.installed-bench-stamp
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench-scale: $(STAMP)
	$(BIN)/python tests/bench/bench_scale.py

bench-compare: $(STAMP)
	$(BIN)/python tests/bench/bench_compare.py

# etcd 3.4's .proto files (Debian's golang-etcd-server-dev) -> protocol/etcdpb/ (committed).
protos: $(BENCH_STAMP)
	$(BIN)/python protocol/etcdpb/gen.py

cluster: $(STAMP)
	exec $(BIN)/python deploy/cluster.py

DURATION ?= 600
NETWORK ?= faults
robustness: $(STAMP)
	$(BIN)/python tests/robustness/run.py --duration $(DURATION) --network $(NETWORK)

SEEDS ?= 10000
sim: $(STAMP)
	$(BIN)/python tests/sim/run.py --seeds $(SEEDS)
	$(BIN)/python tests/sim/run.py --leases --membership --seeds $(SEEDS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache
