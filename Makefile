# Set-up and the two everyday commands. Everything installs into .venv from the
# project's own files, so a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is pinned so pip takes the CPU build from the machine's local wheel cache.
TORCH  ?= torch==2.13.0

.PHONY: quickstart test lint typecheck bench-cpu clean

$(BIN)/.installed: pyproject.toml requirements-zoo.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	# The zoo tests' model libraries, without their CLI and hub-client dependency trees.
	$(BIN)/python -m pip install -q --no-deps -r requirements-zoo.txt
	touch $@

## Build a small model, push it, list it, load it back (SQLite + local store under MVAULT_HOME).
quickstart: $(BIN)/.installed
	$(BIN)/mvault quickstart

## The test suite. Needs PostgreSQL and MariaDB running (see .ci/run); starts SeaweedFS itself.
test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy --strict src/modelvault

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
