"""Shared fixtures. The real control plane (tests/support/controlplane.py) and the real cluster of the
e2e tier (tests/support/cluster.py) are pytest plugins."""

import os

import pytest

pytest_plugins = ["tests.support.controlplane", "tests.support.cluster", "tests.support.helm"]

# Tests never reach a model hub: the bundled base model is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _limit_threads():
    """Two cores on CI: keep torch from oversubscribing when several libraries spawn pools."""
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield
