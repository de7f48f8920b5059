# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint unit integration faults bench down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Debian packages the tests use: clickhouse-server (18.16) for the native-protocol tests,
## chromium for the explorer's browser tests, prometheus-alertmanager for notify's tests and
## prometheus (with promtool) for the scrape and rule tests, poppler-utils (pdftotext) to
## read the auditor's report back from its PDF; each group of tests skips
## without its package. Installed only as root; the packages' own services are kept from
## starting (the tests run private servers on free ports).
SYSTEM_PACKAGES := clickhouse-server chromium prometheus-alertmanager prometheus poppler-utils
system-deps:
	@missing=; \
	{ command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; } || missing="$$missing clickhouse-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/prometheus-alertmanager ] || missing="$$missing prometheus-alertmanager"; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/pdftotext ] || missing="$$missing poppler-utils"; \
	if [ -z "$$missing" ]; then \
		echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		created=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; status=$$?; \
		if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status; \
	else \
		echo "not root: skipping$$missing (their tests will be skipped)"; \
	fi

## Start the local stack, simulate 300 custody trees (10% misbehaving), wait until
## ClickHouse holds them, print a summary, one tree, the alerts by type and the
## explorer's URL. The stack keeps running: `make down` (or custody down) stops it.
demo: install
	CUSTODY_KAFKA_PROFILE=development $(BIN)/custody demo

## ruff (its rules in pyproject.toml) and mypy strict over the code and the tests (mypy's
## packages in pyproject.toml: schemas, producers, processors, tests); docs/testing.md.
lint: install
	$(BIN)/ruff check schemas producers processors tests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

## The whole suite: lint, types, unit and integration tests (they start their own broker).
test: install system-deps lint
	$(BIN)/pytest -q --durations=25 tests

## The fault suite at the sizes issue 6 asks for (long: not in CI): results in
## faults-results.json, then printed as the table of docs/faults.md. `make test` runs it small.
faults: install system-deps
	CUSTODY_FAULTS_SCALE=full $(BIN)/pytest -q tests/faults
	$(BIN)/python -m tests.faults.report

bench: install
	$(BIN)/python -m tests.bench

down: install
	$(BIN)/custody down

clean:
	rm -rf $(VENV) .custody .pytest_cache .mypy_cache .ruff_cache
