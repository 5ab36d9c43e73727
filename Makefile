# mlpipe: `make run` (the demo, end to end) and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ROWS   ?= 1000000
PYTEST_ARGS ?=
# pytest processes for make test; a module's tests stay together (its fixtures start once)
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install run demo-data test test-fast bench lint format clean

help:  ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed  ## create .venv and install mlpipe with its dev tools

data/demo/_DONE: | $(VENV)/.installed
	$(BIN)/mlpipe demo-data data/demo --rows $(ROWS)
	@touch $@

demo-data: data/demo/_DONE  ## generate the demo dataset (ROWS=1000000) under data/demo

run: install demo-data  ## install, generate the demo data and run examples/demo.yaml on a LocalCluster
	$(BIN)/mlpipe run examples/demo.yaml

test: install  ## install and run the test suite (starts its own clusters and S3 server)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-fast: install  ## the tests not marked slow
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

bench: install  ## run benchmarks/ and print one table (SCALE=0.1 for a quick look)
	$(BIN)/python -m benchmarks --scale $(or $(SCALE),1.0)

lint: install  ## ruff
	$(BIN)/ruff check pipeline kernels cluster tests benchmarks

format: install  ## ruff format
	$(BIN)/ruff format pipeline kernels cluster tests benchmarks

clean:  ## remove the venv, generated data, outputs and caches
	rm -rf $(VENV) data out .pytest_cache .ruff_cache .hypothesis bench-results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
