# Every target is self-contained: a fresh machine needs only `make demo` / `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup test demo demo-degraded lint format e2e bench clean

help: ## Show the targets
	@grep -E '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install everything (idempotent)

test: setup ## Lint and run the test suite on the CPU
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not e2e" -p no:cacheprovider

demo: setup ## Local stack: tiny model, server, Prometheus, Locust, canary-analysis verdict
	$(VENV)/bin/r1ops demo

demo-degraded: setup ## The same, with a misconfigured canary the gate must fail
	$(VENV)/bin/r1ops demo --degraded-canary

e2e: setup ## End-to-end tier on a real API server with the real Argo Rollouts controller
	$(PY) -m r1ops.e2e.build
	$(PY) -m pytest -m e2e -p no:cacheprovider tests/e2e

bench: setup ## GPU benchmark suite (needs a CUDA GPU; bench/README.md)
	$(PY) -m bench --out .out/bench

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
