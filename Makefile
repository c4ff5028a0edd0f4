# Two entry points for a fresh clone: `make demo` and `make test`.
# Both bootstrap everything they need: .venv/ with the package, and the Kafka jars
# (cached outside the repo, in $(MYNAPOINT_CACHE) or ~/.cache/mynapoint).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install kafka-jars promtool chromium demo demo-offline test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/mynapoint kafka fetch

demo: install kafka-jars
	$(BIN)/mynapoint demo

demo-offline: install
	$(BIN)/mynapoint generate --users 20000 --transactions 200000 --out data/
	$(BIN)/mynapoint settle --enrollments data/enrollments.jsonl \
	    --transactions data/transactions.jsonl --out out/

lint: install
	$(BIN)/ruff check engine tests bench examples

typecheck: install
	$(BIN)/mypy engine tests bench examples

unit: install
	$(BIN)/pytest -m "not kafka"

promtool:
	bash scripts/ensure-promtool.sh

chromium:
	bash scripts/ensure-chromium.sh

# Two test processes (pytest-xdist), each with its own session broker: most of the
# suite's time is spent waiting on brokers, workers and timeouts, which overlap
# (docs/DECISIONS.md 136). TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

test: install kafka-jars promtool chromium lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS)

bench: install kafka-jars
	$(BIN)/python bench/bench_settle.py
	$(BIN)/python bench/bench_stream.py
	$(BIN)/python bench/bench_ledger.py

clean:
	-$(BIN)/mynapoint kafka stop
	rm -rf $(VENV) .kafka data out test-artifacts .pytest_cache .mypy_cache .ruff_cache
