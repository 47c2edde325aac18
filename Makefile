# The README's two commands: `make demo` and `make test` (both set up .venv first).
# `make test` = lint (ruff, ruff format, mypy over the runtime package) + pytest.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean

install: $(STAMP)

# One pip resolve: the CPU compute stack (`cpu`, never together with `gpu`) and every other
# extra (the pins that keep separate installs consistent are in pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -qq -e '.[cpu,export,serve,dev,distributed]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ragrt demo --workdir demo_out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) demo_out .pytest_cache
