"""The operator against the real control plane, running as a ServiceAccount bound to exactly the rules of
eft/controller/rbac.py. The fake kubelet (tests/support/kubelet.py) runs the stage pods."""

from __future__ import annotations

import json
import time

import pytest

from eft.spec import STAGES
from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    eventually,
    install_crd,
    operator_kubeconfig,
    phase_is,
    wait_status,
)

pytestmark = pytest.mark.kube

EVAL = {"baseNdcg10": 0.412, "tunedNdcg10": 0.538, "gate": "passed", "gateMetric": "ndcg@10", "gateDataset": "test"}


@pytest.fixture(scope="module")
def crd(control_plane):
    install_crd(control_plane)


@pytest.fixture
def cluster(control_plane, kube_namespace, crd):
    return Cluster(control_plane, kube_namespace)


@pytest.fixture
def operator(control_plane, kube_namespace, crd, tmp_path, request):
    kubeconfig = operator_kubeconfig(control_plane, kube_namespace, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(kubeconfig, kube_namespace, tmp_path / "operator.log").start()
    failed_before = request.session.testsfailed
    yield op
    op.stop()
    log = op.log()
    if request.session.testsfailed > failed_before:
        print(f"----- operator log ({op.log_path}) -----\n{log[-8000:]}")
    # Exactly-the-rules RBAC: the operator never hit a permission error.
    assert " 403 " not in log and "forbidden" not in log.lower(), log[-4000:]


def run_stage(cluster: Cluster, kubelet, name: str, stage: str, message: str | None = None, **kw) -> dict:
    exclude = set(kw.pop("exclude", set()))
    job = cluster.stage_job(name, stage, exclude=exclude)
    # strictly in order: when a stage's Job appears, nothing after it exists
    later = STAGES[STAGES.index(stage) + 1:]
    assert not [j for s in later for j in cluster.jobs(name, s) if j["metadata"]["name"] not in exclude]
    kubelet.run_job_pods(cluster.ns, job["metadata"]["name"], message=message or f"{stage}: ok", **kw)
    return job


def run_pipeline(cluster, kubelet, name, stages=STAGES, exclude=frozenset()) -> dict[str, dict]:
    jobs = {}
    for stage in stages:
        msg = json.dumps(EVAL) if stage == "evaluate" else None
        jobs[stage] = run_stage(cluster, kubelet, name, stage, msg, exclude=set(exclude))
    return jobs


def test_happy_path_serves_and_retrain_rolls_the_deployment(cluster, operator, fake_kubelet, control_plane):
    name = "demo"
    cluster.create(name, {"serving": {"port": 8080}})
    jobs = run_pipeline(cluster, fake_kubelet, name)

    # every stage Job: owned, labelled, the right command and spec file
    for stage, job in jobs.items():
        meta = job["metadata"]
        assert meta["ownerReferences"][0]["kind"] == "EmbeddingFinetune"
        assert meta["labels"]["app.kubernetes.io/instance"] == name and meta["labels"]["eft.ai/stage"] == stage
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["command"][:3] == ["eft", "stage", stage] and c["image"] == "registry.invalid/eft:test"
    assert len(cluster.jobs(name)) == len(STAGES)

    def deployed():
        d = cluster.deployment(f"{name}-serve")
        assert d is not None, "no serving Deployment yet"
        return d

    dep = eventually(deployed, 30)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    fake_kubelet.mark_deployment_pods_ready(cluster.ns, f"{name}-serve")
    r = control_plane.kubectl("wait", "-n", cluster.ns, "--for=condition=Ready", f"embeddingfinetune/{name}",
                              "--timeout=30s")
    assert "condition met" in r.stdout
    st = cluster.status(name)
    assert st["phase"] == "Serving" and st["metrics"] == EVAL
    assert st["endpoint"] == f"http://{name}-serve.{cluster.ns}.svc:8080"
    assert [s["phase"] for s in st["stages"]] == ["Succeeded"] * 6
    assert st["stages"][4]["message"] == json.dumps(EVAL)
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    gate = next(c for c in st["conditions"] if c["type"] == "QualityGatePassed")
    assert gate["status"] == "True"
    table = control_plane.kubectl("get", "eft", name, "-n", cluster.ns).stdout
    assert "Serving" in table and "0.538" in table and "0.412" in table and "TUNED NDCG@10" in table
    reasons = [e["reason"] for e in cluster.events(name)]
    assert reasons.count("StageSucceeded") == 6 and "Ready" in reasons and "QualityGatePassed" in reasons
    assert cluster.pvc(f"{name}-workspace")["metadata"].get("ownerReferences") is None  # Retain

    # ---- re-train: a training field changed -> train, evaluate, export re-run; the Deployment rolls
    old_pods = {p.metadata.name for p in cluster.core.list_namespaced_pod(
        cluster.ns, label_selector="app.kubernetes.io/component=serving").items}
    old_digest = dep["spec"]["template"]["metadata"]["annotations"]["eft.ai/model-digest"]
    old = {j["metadata"]["name"] for j in cluster.jobs(name)}  # before the patch: the operator may be quicker
    cluster.patch(name, {"spec": {"training": {"epochs": 4}}})
    new_jobs = run_pipeline(cluster, fake_kubelet, name, ("train", "evaluate", "export"), exclude=old)
    assert all(j["metadata"]["name"] not in old for j in new_jobs.values())
    for stage in ("ingest", "sdg", "prepare"):
        assert len(cluster.jobs(name, stage)) == 1, f"{stage} must not re-run"
    # meanwhile the old model kept serving
    assert wait_status(cluster, name, phase_is("Deploying", "Serving"))

    def rolled():
        d = cluster.deployment(f"{name}-serve")
        digest = d["spec"]["template"]["metadata"]["annotations"]["eft.ai/model-digest"]
        assert digest != old_digest
        return d

    eventually(rolled, 30)
    # maxUnavailable 0: the old pod stays up (not terminating) until a new one is ready
    pods = cluster.core.list_namespaced_pod(cluster.ns, label_selector="app.kubernetes.io/component=serving").items
    assert any(p.metadata.name in old_pods and p.metadata.deletion_timestamp is None for p in pods)
    fake_kubelet.mark_deployment_pods_ready(cluster.ns, f"{name}-serve")
    st = wait_status(cluster, name, phase_is("Serving"), what="serving the new model")
    assert st["observedGeneration"] == 2 and st["modelDigest"] != old_digest
    assert "Retraining" in [e["reason"] for e in cluster.events(name)]
    # superseded Jobs of the re-run stages are gone, the kept ones stay
    assert len(cluster.jobs(name)) == len(STAGES)

    # ---- re-train by annotation, from export only
    before = {j["metadata"]["name"] for j in cluster.jobs(name)}
    cluster.patch(name, {"metadata": {"annotations": {"eft.ai/retrain": "r1", "eft.ai/retrain-from": "export"}}})
    job = run_stage(cluster, fake_kubelet, name, "export", exclude=before)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--force"
    assert {j["metadata"]["labels"]["eft.ai/stage"] for j in cluster.jobs(name)
            if j["metadata"]["name"] not in before} == {"export"}


def test_operator_killed_mid_stage_resumes_without_duplicates(cluster, operator, fake_kubelet):
    name = "crashy"
    cluster.create(name, {})
    run_pipeline(cluster, fake_kubelet, name, ("ingest", "sdg"))
    prepare = cluster.stage_job(name, "prepare")
    wait_status(cluster, name, lambda st: st["stages"][2]["phase"] == "Running" and st)
    operator.kill()
    # the stage finishes while the operator is down
    fake_kubelet.run_job_pods(cluster.ns, prepare["metadata"]["name"], message="prepare: ok")
    operator.start()
    train = cluster.stage_job(name, "train", timeout=60)
    wait_status(cluster, name, lambda st: st["stages"][3]["phase"] == "Running" and st)
    # kill again while train is running (its pod not done), restart: the same Job is adopted
    operator.kill()
    operator.start()
    wait_status(cluster, name, lambda st: st.get("stages") and st["stages"][3].get("phase") == "Running"
                and st, timeout=30)
    time.sleep(2)  # give a duplicate a chance to appear
    for stage in ("ingest", "sdg", "prepare", "train"):
        assert len(cluster.jobs(name, stage)) == 1, stage
    assert cluster.stage_job(name, "train")["metadata"]["uid"] == train["metadata"]["uid"]
    fake_kubelet.run_job_pods(cluster.ns, train["metadata"]["name"], message="train: ok")
    cluster.stage_job(name, "evaluate")
    st = wait_status(cluster, name, lambda st: st["stages"][4]["phase"] == "Running" and st)
    assert [s["phase"] for s in st["stages"][:4]] == ["Succeeded"] * 4
    events = [e["reason"] for e in cluster.events(name)]
    assert events.count("StageSucceeded") == 4, events  # no duplicate events across restarts


def test_failing_stage_retries_then_fails_with_the_pod_message(cluster, operator, fake_kubelet):
    name = "broken"
    cluster.create(name, {"scheduling": {"backoffLimit": 1}})
    job = cluster.stage_job(name, "ingest")
    assert job["spec"]["backoffLimit"] == 1
    fake_kubelet.run_job_pods(cluster.ns, job["metadata"]["name"], exit_code=1, count=2, timeout=60,
                              message="ingest: corpus path /eft/corpus is empty")
    st = wait_status(cluster, name, phase_is("Failed"), timeout=60)
    ingest = st["stages"][0]
    assert ingest["phase"] == "Failed" and ingest["attempts"] == 2
    assert ingest["message"] == "ingest: corpus path /eft/corpus is empty"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed" and "is empty" in failed["message"]
    ev = [e for e in cluster.events(name) if e["reason"] == "StageFailed"]
    assert ev and ev[0]["type"] == "Warning" and "is empty" in ev[0]["message"]
    assert len(cluster.jobs(name)) == 1  # nothing after a failed stage


def test_suspend_pauses_between_stages_and_kueue_queueing(cluster, operator, fake_kubelet):
    name = "paused"
    cluster.create(name, {"suspend": True, "queueName": "team-a"})
    wait_status(cluster, name, phase_is("Suspended"))
    assert cluster.jobs(name) == []
    assert cluster.pvc(f"{name}-workspace") is not None  # infrastructure is ready while paused
    cluster.patch(name, {"spec": {"suspend": False}})
    ingest = cluster.stage_job(name, "ingest")
    assert ingest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # created suspended, as Kueue wants it: reported as Queued until admitted (unsuspended)
    assert ingest["spec"]["suspend"] is True
    st = wait_status(cluster, name, phase_is("Queued"))
    assert next(c for c in st["conditions"] if c["type"] == "Queued")["status"] == "True"
    # pause while the stage runs: it finishes, the next one does not start
    gen = cluster.patch(name, {"spec": {"suspend": True}})["metadata"]["generation"]
    wait_status(cluster, name, lambda st: st.get("observedGeneration") == gen and st)
    cluster.batch.patch_namespaced_job(ingest["metadata"]["name"], cluster.ns, {"spec": {"suspend": False}})
    fake_kubelet.run_job_pods(cluster.ns, ingest["metadata"]["name"], message="ingest: ok")
    st = wait_status(cluster, name, phase_is("Suspended"))
    assert st["stage"] == "sdg" and cluster.jobs(name, "sdg") == []
    assert next(c for c in st["conditions"] if c["type"] == "Queued")["status"] == "False"
    cluster.patch(name, {"spec": {"suspend": False}})
    cluster.stage_job(name, "sdg")
    reasons = [e["reason"] for e in cluster.events(name)]
    assert "Suspended" in reasons and "Resumed" in reasons and "StageQueued" in reasons


def test_deletion_follows_the_retention_policy(cluster, operator, fake_kubelet):
    from tests.support.kubelet import wait_for

    cluster.create("keep", {})
    cluster.create("drop", {"workspace": {"retentionPolicy": "Delete"}})
    for name in ("keep", "drop"):
        cluster.stage_job(name, "ingest")
    assert cluster.pvc("drop-workspace")["metadata"]["ownerReferences"][0]["name"] == "drop"
    assert cluster.pvc("keep-workspace")["metadata"].get("ownerReferences") is None
    cluster.delete("keep")
    cluster.delete("drop")
    gone = lambda: not cluster.jobs("keep") and not cluster.jobs("drop") and not cluster.exists(  # noqa: E731
        cluster.core.read_namespaced_config_map, "keep-spec")
    wait_for(gone, timeout=60, what="children garbage-collected")
    fake_kubelet.reap_terminating_pods(cluster.ns)
    wait_for(lambda: (cluster.pvc("drop-workspace") is None
                      or cluster.pvc("drop-workspace")["metadata"].get("deletionTimestamp")),
             timeout=60, what="the Delete-policy claim to be deleted")
    keep = cluster.pvc("keep-workspace")
    assert keep is not None and not keep["metadata"].get("deletionTimestamp")
    # a new resource of the same name reuses the retained workspace (cached models, finished outputs)
    cluster.create("keep", {"workspace": {"retentionPolicy": "Delete"}})
    wait_for(lambda: (cluster.pvc("keep-workspace")["metadata"].get("ownerReferences") or [{}])[0].get("name")
             == "keep", timeout=30, what="the retained claim to be adopted")
    assert cluster.pvc("keep-workspace")["metadata"]["uid"] == keep["metadata"]["uid"]


def test_operator_service_account_has_exactly_the_rbac_rules(control_plane, kube_namespace, crd, tmp_path):
    """The operator tests run as this ServiceAccount: what it may do is exactly eft.controller.rbac."""
    from eft.controller.rbac import cluster_role_rules
    from kubernetes import client

    from tests.support.operator_harness import raw

    kubeconfig = operator_kubeconfig(control_plane, kube_namespace, tmp_path / "sa.kubeconfig")
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    api = control_plane.api_client(token=token)
    review = raw(client.AuthorizationV1Api(api).create_self_subject_rules_review(
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
         "spec": {"namespace": kube_namespace}}, _preload_content=False))
    granted = {(g, r, v) for rule in review["status"]["resourceRules"] for g in rule.get("apiGroups", [])
               for r in rule.get("resources", []) for v in rule["verbs"]}
    expected = {(g, r, v) for rule in cluster_role_rules() for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}
    # everyone may create self-subject reviews (system:basic-user); nothing else beyond the rules
    extra = {x for x in granted - expected if x[0] not in ("authorization.k8s.io", "authentication.k8s.io")}
    assert expected <= granted and not extra, extra
    for verb, res in (("get", "secrets"), ("delete", "persistentvolumeclaims"), ("patch", "embeddingfinetunes"),
                      ("create", "pods")):
        r = control_plane.kubectl("auth", "can-i", verb, res, "-n", kube_namespace, f"--token={token}",
                                  check=False)
        assert r.stdout.strip() == "no", (verb, res)


