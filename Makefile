# unlearn: `make run` and `make test` work on a fresh machine (they create .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Offline, telemetry-free runs (see docs/architecture.md).
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.DEFAULT_GOAL := help

.PHONY: help install run test test-unit lint benchmark clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[ops,dev]' -c constraints.txt
	@touch $@

install: $(INSTALLED) ## create .venv and install the project with its pinned dependencies

run: $(INSTALLED) ## the paper's study (`dvc repro`, its tables), then one deletion batch end to end
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/unlearn report
	$(BIN)/unlearn --no-verbose demo

test: $(INSTALLED) ## run the whole test suite (unit, behaviour, pipeline tiers), on two workers
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-unit: $(INSTALLED) ## the unit tier alone (tests/unit: code, data and config checks; no servers)
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/unit

lint: $(INSTALLED) ## ruff check and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

benchmark: $(INSTALLED) ## trainer throughput, every method's cost as a ratio to Retrain's, a deletion batch's time
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/unlearn_cost.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/deletion_batch.py

clean: ## remove generated outputs (keeps .venv and the DVC cache)
	rm -rf data models metrics reports mlflow.db mlartifacts .pytest_cache
