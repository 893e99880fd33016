# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fashion_mnist_hetero.py:quick
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: run test lint data venv clean bazel bazel-test

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

# Bazel 2.1 from npm (binary and JDK, 42 MB), offline: docs/BAZEL.md. All it writes
# (npm package, install and output bases, convenience links) stays in .bazel/.
BAZEL_VERSION := 2.1.0
BAZEL_DIR := .bazel
BAZEL_BIN := $(BAZEL_DIR)/npm/node_modules/@bazel/bazel-linux_x64/bazel-$(BAZEL_VERSION)-linux-x86_64
BAZEL := $(CURDIR)/$(BAZEL_BIN) --output_user_root=$(CURDIR)/$(BAZEL_DIR)/root \
	--output_base=$(CURDIR)/$(BAZEL_DIR)/base
BAZEL_TESTS ?= //tests:ci

$(BAZEL_BIN):
	npm install --prefix $(BAZEL_DIR)/npm --no-audit --no-fund @bazel/bazel-linux_x64@$(BAZEL_VERSION)
	@test -x $@

bazel: $(BAZEL_BIN)

# Builds every target, checks that the BUILD files cover every module, runs the CI
# test suite ($(BAZEL_TESTS)) with the .venv interpreter, and stops the server. The
# venv's bin/ comes first on PATH: Bazel 2.1's Python stub starts with `env python`.
bazel-test: venv $(BAZEL_BIN)
	@start=$$(date +%s); export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"; status=0; \
	$(BAZEL) build //... && \
	$(PY) scripts/check_bazel_srcs.py $(BAZEL) && \
	$(BAZEL) test $(BAZEL_TESTS) || status=$$?; \
	$(BAZEL) shutdown; \
	echo "== bazel-test: $$(( $$(date +%s) - start )) s (excluding install)"; exit $$status

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs/quickstart
