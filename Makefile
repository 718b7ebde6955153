# Fresh-machine entry points. Both create .venv, install torch==2.13.0 first (the CPU
# wheel on this machine's disk; any other torch spec pulls a multi-GB CUDA build),
# then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_MODELS := $(abspath ../shared/models)

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0

$(VENV)/.demo-installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e ".[plot]"
	touch $@

$(VENV)/.dev-installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.demo-installed
	DYNAMIX_MODEL_DIR=$${DYNAMIX_MODEL_DIR:-$(SHARED_MODELS)} $(PY) -m dynamix_adapters.demo

test: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
