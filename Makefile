# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format bench system-deps clean

# Runtime install: enough for `dirt demo`.
$(VENV)/.installed: pyproject.toml
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	@touch $@

# Test install: dirt plus the test extras (pytest, playwright, schemathesis, ...).
$(VENV)/.installed-test: pyproject.toml
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/dirt demo

# Real components the tests start: sshd, PostgreSQL, Chromium, curl, iproute2, pouchdb-server
# (as root).
system-deps:
	@scripts/install-system-deps.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: $(VENV)/.installed-test system-deps lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/ssh.py
	$(BIN)/python bench/fair.py
	$(BIN)/python bench/agent.py

clean:
	rm -rf $(VENV) dirt-demo artifacts .pytest_cache .ruff_cache
