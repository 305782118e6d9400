# The two contract commands (see README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eft-installed

.PHONY: setup quickstart test test-all controlplane clean bench-infinity

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

# bench/serve.py's Infinity contender. infinity-emb pins sentence-transformers 3 and numpy 1, which cannot
# share eft's environment, so it gets its own. datasets/pyarrow (pulled in by optimum, unused by the
# server) need numpy 2 and would break optimum's import: removed.
INFINITY_VENV ?= .venv-infinity
$(INFINITY_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet "infinity-emb[server,torch,optimum]==0.0.78" "optimum==2.1.0" "optimum-onnx==0.1.0"
	$(INFINITY_VENV)/bin/pip uninstall --yes --quiet datasets pyarrow
	touch $@

bench-infinity: $(INFINITY_VENV)/.installed

clean:
	rm -rf eft-workspace .pytest_cache
