# The two contract commands (see README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eft-installed

.PHONY: setup quickstart test test-all controlplane cluster-host cluster-up cluster-down images e2e clean bench-infinity

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

# The real cluster of the e2e tier (tests/cluster/README.md): Debian's containerd, runc, CNI plugins and the
# image builders, installed when running as root on Debian/Ubuntu; elsewhere the e2e tests skip (CI fails).
cluster-host: setup
	@if [ "$$(id -u)" = 0 ]; then $(PY) tests/cluster/cluster.py install-host; \
	else echo "cluster-host: not root, the e2e tier will be skipped (tests/cluster/README.md)"; fi

cluster-up: controlplane cluster-host
	$(PY) tests/cluster/cluster.py up

cluster-down:
	$(PY) tests/cluster/cluster.py down

# The operator, stage (cpu) and server (cpu) images from images/*.Dockerfile, on a Debian base built here.
images: cluster-host
	$(PY) tests/cluster/images.py build

# Real Kueue for the e2e tier (tests/cluster/README.md, "Kueue"): sigs.k8s.io/kueue built with Go from the module
# proxy into ~/.cache/eft/kueue/<version>/ (once; the Go toolchain is the one `make controlplane` uses).
.PHONY: kueue
kueue: setup
	$(PY) tests/cluster/kueue.py build

e2e: controlplane cluster-host kueue
	$(PY) -m pytest tests/e2e -m e2e

# PYTEST_ARGS: extra pytest options (.ci/run asks for the slowest tests' durations).
test: setup controlplane cluster-host kueue
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup controlplane cluster-host kueue
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
