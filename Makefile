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

# Every piece runs even when one misses a target; each says what it skips and why. Each
# writes its figures and raw samples to bench/out/NAME.json; bench/plot.py draws them into
# bench/out/latency.png. `make bench QUICK=1` is the smoke: a few samples each, figures
# printed but targets not enforced. The sources are byte-compiled first, as pip does for
# an installed package: a checkout run with PYTHONDONTWRITEBYTECODE would otherwise compile
# every module on every CLI start and time that instead.
BENCH_OUT := bench/out
QUICK ?=
BENCH_QUICK := $(if $(QUICK),--quick,)
COMPOSE_ROUNDS := $(if $(QUICK),--rounds 1,)
bench: ## the benchmarks (ext.local CLI, API create + burst, pools, API on wrk, fleet, ext.local pause, ext.local and compose fork, compose) and their plot
	@mkdir -p $(BENCH_OUT); rm -f $(BENCH_OUT)/*.json; status=0; \
	$(PYTHON) -m compileall -q src >/dev/null || status=1; \
	$(PYTHON) bench/run.py $(BENCH_QUICK) --json $(BENCH_OUT)/run.json || status=1; \
	$(PYTHON) bench/create_api.py $(BENCH_QUICK) --json $(BENCH_OUT)/create_api.json || status=1; \
	$(PYTHON) bench/pools.py $(BENCH_QUICK) --compose --json $(BENCH_OUT)/pools.json || status=1; \
	$(PYTHON) bench/api.py $(BENCH_QUICK) --json $(BENCH_OUT)/api.json || status=1; \
	$(PYTHON) bench/fleet.py $(BENCH_QUICK) --json $(BENCH_OUT)/fleet.json || status=1; \
	if [ "$$(id -u)" = 0 ]; then \
		$(PYTHON) bench/pause_local.py $(BENCH_QUICK) --json $(BENCH_OUT)/pause_local.json || status=1; \
		$(PYTHON) bench/fork.py $(BENCH_QUICK) --json $(BENCH_OUT)/fork.json || status=1; \
	else \
		echo "bench/pause_local.py: skipped: the freezer cgroup needs root"; \
		echo "bench/fork.py: skipped: ext.local snapshots need workspace images, a compose fork dockerd (root)"; \
	fi; \
	if ! command -v docker >/dev/null; then \
		echo "bench/compose.py: skipped: no docker CLI (apt-get install docker.io)"; \
	elif ! docker compose version >/dev/null 2>&1; then \
		echo "bench/compose.py: skipped: no docker compose v2 (scripts/deps.sh install_compose_plugin)"; \
	elif ! { [ -n "$$DOCKER_HOST" ] && docker version >/dev/null 2>&1; } \
			&& ! { command -v dockerd >/dev/null && [ "$$(id -u)" = 0 ]; }; then \
		echo "bench/compose.py: skipped: no engine answers at DOCKER_HOST and dockerd cannot be started (needs root)"; \
	else \
		$(PYTHON) bench/compose.py $(COMPOSE_ROUNDS) --json $(BENCH_OUT)/compose.json || status=1; \
	fi; \
	$(PYTHON) bench/plot.py $(BENCH_OUT)/*.json || status=1; \
	exit $$status

bench-all: bench ## also ext.vm-packer (needs qemu)
	$(PYTHON) bench/vm.py
