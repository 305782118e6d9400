# The two contract commands (see README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eft-installed

.PHONY: setup quickstart test test-all controlplane clean

# torch is large (the CUDA build from PyPI): installed once per virtual environment; the stamp
# re-runs pip only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(VENV)/bin/eft run examples/quickstart.yaml

controlplane: setup
	$(PY) tests/controlplane/build.py

test: setup controlplane
	$(PY) -m pytest

test-all: setup controlplane
	$(PY) -m pytest -m "slow or not slow"

clean:
	rm -rf eft-workspace .pytest_cache
