# dicomflow — the two commands a newcomer needs are `make up` and `make test`.
# Each installs what it needs (Debian packages, a virtualenv from PyPI) by itself.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bytecode viewer up test test-unit test-integration test-e2e lint typecheck schemas bench deps postgres clean help monitoring loadtest

help:
	@echo "make up     run the whole stack on embedded defaults (API on http://127.0.0.1:8000)"
	@echo "make test   lint, type-check and run every test layer"
	@echo "make bench  end-to-end throughput against reference tools on the same files"
	@echo "make loadtest  Locust against a local stack; summary in load_test/results/"

$(STAMP): pyproject.toml clients/core/pyproject.toml clients/desktop/pyproject.toml
	bash deploy/dev/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[test]' -e clients/core -e clients/desktop
	touch $(STAMP)

# The OHIF Viewer served at /viewer: @ohif/app's prebuilt files into var/ohif (ADR 0018);
# a no-op once installed.
viewer: $(STAMP)
	bash deploy/dev/ohif.sh

# Every service, parser worker and CLI is a new Python process. Where PYTHONDONTWRITEBYTECODE
# is set (as on our CI machines) none of them caches what it compiles, so each compiled its
# imports from source: ~1.5 s of CPU per process. Compiling once here (a no-op when current)
# halves the start of every process; a stale .pyc is ignored by Python, never wrong.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 libs services clients/core clients/desktop load_test

deps: $(STAMP) viewer bytecode

postgres:
	bash deploy/dev/ensure-postgres.sh

up: deps postgres
	$(BIN)/dicomflow up

lint: deps
	$(BIN)/ruff check libs services tests load_test clients
	$(BIN)/ruff format --check libs services tests load_test clients

typecheck: deps
	$(BIN)/mypy libs services
	$(BIN)/mypy -p dicomflow_client -p dicomflow_desktop

# pytest-xdist workers, whole modules each (module-scoped stacks and peers start once): most
# of a test's time is waiting on processes, so three workers overlap it on two cores (on a
# slower 2-core VM the clean-clone suite took 21:33 with two, 18:33 with three). Modules
# go in collection order, the long e2e ones first (xdist would otherwise start with the
# modules of most tests and leave a long e2e module for the end).
TEST_WORKERS ?= 3
test: deps postgres lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-unit: deps
	$(BIN)/pytest -q tests/unit

test-integration: deps postgres
	$(BIN)/pytest -q tests/integration

test-e2e: deps postgres
	$(BIN)/pytest -q tests/e2e

schemas: deps
	$(BIN)/python -m libs.tools.schemas_gen

monitoring: deps
	$(BIN)/python -m libs.tools.monitoring.generate

LOADTEST_SECONDS ?= 60
LOADTEST_USERS ?= 20
# Locust is not a test dependency: the `loadtest` extra is installed on demand.
loadtest: deps postgres
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[loadtest]'
	$(BIN)/python -m load_test.run --seconds $(LOADTEST_SECONDS) --users $(LOADTEST_USERS)

bench: deps postgres
	$(BIN)/python -m load_test.bench.ingest
	$(BIN)/python -m load_test.bench.pipeline
	$(BIN)/python -m load_test.bench.previews
	$(BIN)/python -m load_test.bench.archive
	$(BIN)/python -m load_test.bench.client_download
	$(BIN)/python -m load_test.bench.sources
	$(BIN)/python -m load_test.bench.orthanc_import
	$(BIN)/python -m load_test.bench.dcm4chee
	$(BIN)/python -m load_test.bench.routing
	$(BIN)/python -m load_test.bench.receiver
	$(BIN)/python -m load_test.bench.search
	$(BIN)/python -m load_test.bench.dicomweb

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
