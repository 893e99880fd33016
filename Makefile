# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fashion_mnist_hetero.py:quick
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (0: one process); a module's tests stay on one,
# so that its module-scoped fixtures (a complete pipeline, a smoke study) run once.
TEST_WORKERS ?= 2

.PHONY: run test lint data venv clean bazel-test

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
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# Bazel 2.1 from npm, offline (scripts/bazel, docs/BAZEL.md). Builds every target,
# checks that the BUILD files cover every module, runs the CI suite $(BAZEL_TESTS)
# with the .venv interpreter, and stops the server whatever happened.
BAZEL_TESTS ?= //tests:ci

bazel-test: venv
	@start=$$(date +%s); status=0; export HAR_TF_PYTHON="$(abspath $(PY))"; \
	scripts/bazel build //... && \
	$(PY) scripts/check_bazel_srcs.py scripts/bazel && \
	scripts/bazel test $(BAZEL_TESTS) || status=$$?; \
	scripts/bazel shutdown; \
	echo "== bazel-test: $$(( $$(date +%s) - start )) s"; exit $$status

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs/quickstart
