# The two commands: `make demo` runs the main job, `make test` runs the whole suite.
# Each sets up its own virtual environment (.venv) from pyproject.toml first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m controlplane.demo

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check controlplane tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Benchmarks need the `bench` extra (matplotlib) on top of the dev tools.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-full: $(BENCH_STAMP)
	$(BIN)/python -m bench --full

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
