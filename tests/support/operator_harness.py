"""Helpers for the operator tests on the real control plane (tests/support/controlplane.py).

* :func:`install_crd` applies crds/embeddingfinetune.yaml and waits until it is Established.
* :func:`operator_kubeconfig` makes a ServiceAccount in the namespace, binds it (RoleBinding) to a
  ClusterRole holding exactly :func:`eft.controller.rbac.cluster_role_rules`, and writes a kubeconfig
  with its token: the operator under test has no more rights than the Helm chart gives it.
* :class:`OperatorProcess` runs ``eft operator --namespace NS`` as a subprocess with that kubeconfig
  (kill -9 / restart are real), its log in a file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eft.controller.rbac import cluster_role_rules

from eft.spec import API_GROUP, API_VERSION, PLURAL
from tests.support.paths import REPO  # noqa: E402

CRD_FILE = REPO / "crds" / "embeddingfinetune.yaml"
TEST_CLUSTER_ROLE = "eft-operator-test"
TEST_IMAGE = "registry.invalid/eft:test"


def raw(resp) -> Any:
    return json.loads(resp.data)


def install_crd(control_plane) -> None:
    from kubernetes import client

    from tests.support.kubelet import wait_for

    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    ext = client.ApiextensionsV1Api(control_plane.api_client())

    def established():
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{API_GROUP}")
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_for(established, timeout=30, what="the EmbeddingFinetune CRD to be established")


def ensure_cluster_role(api) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    rbac = client.RbacAuthorizationV1Api(api)
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": TEST_CLUSTER_ROLE}, "rules": cluster_role_rules()}
    try:
        rbac.create_cluster_role(body)
    except ApiException as e:
        if e.status != 409:
            raise
        rbac.replace_cluster_role(TEST_CLUSTER_ROLE, body)


def operator_kubeconfig(control_plane, namespace: str, path: Path, sa: str = "eft-operator") -> Path:
    from kubernetes import client

    api = control_plane.api_client()
    ensure_cluster_role(api)
    token = control_plane.service_account_token(namespace, sa)
    client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "eft-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": TEST_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    })
    ca = base64.b64encode(Path(control_plane.ca_file).read_bytes()).decode()
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "test", "cluster": {"server": control_plane.server, "certificate-authority-data": ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": sa, "namespace": namespace}}],
    }
    path.write_text(json.dumps(cfg))
    os.chmod(path, 0o600)
    return path


class OperatorProcess:
    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, *extra_args: str, **env: str):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        env = dict(os.environ)
        env.update({"KUBECONFIG": str(self.kubeconfig), "EFT_IMAGE": TEST_IMAGE, "EFT_RESYNC_SECONDS": "10",
                    "EFT_METRICS_GRACE_SECONDS": "20", "PYTHONUNBUFFERED": "1"})
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.starts += 1
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eft.cli", "operator", "--namespace", self.namespace, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node failure or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Cluster:
    """Small typed-free helpers over the admin ApiClient, JSON in and out."""

    def __init__(self, control_plane, namespace: str):
        from kubernetes import client

        self.cp = control_plane
        self.ns = namespace
        self.api = control_plane.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    # ---- the custom resource

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict:
        body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "EmbeddingFinetune",
                "metadata": {"name": name, **({"annotations": annotations} if annotations else {})}, "spec": spec}
        return raw(self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, self.ns, PLURAL, body,
                                                               _preload_content=False))

    def get(self, name: str) -> dict:
        return raw(self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, self.ns, PLURAL, name,
                                                            _preload_content=False))

    def patch(self, name: str, patch: dict) -> dict:
        return raw(self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, self.ns, PLURAL, name, patch,
                                                              _preload_content=False))

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def condition(self, name: str, ctype: str) -> dict:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == ctype), {})

    # ---- children

    def jobs(self, name: str, stage: str | None = None) -> list[dict]:
        sel = f"app.kubernetes.io/instance={name}" + (f",{API_GROUP}/stage={stage}" if stage else "")
        items = raw(self.batch.list_namespaced_job(self.ns, label_selector=sel, _preload_content=False))["items"]
        return sorted(items, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"]))

    def stage_job(self, name: str, stage: str, timeout: float = 30, exclude: set[str] = frozenset()) -> dict:
        from tests.support.kubelet import wait_for

        return wait_for(lambda: next((j for j in self.jobs(name, stage) if j["metadata"]["name"] not in exclude
                                      and not j["metadata"].get("deletionTimestamp")), None),
                        timeout=timeout, what=f"a {stage} Job of {name}")

    def events(self, name: str) -> list[dict]:
        items = raw(self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}",
                                                    _preload_content=False))["items"]
        return items

    def deployment(self, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return raw(self.apps.read_namespaced_deployment(name, self.ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def pvc(self, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return raw(self.core.read_namespaced_persistent_volume_claim(name, self.ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def exists(self, read, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            read(name, self.ns)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise


def wait_status(cluster: Cluster, name: str, predicate, timeout: float = 30, what: str = "status"):
    from tests.support.kubelet import wait_for

    last: dict = {}

    def check():
        nonlocal last
        last = cluster.status(name)
        return predicate(last)

    try:
        return wait_for(check, timeout=timeout, interval=0.2, what=what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last status: {json.dumps(last, indent=1)[:3000]}") from None


def phase_is(*phases: str):
    return lambda st: st if st.get("phase") in phases else None


def eventually(fn, timeout: float = 30, interval: float = 0.3):
    """Retry an assertion block until it passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
