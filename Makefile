# streamdrift — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# pytest arguments for the whole suite (every tier but `slow`)
PYTEST_ARGS ?= -m "not slow"

.DEFAULT_GOAL := help
.PHONY: help venv system-deps demo test test-fast test-slow lint format typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,demo,spark,report,mlflow,avro]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv with streamdrift and every extra installed

system-deps: ## install Prometheus, Alertmanager, Java 17, openssl, socat (TLS tests), chromium (report test) from Debian (root)
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v java >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v socat >/dev/null || ! command -v chromium >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager openjdk-17-jre-headless openssl socat chromium; \
	fi

demo: $(STAMP) ## run `streamdrift demo` on the embedded broker
	$(VENV)/bin/streamdrift demo

test: system-deps $(STAMP) ## install everything the tests need, then run the whole suite
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP) ## unit tests and doctests only
	$(PY) -m pytest -m "unit or not (integration or spark or e2e or reliability or slow)"

test-slow: system-deps $(STAMP) ## the slow tier (long fault battery)
	$(PY) -m pytest -m slow

lint: $(STAMP) ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff format and fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(STAMP) ## mypy (strict on detectors/ and stream/)
	$(PY) -m mypy

bench: system-deps $(STAMP) ## the benchmarks (prints tables; installs Evidently, NannyML and py-spy)
	$(PIP) install -q -e '.[bench]'
	$(PY) tests/benchmarks/run.py

clean: ## remove caches and build output
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
