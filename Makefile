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

.PHONY: demo test docs lint
# The official weights, where ../shared has them; the main job itself needs only the bundled ones.
export DYNAMIX_MODEL_DIR ?= $(SHARED_MODELS)
export NO_MKDOCS_2_WARNING := 1

demo: $(VENV)/.demo-installed
	$(PY) -m dynamix_adapters.demo

test: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest
	$(PY) -m pytest --nbmake notebooks -p no:cacheprovider
	$(PY) -m mkdocs build --strict --quiet -f scripts/mkdocs.yml

docs: $(VENV)/.dev-installed
	$(PY) -m mkdocs build --strict -f scripts/mkdocs.yml

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
