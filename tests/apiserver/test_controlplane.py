"""The test control plane behaves like a cluster: CRD schema + CEL, Job controller, GC, RBAC, teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kube

from tests.support.paths import REPO  # noqa: E402


def _client():
    from kubernetes import client

    return client


# --------------------------------------------------------------------------- CRD with schema and CEL

GROUP = "tests.eft.dev"


@pytest.fixture(scope="module")
def widget_crd(kube_api):
    client = _client()
    ext = client.ApiextensionsV1Api(kube_api)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object", "required": ["replicas"],
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0, "maximum": 10},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "mode": {"type": "string", "enum": ["fast", "slow"]},
                        },
                        "x-kubernetes-validations": [{
                            "rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                            "message": "minReplicas must not exceed replicas",
                            "fieldPath": ".minReplicas",
                        }],
                    }},
                }},
            }],
        },
    }
    ext.create_custom_resource_definition(crd)

    def established():
        c = ext.read_custom_resource_definition(f"widgets.{GROUP}")
        return any(x.type == "Established" and x.status == "True" for x in (c.status.conditions or []))

    _wait(established, 30)
    yield client.CustomObjectsApi(kube_api)
    ext.delete_custom_resource_definition(f"widgets.{GROUP}")


def _wait(pred, timeout, what="condition"):
    from tests.support.kubelet import wait_for

    return wait_for(pred, timeout=timeout, what=what)


def _widget(name, **spec):
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def _create_widget(co, ns, body):
    # the CRD is Established a moment before its REST endpoint is served: retry 404s briefly
    client = _client()
    deadline = time.monotonic() + 15
    while True:
        try:
            return co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", body)
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_crd_schema_and_cel(widget_crd, kube_namespace):
    client = _client()
    co = widget_crd
    created = _create_widget(co, kube_namespace, _widget("ok", replicas=3, minReplicas=1, mode="fast"))
    assert created["spec"]["replicas"] == 3

    with pytest.raises(client.ApiException) as cel:
        _create_widget(co, kube_namespace, _widget("cel", replicas=2, minReplicas=5))
    assert cel.value.status == 422
    msg = json.loads(cel.value.body)["message"]
    assert "spec.minReplicas" in msg and "minReplicas must not exceed replicas" in msg, msg

    with pytest.raises(client.ApiException) as schema:
        _create_widget(co, kube_namespace, _widget("schema", replicas=11, mode="medium"))
    assert schema.value.status == 422
    msg = json.loads(schema.value.body)["message"]
    assert "spec.replicas" in msg and "spec.mode" in msg, msg


# --------------------------------------------------------------------------- Jobs


def _job(name, backoff_limit=0):
    client = _client()
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[client.V1Container(name="main", image="example.invalid/trainer:1")],
            )),
        ),
    )


def test_job_completes(kube_api, kube_namespace, fake_kubelet):
    from tests.support.kubelet import wait_for_job_condition

    client = _client()
    client.BatchV1Api(kube_api).create_namespaced_job(kube_namespace, _job("ok"))
    pods = fake_kubelet.run_job_pods(kube_namespace, "ok", exit_code=0, message='{"result": "done"}')
    assert len(pods) == 1
    cond = wait_for_job_condition(kube_api, kube_namespace, "ok", "Complete", timeout=30)
    assert cond.status == "True"
    job = client.BatchV1Api(kube_api).read_namespaced_job("ok", kube_namespace)
    assert job.status.succeeded == 1
    pod = client.CoreV1Api(kube_api).read_namespaced_pod(pods[0], kube_namespace)
    assert pod.spec.node_name == fake_kubelet.node_name
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.message) == (0, '{"result": "done"}')


def test_job_fails_after_backoff_limit(kube_api, kube_namespace, fake_kubelet):
    from tests.support.kubelet import wait_for_job_condition

    client = _client()
    client.BatchV1Api(kube_api).create_namespaced_job(kube_namespace, _job("bad", backoff_limit=1))
    first = fake_kubelet.run_job_pods(kube_namespace, "bad", exit_code=3, message="out of memory")
    # the Job controller replaces the failed pod after its 10 s pod-failure backoff
    second = fake_kubelet.run_job_pods(kube_namespace, "bad", exit_code=3, message="out of memory", timeout=45)
    assert first != second
    cond = wait_for_job_condition(kube_api, kube_namespace, "bad", "Failed", timeout=30)
    assert cond.reason == "BackoffLimitExceeded"
    job = client.BatchV1Api(kube_api).read_namespaced_job("bad", kube_namespace)
    assert job.status.failed == 2


def test_deployment_pods_ready_and_rollout(kube_api, kube_namespace, fake_kubelet):
    client = _client()
    apps = client.AppsV1Api(kube_api)
    labels = {"app": "serve"}
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="serve"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="srv", image="example.invalid/srv:1")]))))
    apps.create_namespaced_deployment(kube_namespace, dep)
    first = fake_kubelet.mark_deployment_pods_ready(kube_namespace, "serve", timeout=30)
    assert len(first) == 2
    d = apps.read_namespaced_deployment("serve", kube_namespace)
    assert d.status.ready_replicas == 2
    assert any(c.type == "Available" and c.status == "True" for c in d.status.conditions)
    # a new template rolls out: new pods made ready, old ones reaped
    apps.patch_namespaced_deployment("serve", kube_namespace, {"spec": {"template": {"spec": {"containers": [
        {"name": "srv", "image": "example.invalid/srv:2"}]}}}})
    second = fake_kubelet.mark_deployment_pods_ready(kube_namespace, "serve", timeout=30)
    assert len(second) == 2 and not set(first) & set(second)
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(kube_namespace, label_selector="app=serve").items
    assert sorted(p.spec.containers[0].image for p in pods) == ["example.invalid/srv:2"] * 2


# --------------------------------------------------------------------------- garbage collection


def test_garbage_collector_deletes_dependents(kube_api, kube_namespace):
    client = _client()
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="dependent", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)])))
    core.delete_namespaced_config_map("owner", kube_namespace, propagation_policy="Background")

    def gone():
        try:
            core.read_namespaced_config_map("dependent", kube_namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    _wait(gone, 30, "the dependent ConfigMap to be garbage-collected")


# --------------------------------------------------------------------------- RBAC


def test_rbac_service_account(control_plane, kube_api, kube_namespace, sa_token):
    client = _client()
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(kube_namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])]))
    rbac.create_namespaced_role_binding(kube_namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="narrow", namespace=kube_namespace)]))
    token = sa_token(kube_namespace, "narrow")

    with control_plane.api_client(token=token) as sa_api:
        core = client.CoreV1Api(sa_api)

        def can_list():
            try:
                return core.list_namespaced_config_map(kube_namespace) is not None
            except client.ApiException as e:
                if e.status != 403:  # the authorizer's informers may lag a moment
                    raise
                return False

        _wait(can_list, 15, "the RoleBinding to take effect")
        with pytest.raises(client.ApiException) as denied:
            core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="nope")))
        assert denied.value.status == 403
        assert f"system:serviceaccount:{kube_namespace}:narrow" in json.loads(denied.value.body)["message"]
        with pytest.raises(client.ApiException) as other_ns:
            core.list_namespaced_config_map("default")
        assert other_ns.value.status == 403


def test_kubectl_and_helm_talk_to_it(control_plane, kube_namespace):
    out = control_plane.kubectl("get", "namespace", kube_namespace, "-o", "jsonpath={.status.phase}").stdout
    assert out == "Active"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == control_plane.versions["k8s"]
    assert control_plane.helm("version", "--short").stdout.startswith(control_plane.versions["helm"])
    assert control_plane.helm("list", "-n", kube_namespace).returncode == 0


# --------------------------------------------------------------------------- teardown leaves nothing


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_process_left_behind(control_plane_binaries, sig):
    """A runner that dies (SIGTERM: handler stops children; SIGKILL: PDEATHSIG) takes its children along."""
    # not `python -m` from the repo root: its operator/ package would shadow the stdlib's operator
    code = (f"import sys; sys.path.append({str(REPO)!r}); from tests.support.controlplane import main; "
            "sys.exit(main(['--no-wait']))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=control_plane_binaries["etcd"].rsplit("/", 1)[0],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        pids = list(info["pids"].values())
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], f"left behind: {info['pids']}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "info" in locals():
            for p in info["pids"].values():
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            # a runner killed by a signal keeps its workdir (logs)
            shutil.rmtree(info["workdir"], ignore_errors=True)


class _RecordingPopen(subprocess.Popen):
    """A Popen that remembers the grace each ``wait`` was given."""

    graces: list[float] = []

    def wait(self, timeout=None):
        if timeout is not None:
            self.graces.append(timeout)
        return super().wait(timeout=timeout)


def test_stop_shares_one_grace_among_processes_that_ignore_sigterm(tmp_path):
    """Processes that sit out SIGTERM (a control plane still starting) share ``stop``'s grace, then die of
    SIGKILL: three sequential graces outlasted the 30 s a signalled runner is given (CI failure)."""
    from tests.support.controlplane import ControlPlane

    cp = ControlPlane({"kube-apiserver": sys.executable}, workdir=tmp_path / "cp")
    ignore_term = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(120)")
    _RecordingPopen.graces = []
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        cp.procs[name] = _RecordingPopen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE,
                                         text=True, start_new_session=True)
        assert cp.procs[name].stdout.readline() == "ready\n"
    try:
        cp.stop(timeout=1.0)
        assert all(p.poll() == -signal.SIGKILL for p in cp.procs.values())
        sigterm_graces = _RecordingPopen.graces[:3]
        assert sigterm_graces[0] <= 1.0 and sum(sigterm_graces) <= 1.0 + 1e-6, _RecordingPopen.graces
    finally:
        for p in cp.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
