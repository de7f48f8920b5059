# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit integration bench down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the local stack, publish the sample custody tree, show what is running.
demo: install
	CUSTODY_KAFKA_PROFILE=development $(BIN)/custody up
	CUSTODY_KAFKA_PROFILE=development $(BIN)/custody publish examples/sample-tree.jsonl
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
test: install lint
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python -m tests.bench

down: install
	$(BIN)/custody down

clean:
	rm -rf $(VENV) .custody .pytest_cache .mypy_cache .ruff_cache
