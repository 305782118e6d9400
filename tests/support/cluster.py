"""The real-cluster tier (tests/e2e): a node that runs pods, the product's images, the chart installed.

Fixtures (a pytest plugin, loaded by tests/conftest.py):

``real_cluster`` (session)
    A :class:`RealCluster` for the single-node cluster of tests/cluster/cluster.py: reused when one is
    already up (``python tests/cluster/cluster.py up`` by hand keeps it between runs), else started for
    the session and stopped after it (``EFT_KEEP_CLUSTER=1`` leaves it up).
``e2e_images`` (session)
    The operator, stage (cpu) and server (cpu) images built from images/*.Dockerfile (podman, layer
    cache: a warm rebuild redoes only the eft layers) and present in the node's containerd.
``eft_operator`` (session)
    ``helm install`` of helm/eft-operator (the CRD, the operator as a pod under the chart's ServiceAccount
    and RBAC, the cpu image flavour); waits for its Deployment; ``helm uninstall`` after the session.

Tests using them are marked ``e2e``. A machine that cannot run the cluster (not root, packages missing)
skips them with a banner; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.cluster_diagnosis import diagnose
from tests.support.controlplane import KubeTools, load_build_module, unavailable
from tests.support.modules import load_file_module
from tests.support.paths import REPO  # noqa: E402

CLUSTER_PY = REPO / "tests" / "cluster" / "cluster.py"
IMAGES_PY = REPO / "tests" / "cluster" / "images.py"
OPERATOR_NAMESPACE = "eft-system"
RELEASE = "eft"

_MISSING_KEY = pytest.StashKey[str]()
_DIAGNOSES_KEY = pytest.StashKey[list]()
# a failed session fixture fails every test after it: the first few reports say all there is to say
MAX_DIAGNOSES = 3


def cluster_module():
    return load_file_module("eft_test_cluster", CLUSTER_PY)


def images_module():
    return load_file_module("eft_test_cluster_images", IMAGES_PY)


class RealCluster(KubeTools):
    """kubectl / helm / API clients for the running cluster (state from tests/cluster/cluster.py)."""

    kubectl_timeout = 180
    helm_timeout = 300

    def __init__(self, state: dict):
        self.kubeconfig = state["kubeconfig"]
        self.server = state["server"]
        self.node = state["node"]
        self.tool_dir = load_build_module().bin_dir()
        self.workdir = Path(self.kubeconfig).parent
        self.log_dir = Path(state["logs"]) if state.get("logs") else None

    def diagnose(self) -> str:
        """The nodes, unhealthy pods, warning events, the host's disk and memory and the node's recent errors."""
        cl = cluster_module()
        return diagnose(self.kubectl, self.log_dir, ["/", str(cl.RUN_DIR), str(cl.CACHE_DIR)])

    def get(self, *args) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_for_object(self, kind: str, name: str, namespace: str, timeout: float = 60) -> None:
        """`kubectl wait` refuses an object that does not exist yet: wait for it to appear first."""
        deadline = time.monotonic() + timeout
        while self.kubectl("get", kind, name, "-n", namespace, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind}/{name} did not appear in {namespace} within {timeout:.0f}s")
            time.sleep(0.5)

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def pvc_path(self, namespace: str, claim: str) -> Path:
        """The host folder of a host-path provisioned claim (tests read the workspace from the host)."""
        pvc = self.get("pvc", claim, "-n", namespace)
        pv = self.get("pv", pvc["spec"]["volumeName"])
        return Path(pv["spec"]["hostPath"]["path"])


def _unavailable(config, reason: str):
    unavailable(config, _MISSING_KEY, "real cluster", "e2e", reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: needs the real single-node cluster and the images (tests/cluster)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """An e2e failure (in setup or in the test) carries the cluster's state at that moment."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "real_cluster" not in getattr(item, "fixturenames", ()):
        return
    done = item.config.stash.setdefault(_DIAGNOSES_KEY, [])
    state = cluster_module().running_state()
    if len(done) >= MAX_DIAGNOSES or state is None:
        return
    text = RealCluster(state).diagnose()
    done.append((item.nodeid, text))
    report.sections.append(("real cluster at this failure", text))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    diagnoses = config.stash.get(_DIAGNOSES_KEY, [])
    if diagnoses:
        # repeated here, at the end, because CI shows the tail of the output
        nodeid, text = diagnoses[0]
        terminalreporter.write_sep("!", f"the real cluster when {nodeid} failed", red=True)
        terminalreporter.write_line(text)
    missing = config.stash.get(_MISSING_KEY, None)
    if missing:
        terminalreporter.write_sep("!", "real cluster unavailable: e2e tests were skipped", red=True)
        terminalreporter.write_line(missing, red=True)


def _run_cluster_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLUSTER_PY), *args], capture_output=True, text=True, timeout=600)


