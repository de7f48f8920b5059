# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint unit integration bench down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Debian's clickhouse-server (18.16) for the native-protocol tests; they skip without it.
## Installed only as root; the package's own service is kept from starting (the tests run
## private servers on free ports).
system-deps:
	@if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; then \
		echo "clickhouse-server present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		created=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends clickhouse-server >/dev/null; status=$$?; \
		if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status; \
	else \
		echo "not root: skipping clickhouse-server (its tests will be skipped)"; \
	fi

## Start the local stack, publish the sample custody tree, show it as stored in ClickHouse.
demo: install
	CUSTODY_KAFKA_PROFILE=development $(BIN)/custody up
	CUSTODY_KAFKA_PROFILE=development $(BIN)/custody publish examples/sample-tree.jsonl
	@# Stored within a second or two; the correlator's state follows.
	@for i in $$(seq 60); do \
		[ "$$($(BIN)/custody query "SELECT count() AS n FROM tasks WHERE root_task_id = 'task-6513270e'" --json 2>/dev/null)" = '{"n": 3}' ] && break; \
		sleep 0.5; \
	done
	$(BIN)/custody trace task-6513270e
	$(BIN)/custody status
	@echo "Stop the stack with: $(BIN)/custody down"

lint: install
	$(BIN)/ruff check schemas producers processors tests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

## The whole suite: lint, types, unit and integration tests (they start their own broker).
test: install system-deps lint
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python -m tests.bench

down: install
	$(BIN)/custody down

clean:
	rm -rf $(VENV) .custody .pytest_cache .mypy_cache .ruff_cache
