# Two commands matter (see README, Quick start):
#   make run   - install, start Kafka + PostgreSQL + both services, play the demo feed
#   make test  - install and run the whole test suite against the real broker and database
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test lint install clean check-asyncapi deploy-check promtool

$(BIN)/.installed: pyproject.toml constraints.txt clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]" -e clients/python
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m devinfra.demo

demo: install
	$(BIN)/python -m devinfra.demo --once

test: install
	$(BIN)/python -m pytest

lint: install check-asyncapi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The AsyncAPI parser (npm, versions and hashes pinned by tools/asyncapi-check's lock
# file) must find no error in the served document.
ASYNCAPI_CHECK := tools/asyncapi-check

$(ASYNCAPI_CHECK)/node_modules/.installed: $(ASYNCAPI_CHECK)/package-lock.json
	cd $(ASYNCAPI_CHECK) && npm ci --ignore-scripts --loglevel=error
	touch $@

check-asyncapi: $(ASYNCAPI_CHECK)/node_modules/.installed
	node $(ASYNCAPI_CHECK)/check.mjs services/common/asyncapi.yaml

# deploy/: manifests against the Kubernetes schemas (offline), dashboard and alerts
# against the metrics served, alert rules through promtool (tests/unit/test_deploy.py).
deploy-check: install promtool
	$(BIN)/python -m pytest -q tests/unit/test_deploy.py

# promtool comes with Debian's `prometheus` package (its server is not started); only
# root installs it, anyone else is told how.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (Debian package prometheus)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus) >/dev/null; \
	  else \
	    echo "promtool missing: sudo apt-get install prometheus (its tests are skipped)"; \
	  fi; }

clean:
	rm -rf $(VENV) .run .tools
