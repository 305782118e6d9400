"""Variants of examples/quickstart.yaml for the tests that run it in a cluster."""

from __future__ import annotations

import copy

import yaml

from tests.support.paths import REPO


def quickstart_variant(name: str, **spec_changes) -> dict:
    """The quickstart manifest named ``name``, with dotted spec paths set (``{"serving.replicas": 2}``)."""
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = name
    for dotted, value in spec_changes.items():
        node = doc["spec"]
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return doc
