# The two commands a newcomer types (README):  make demo   and   make test
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast clean

# Create .venv and install the project (editable) with its dev extras; redone when pyproject changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $$(command -v $(PY) || command -v python3) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# The main job on embedded defaults: local Ray, MLflow in ./lunartune-runs/mlflow.db, generated data.
demo: $(STAMP)
	$(BIN)/lunartune demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf lunartune-runs .pytest_cache
