# sand-boxer developer targets. `make check` is what README.md and .ci/run use.
PYTHON ?= python3
PYTEST_ARGS ?=
# Only the suites that exist: git keeps no empty directories, and pytest fails on a missing path.
TEST_DIRS := $(wildcard tests/unit tests/integration tests/e2e)

.DEFAULT_GOAL := help
.PHONY: help setup check lint types test bench bench-all

help: ## list the targets
	@echo "sand-boxer make targets (PYTHON=$(PYTHON)):"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-8s %s\n", $$1, $$2}'

setup: ## install dependencies and run the main job once (scripts/setup.sh)
	bash scripts/setup.sh

check: lint types test ## lint + types + tests (unit, integration, e2e)

lint: ## ruff over src, tests and bench; import-linter's layer contracts (pyproject.toml)
	$(PYTHON) -m ruff check src tests bench
	cd src && lint-imports --no-cache ../pyproject.toml

types: ## mypy --strict over src (configured in pyproject.toml)
	$(PYTHON) -m mypy

# pytest exits 5 when it collects nothing; make treats that as a failure like any other.
test: ## pytest over tests/unit, tests/integration and tests/e2e
	$(PYTHON) -m pytest $(TEST_DIRS) $(PYTEST_ARGS)

# Every piece runs even when one misses a target; each says what it skips and why.
bench: ## the benchmarks: ext.local and CLI (run.py), the API on wrk (api.py), 200 creates via 4 replicas (fleet.py)
	@status=0; \
	$(PYTHON) bench/run.py || status=1; \
	$(PYTHON) bench/api.py || status=1; \
	$(PYTHON) bench/fleet.py || status=1; \
	exit $$status

bench-all: bench ## also ext.compose-ssh and ext.vm-packer (needs docker, qemu)
	$(PYTHON) bench/compose.py
	$(PYTHON) bench/vm.py
