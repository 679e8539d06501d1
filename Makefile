# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint ui serve clean-home

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mlplatform demo

test: install
	bash scripts/test-setup.sh
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check mlplatform mlplatform_tests bench
	$(BIN)/ruff format --check mlplatform mlplatform_tests bench

ui: install
	$(BIN)/mlplatform ui

serve: install
	$(BIN)/mlplatform serve
