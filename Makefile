# quorumkv: every target sets itself up; a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA_DIR ?= ./default.qkv
PYTEST_ARGS ?=

.PHONY: run test bench bench-restart clean help

help:
	@echo "make run    - set up .venv and start one node (data dir $(DATA_DIR), clients on tcp://127.0.0.1:7379)"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - benchmark a fresh local node (puts, serializable and linearizable gets, txn-puts)"
	@echo "make bench-restart - time a restart of a node holding 1,000,000 keys"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/qkv --data-dir $(DATA_DIR) --log-format console

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_node.py

bench-restart: $(STAMP)
	$(BIN)/python tests/bench/bench_restart.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
