# The two commands: `make demo` runs the main job, `make test` runs the whole suite.
# Each sets up its own virtual environment (.venv) from the lock file first: the exact
# versions and hashes of every dependency (`make lock` refreshes it from pyproject.toml).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements-dev.txt
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-full lock image wheelhouse clean

# The project itself is installed without build isolation, from the locked setuptools,
# so nothing unpinned is fetched.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
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

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-full: $(BENCH_STAMP)
	$(BIN)/python -m bench --full

# The lock files: runtime (the image), dev (make test, make demo), bench. Resolved for
# every platform (--universal) so the image's Python finds its wheels too.
COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes

lock: $(STAMP)
	$(COMPILE) -o requirements.txt
	$(COMPILE) --extra dev -o requirements-dev.txt
	$(COMPILE) --extra dev --extra bench -o requirements-bench.txt

# An image built without network: every wheel the image needs, and the project's own,
# downloaded here first (on this machine's Python, which must match the image's 3.11).
wheelhouse: $(STAMP)
	rm -rf wheelhouse/*.whl
	$(BIN)/pip download --quiet --disable-pip-version-check --require-hashes --only-binary=:all: \
		-r requirements.txt -d wheelhouse
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		-w wheelhouse .

IMAGE ?= controlplane:0.1.0

image: wheelhouse
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache wheelhouse/*.whl