def _read_or_none(read, name: str, ns: str) -> dict | None:
    from kubernetes.client.rest import ApiException

    from tests.support.operator_harness import raw

    try:
        return raw(read(name, ns, _preload_content=False))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_shared_cluster_serving_budget_autoscaler_and_network_policy(cluster, operator, fake_kubelet):
    """serving for shared clusters: a PodDisruptionBudget while more than one pod can serve (the disruption
    controller of the control plane fills its status), the HorizontalPodAutoscaler whose replica count the
    operator's Deployment updates keep, the NetworkPolicy; the budget and the autoscaler go with one replica."""
    from kubernetes import client

    name, serve, ns = "shared", "shared-serve", cluster.ns
    policy, autoscaling = client.PolicyV1Api(cluster.api), client.AutoscalingV2Api(cluster.api)
    networking = client.NetworkingV1Api(cluster.api)
    pdb = lambda: _read_or_none(policy.read_namespaced_pod_disruption_budget, serve, ns)  # noqa: E731
    hpa = lambda: _read_or_none(autoscaling.read_namespaced_horizontal_pod_autoscaler, serve, ns)  # noqa: E731
    netpol = lambda: _read_or_none(networking.read_namespaced_network_policy, serve, ns)  # noqa: E731
    uid = cluster.create(name, {"workspace": {"accessModes": ["ReadWriteMany"]}, "serving": {
        "replicas": 2, "resources": {"requests": {"cpu": "100m"}},
        "networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {"app": "rag"}}}}})["metadata"]["uid"]
    run_pipeline(cluster, fake_kubelet, name)

    def owned(get):
        obj = get()
        assert obj is not None
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("EmbeddingFinetune", name, uid, True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "eft-operator"
        return obj

    budget = eventually(lambda: owned(pdb), 30)
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"
    policy_obj = owned(netpol)
    assert policy_obj["spec"]["policyTypes"] == ["Ingress"]
    assert policy_obj["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "rag"}}}],
                                              "ports": [{"protocol": "TCP", "port": 8000}]}]
    assert hpa() is None
    fake_kubelet.mark_deployment_pods_ready(ns, serve)
    wait_status(cluster, name, phase_is("Serving"))

    def counted():  # the kube-controller-manager's disruption controller: 2 pods of the Deployment, 1 may go
        st = pdb()["status"]
        assert (st.get("expectedPods"), st.get("currentHealthy"), st.get("desiredHealthy"),
                st.get("disruptionsAllowed")) == (2, 2, 1, 1), st

    eventually(counted, 30)

    # ---- autoscaling: the HPA appears; what it sets (here by hand: no metrics-server) survives a rollout
    cluster.patch(name, {"spec": {"serving": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}}}})
    auto = eventually(lambda: owned(hpa), 30)
    assert auto["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": serve}
    assert (auto["spec"]["minReplicas"], auto["spec"]["maxReplicas"]) == (2, 4)
    assert auto["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    cluster.apps.patch_namespaced_deployment_scale(serve, ns, {"spec": {"replicas": 3}})
    cluster.patch(name, {"spec": {"serving": {"env": [{"name": "EFT_SHARED", "value": "1"}]}}})

    def rolled_keeping_replicas():
        d = cluster.deployment(serve)
        env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "EFT_SHARED", "value": "1"} in env
        assert d["spec"]["replicas"] == 3, d["spec"]["replicas"]
        return d

    eventually(rolled_keeping_replicas, 30)
    fake_kubelet.mark_deployment_pods_ready(ns, serve)
    wait_status(cluster, name, phase_is("Serving"), what="serving on the autoscaler's 3 replicas")
    assert cluster.deployment(serve)["spec"]["replicas"] == 3

    def budget_follows():  # maxUnavailable follows the replica count the autoscaler set
        st = pdb()["status"]
        assert (st.get("expectedPods"), st.get("desiredHealthy")) == (3, 2), st

    eventually(budget_follows, 30)

    # ---- back to one replica without autoscaling: the budget and the autoscaler are deleted
    cluster.patch(name, {"spec": {"serving": {"replicas": 1, "autoscaling": {"enabled": False}}}})

    def single():
        assert pdb() is None and hpa() is None
        assert cluster.deployment(serve)["spec"]["replicas"] == 1

    eventually(single, 30)
    assert owned(netpol)  # still wanted
    cluster.patch(name, {"spec": {"serving": {"networkPolicy": {"enabled": False}}}})

    def no_policy():
        assert netpol() is None

    eventually(no_policy, 30)
