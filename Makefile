# Set-up and the two everyday commands. Everything installs into .venv from the
# project's own files, so a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is pinned so pip takes the CPU build from the machine's local wheel cache.
TORCH  ?= torch==2.13.0

.PHONY: quickstart test lint typecheck bench-cpu bench-setup clean

$(BIN)/.installed: pyproject.toml requirements-zoo.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	# The zoo tests' model libraries, without their CLI and hub-client dependency trees.
	$(BIN)/python -m pip install -q --no-deps -r requirements-zoo.txt
	touch $@

## Build a small model, push it, list it, load it back (SQLite + local store under
## QUICKSTART_HOME, inside the checkout, so your own ~/.modelvault is left alone).
## Running it again is a no-op push of the same version.
QUICKSTART_HOME ?= $(CURDIR)/.mvault-quickstart
quickstart: $(BIN)/.installed
	MVAULT_HOME='$(QUICKSTART_HOME)' $(BIN)/mvault quickstart

## The test suite. Needs PostgreSQL and MariaDB running (see .ci/run); starts SeaweedFS itself.
test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy --strict src/modelvault

## MLflow for the benchmarks' peer side, in its own venv: its dependencies from PyPI,
## torch and numpy reused from $(VENV) through a .pth file (appended last, so
## MLflow's own packages win), so torch is not downloaded twice.
MLFLOW_VENV ?= benchmarks/.mlflow-venv
MLFLOW_PKGS ?= mlflow-skinny==3.17.2 sqlalchemy alembic psycopg2-binary pandas scipy
bench-setup: $(BIN)/.installed
	$(BIN)/python -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q $(MLFLOW_PKGS)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	    > "$$($(MLFLOW_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-modelvault-venv.pth"
	$(MLFLOW_VENV)/bin/python -c 'import mlflow.pytorch, torch; print("mlflow", mlflow.__version__, "torch", torch.__version__)'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