def clean_host_snapshot(cl, run_cluster_py) -> dict[str, list[str]]:
    """The host as `up` should find it, for the teardown check.

    A cluster that an earlier run left without `down` (its run folder still there, its supervisor killed: a
    run cut off, a machine reused) is torn down first, as `up` does when it finds the state file. Otherwise the baseline would hold
    that cluster's mounts, links and sysctls, and the check would call their removal a change to the host."""
    if cl.read_state() is not None or cl.RUN_DIR.exists():
        proc = run_cluster_py("down")
        if proc.returncode != 0:
            pytest.fail(f"could not clean up the cluster an earlier run left:\n{proc.stderr[-4000:]}", pytrace=False)
        print("tests/support/cluster.py: cleaned up the cluster an earlier run left (its run folder, no "
              "running supervisor) before recording the host's state", file=sys.stderr)
    return cl.host_snapshot()


@pytest.fixture(scope="session")
def real_cluster(request, control_plane_binaries):
    cl = cluster_module()
    problems = cl.missing_host_requirements()
    if problems:
        _unavailable(request.config, "missing " + ", ".join(problems) + " (`make cluster-host` installs them)")
    state = cl.running_state()
    started = False
    before = None
    if state is None:
        before = clean_host_snapshot(cl, _run_cluster_py)
        proc = _run_cluster_py("up")
        if proc.returncode != 0:
            pytest.fail(f"could not start the real cluster:\n{proc.stderr[-4000:]}", pytrace=False)
        state = json.loads(proc.stdout.strip().splitlines()[-1])
        started = True
    yield RealCluster(state)
    if started and os.environ.get("EFT_KEEP_CLUSTER") != "1":
        _run_cluster_py("down")
        # `down` must leave the host as `up` found it (an error of the last test using the cluster otherwise)
        left = cl.snapshot_difference(before, cl.host_snapshot())
        assert not left, f"the real cluster's teardown changed the host: {json.dumps(left, indent=1)[:3000]}"


@pytest.fixture(scope="session")
def e2e_images(real_cluster) -> dict[str, str]:
    """image name -> tag, built from the current sources and loaded into the node."""
    im = images_module()
    proc = subprocess.run([sys.executable, str(IMAGES_PY), "build"], stdout=subprocess.PIPE, text=True,
                          timeout=3600)
    assert proc.returncode == 0, "building the images failed (output above)"
    build = json.loads(proc.stdout.strip().splitlines()[-1])
    load = subprocess.run([sys.executable, str(IMAGES_PY), "load"], stdout=subprocess.PIPE, text=True, timeout=3600)
    assert load.returncode == 0, "loading the images into the node failed"
    tags = {b["image"]: b["tag"] for b in build["images"]}
    assert set(tags) == {i for i, _ in im.BUILDS}
    return tags


@pytest.fixture(scope="session")
def eft_operator(real_cluster, e2e_images):
    """The chart installed as a user would, with the cpu image flavour; yields the release's namespace."""
    rc = real_cluster
    operator_image = e2e_images["operator"]
    repo, tag = operator_image.rsplit(":", 1)
    # a rebuilt image keeps its tag: the image ID as a pod annotation rolls a release left from an earlier run
    image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", operator_image],
                              capture_output=True, text=True).stdout.strip()[:16]
    rc.helm("upgrade", "--install", RELEASE, str(REPO / "helm" / "eft-operator"), "--namespace", OPERATOR_NAMESPACE,
            "--create-namespace", "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
            "--set", "defaults.imageFlavour=cpu", "--set", "operator.resyncSeconds=10",
            "--set-string", f"podAnnotations.eft-test/image-id={image_id}",
            "--wait", "--timeout", "180s", timeout=240)
    yield OPERATOR_NAMESPACE
    if os.environ.get("EFT_KEEP_CLUSTER") != "1":
        rc.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout", "120s")
        # Helm never deletes a chart's crds/: uninstalling the operator leaves every user's resources in place
        assert rc.kubectl("get", "crd", "embeddingfinetunes.eft.ai", check=False).returncode == 0
        assert rc.get("deployments", "-n", OPERATOR_NAMESPACE)["items"] == []


@contextlib.contextmanager
def namespace(rc: RealCluster):
    """A fresh namespace (its default ServiceAccount made), deleted afterwards unless EFT_KEEP_CLUSTER=1."""
    name = "e2e-" + uuid.uuid4().hex[:8]
    rc.kubectl("create", "namespace", name)
    rc.wait_for_object("serviceaccount", "default", name, timeout=30)
    try:
        yield name
    finally:
        if os.environ.get("EFT_KEEP_CLUSTER") != "1":
            rc.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def e2e_namespace(real_cluster):
    with namespace(real_cluster) as name:
        yield name
