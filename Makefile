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

# dirt's own bytecode, written even where PYTHONDONTWRITEBYTECODE is set (as on this project's
# machines): without it every dirt process (each command, `dirt serve`, the tests' many
# subprocesses) compiles its ~200 modules again, 0.2-0.3 s each time.
BYTECODE := $(BIN)/python -m compileall -q src

demo: $(VENV)/.installed
	@$(BYTECODE)
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
	@$(BYTECODE)
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	@$(BYTECODE)
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/ssh.py
	$(BIN)/python bench/fair.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) dirt-demo artifacts .pytest_cache .ruff_cache
