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

.PHONY: demo test check hunt docs lint
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
	$(PY) -m mkdocs build --strict --quiet

# Under a minute: lint, then the quick unit tests (no notebooks, docs or slow suites).
check: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_options.py tests/test_model.py tests/test_metrics.py tests/test_forecast.py

# A long randomized search of the property tests (CI runs them derandomized).
hunt: $(VENV)/.dev-installed
	DYNAMIX_HYPOTHESIS_PROFILE=hunt DYNAMIX_PROPERTY_EXAMPLES=1500 $(PY) -m pytest -p no:cacheprovider tests/test_properties.py

docs: $(VENV)/.dev-installed
	$(PY) -m mkdocs build --strict

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
