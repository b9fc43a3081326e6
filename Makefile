# Two commands for a fresh machine: `make search` (the main job on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup search test lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 first: the CPU wheel that lies on this machine's disk (a bare range would pull a CUDA build)
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[dev,demo,export]'
	touch $@

setup: $(BIN)/.installed

search: setup
	$(BIN)/python -m search.run --trials 100

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder  # two processes of one thread each, a test file per process, the slowest files first (tests/conftest.py)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data/synthetic
