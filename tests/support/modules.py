"""Scripts that live outside any package (tests/controlplane/build.py, tests/cluster/*.py, images/*.py),
imported by path once per process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_file_module(name: str, path: Path):
    """The module at ``path`` under ``name`` (cached in sys.modules, so every caller shares one copy)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
