# threadbus: `make dev` runs it, `make test` tests it. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test bench clean

# PYTHONWARNINGS: setuptools' note on every editable install ("Editable installation. Please be
# careful ...") says nothing is wrong, and a first install should print nothing that is not a problem.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

dev: install
	$(BIN)/threadbus dev --config examples/langgraph.json

test: install
	$(BIN)/python -m pytest -q

# `make bench REFERENCE=http://127.0.0.1:2024` also measures that server (e.g. `langgraph dev`).
bench: install
	$(BIN)/python bench/floor.py
	$(BIN)/python bench/runs.py $(if $(REFERENCE),--reference $(REFERENCE))
	$(BIN)/python bench/double_texting.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/history.py $(if $(REFERENCE),--reference $(REFERENCE))
	$(BIN)/python bench/store.py $(if $(REFERENCE),--reference $(REFERENCE))

clean:
	rm -rf $(VENV) .threadbus .pytest_cache
