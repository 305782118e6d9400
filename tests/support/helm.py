"""The chart's helm binary (from the control-plane build cache) and rendering helpers, shared by the
chart's unit tests (helm template / lint) and its API-server tests (helm install).

Without helm these tests skip, and fail when CI=true, like the other control-plane tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.controlplane import load_build_module
from tests.support.paths import REPO

CHART = REPO / "helm" / "eft-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [None, *CI_VALUES]
CASE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def _unavailable(reason: str):
    reason = f"helm/kubectl unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the chart tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def helm_bin() -> str:
    build = load_build_module()
    try:
        found = build.ensure_binaries(build=os.environ.get("EFT_BUILD_CONTROLPLANE") == "1")
    except build.BuildError as e:
        _unavailable(str(e))
    path = (found or {}).get("helm") or str(build.bin_dir() / "helm")
    if not os.access(path, os.X_OK):
        _unavailable(f"no helm in {build.bin_dir()}; run `python tests/controlplane/build.py` (needs Go)")
    return path


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(home / "no-kubeconfig"))
    return env


@pytest.fixture(scope="session")
def helm(helm_bin, helm_env):
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([helm_bin, *args], env=helm_env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def values_args(values: Path | None, extra: list[str] | None = None) -> list[str]:
    return ([] if values is None else ["-f", str(values)]) + (extra or [])


def render(helm, values: Path | None = None, extra: list[str] | None = None, release: str = "eft",
           namespace: str = "eft-system", crds: bool = False) -> list[dict]:
    args = ["template", release, str(CHART), "--namespace", namespace, *values_args(values, extra)]
    if crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def deployment(docs: list[dict]) -> dict:
    (dep,) = by_kind(docs, "Deployment")
    return dep
