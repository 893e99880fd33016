# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fashion_mnist_hetero.py:quick
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: run test lint data venv clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || { echo "== creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "== installing requirements into $(VENV)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

data:
	@bash scripts/ensure_data.sh

run: venv data
	@start=$$(date +%s); \
	$(PY) -m pipeline.run --config=$(CONFIG) --workdir=$(WORKDIR) && \
	echo "== wall time: $$(( $$(date +%s) - start )) s (excluding install)"

test: venv data
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs/quickstart
