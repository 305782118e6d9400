"""The chart against a real API server: every rendered manifest passes a server-side dry-run apply, and a
real `helm install / upgrade / uninstall` gives the ServiceAccount exactly the operator's permissions."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.support.helm import CASE_IDS, CASES, CHART, by_kind, render

# --------------------------------------------------------------------------- against the API server


def _kubectl(cp, *args, input: str | None = None, check: bool = True):
    return cp.kubectl(*args, input=input, check=check)


def _ensure_namespaces(cp, names: list[str]) -> list[str]:
    created = []
    for ns in names:
        if _kubectl(cp, "get", "namespace", ns, check=False).returncode != 0:
            _kubectl(cp, "create", "namespace", ns)
            created.append(ns)
    return created


@pytest.mark.kube
@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_rendered_manifests_are_accepted_by_the_api_server(helm, control_plane, kube_namespace, values):
    """Server-side dry-run apply of everything the chart renders (CRD included) with each values file."""
    docs = render(helm, values, release="eft-" + kube_namespace[2:], namespace=kube_namespace, crds=True)
    watched = [d["metadata"]["namespace"] for d in by_kind(docs, "Role")]
    created = _ensure_namespaces(control_plane, watched)
    try:
        manifest = yaml.safe_dump_all(docs)
        proc = _kubectl(control_plane, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                        "--field-manager=eft-helm-test", "-f", "-", input=manifest)
        assert proc.stdout.count("serverside-applied") == len(docs), proc.stdout
    finally:
        for ns in created:
            _kubectl(control_plane, "delete", "namespace", ns, "--wait=false", check=False)


def _can_i(cp, sa: str, *args: str) -> bool:
    proc = _kubectl(cp, "auth", "can-i", "--as", sa, *args, check=False)
    return proc.stdout.strip() == "yes"


@pytest.mark.kube
def test_helm_install_upgrade_uninstall(control_plane, kube_namespace):
    """A real release: cluster-wide RBAC lets the ServiceAccount do exactly the operator's work;
    an upgrade to namespaced mode swaps the ClusterRole for a Role; uninstall keeps the CRD."""
    ns = kube_namespace
    release = "eft-" + uuid.uuid4().hex[:6]
    fullname = f"{release}-eft-operator"
    sa = f"system:serviceaccount:{ns}:{fullname}"
    other = "t-" + uuid.uuid4().hex[:10]
    _ensure_namespaces(control_plane, [other])
    try:
        notes = control_plane.helm("install", release, str(CHART), "--namespace", ns).stdout.split("NOTES:", 1)[1]
        assert f"kubectl -n {ns} rollout status deployment/{fullname}" in notes
        assert "examples/quickstart.yaml" in notes
        assert "kubectl get embeddingfinetunes" in notes
        assert "crds/embeddingfinetune.yaml" in notes  # how to upgrade the CRD
        dep = json.loads(_kubectl(control_plane, "-n", ns, "get", "deployment", fullname, "-o", "json").stdout)
        assert dep["spec"]["strategy"]["type"] == "Recreate"
        _kubectl(control_plane, "get", "crd", "embeddingfinetunes.eft.ai")
        _kubectl(control_plane, "get", "clusterrole", fullname)

        assert _can_i(control_plane, sa, "watch", "embeddingfinetunes.eft.ai", "--all-namespaces")
        assert _can_i(control_plane, sa, "patch", "embeddingfinetunes.eft.ai", "--subresource=status", "-n", other)
        assert _can_i(control_plane, sa, "create", "jobs.batch", "-n", other)
        assert _can_i(control_plane, sa, "delete", "deployments.apps", "-n", other)
        assert not _can_i(control_plane, sa, "patch", "embeddingfinetunes.eft.ai", "-n", other)
        assert not _can_i(control_plane, sa, "delete", "embeddingfinetunes.eft.ai", "-n", other)
        assert not _can_i(control_plane, sa, "get", "secrets", "-n", other)
        assert not _can_i(control_plane, sa, "create", "pods", "-n", other)

        control_plane.helm("upgrade", release, str(CHART), "--namespace", ns,
                           "--set", f"operator.watchNamespaces={{{other}}}")
        assert _kubectl(control_plane, "get", "clusterrole", fullname, check=False).returncode != 0
        _kubectl(control_plane, "-n", other, "get", "role,rolebinding", fullname)
        assert _can_i(control_plane, sa, "create", "jobs.batch", "-n", other)
        assert not _can_i(control_plane, sa, "create", "jobs.batch", "-n", "default")
        assert not _can_i(control_plane, sa, "list", "embeddingfinetunes.eft.ai", "--all-namespaces")

        control_plane.helm("uninstall", release, "--namespace", ns)
        assert _kubectl(control_plane, "-n", ns, "get", "deployment", fullname, check=False).returncode != 0
        _kubectl(control_plane, "get", "crd", "embeddingfinetunes.eft.ai")  # Helm never deletes crds/
    finally:
        control_plane.helm("uninstall", release, "--namespace", ns, check=False)
        _kubectl(control_plane, "delete", "namespace", other, "--wait=false", check=False)
