"""The reconcile decision: plan(resource, children, settings, now)."""


from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from eft.controller import builders as b
from eft.controller.plan import (
    Children,
    plan,
    summarize_pod,
    transition_events,
)

from tests.unit.operator.factories import (
    EVAL_BAD,
    EVAL_OK,
    EVAL_OVERRIDDEN,
    NOW,
    SETTINGS,
    UID,
    children_through,
    cond,
    efr,
    kinds,
    model_digest_of,
    parsed,
)


def test_plan_first_reconcile_creates_spec_workspace_and_first_job():
    body = efr()
    p = plan(body, Children(), SETTINGS, NOW)
    assert kinds(p) == [("create", "ConfigMap"), ("create", "PersistentVolumeClaim"), ("create", "Job")]
    j = p.actions[-1].obj
    assert j["metadata"]["labels"][b.STAGE_LABEL] == "ingest"
    st = p.status
    assert st["phase"] == "Running" and st["stage"] == "ingest" and st["observedGeneration"] == 1
    assert [s["phase"] for s in st["stages"]] == ["Pending"] * 6
    assert {c["type"] for c in st["conditions"]} == {"Progressing", "Succeeded", "Failed", "QualityGatePassed",
                                                     "Queued", "Ready"}
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    assert cond(st, "Ready")["status"] == "False"


def test_plan_waits_for_a_running_stage_and_then_moves_on():
    body = efr()
    p = plan(body, children_through(body, "ingest", "Running"), SETTINGS, NOW)
    assert p.actions == []
    assert p.status["phase"] == "Running" and p.status["stages"][0]["phase"] == "Running"
    assert ("Normal", "StageStarted", f"stage ingest started (Job {p.status['stages'][0]['job']})") in p.events
    body["status"] = p.status
    p2 = plan(body, children_through(body, "ingest"), SETTINGS, NOW)
    assert kinds(p2) == [("create", "Job")] and p2.actions[0].obj["metadata"]["labels"][b.STAGE_LABEL] == "sdg"
    assert p2.status["stages"][0]["message"] == "ingest done"
    assert any(e[1] == "StageSucceeded" for e in p2.events)


def test_plan_never_reruns_a_finished_stage_whose_job_is_gone():
    body = efr()
    p = plan(body, children_through(body, "prepare"), SETTINGS, NOW)
    body["status"] = p.status
    ch = children_through(body, "prepare")
    ch.jobs = [j for j in ch.jobs if j["stage"] != "ingest"]  # e.g. deleted by someone
    p2 = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p2.actions if a.kind == "Job"] == ["train"]
    assert p2.status["stages"][0]["phase"] == "Succeeded"


def test_plan_failed_stage_reports_termination_message():
    body = efr()
    ch = children_through(body, "train", "Failed", messages={"train": "train: CUDA out of memory"})
    ch.jobs[-1]["failed"] = 3
    p = plan(body, ch, SETTINGS, NOW)
    assert kinds(p, "create") == []
    st = p.status
    assert st["phase"] == "Failed" and st["stage"] == "train"
    assert st["stages"][3] == {**st["stages"][3], "phase": "Failed", "attempts": 3,
                               "message": "train: CUDA out of memory"}
    assert cond(st, "Failed")["status"] == "True" and cond(st, "Failed")["reason"] == "StageFailed"
    assert "CUDA out of memory" in cond(st, "Failed")["message"]
    ev = [e for e in p.events if e[1] == "StageFailed"]
    assert ev and ev[0][0] == "Warning" and "3 attempt" in ev[0][2] and "CUDA" in ev[0][2]


def test_plan_failed_stage_without_message_uses_job_condition():
    body = efr()
    ch = children_through(body, "sdg", "Failed")
    ch.pods = {}
    p = plan(body, ch, SETTINGS, NOW)
    assert "BackoffLimitExceeded" in p.status["stages"][1]["message"]


def test_plan_suspend_pauses_between_stages():
    body = efr({"suspend": True})
    p = plan(body, children_through(body, "sdg"), SETTINGS, NOW)
    assert kinds(p, "create") == []
    assert p.status["phase"] == "Suspended" and p.status["stage"] == "prepare"
    assert cond(p.status, "Progressing")["reason"] == "Suspended"
    assert any(e[1] == "Suspended" for e in p.events)
    # a running stage is not interrupted
    p = plan(body, children_through(body, "sdg", "Running"), SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Running"
    # resume
    body2 = efr({"suspend": False}, status=plan(body, children_through(body, "sdg"), SETTINGS, NOW).status)
    p = plan(body2, children_through(body2, "sdg"), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Job")] and any(e[1] == "Resumed" for e in p.events)


def test_plan_reports_kueue_queued_jobs():
    body = efr({"queueName": "team"})
    ch = children_through(body, "train", "Queued")
    p = plan(body, ch, SETTINGS, NOW)
    assert p.status["phase"] == "Queued" and cond(p.status, "Queued")["status"] == "True"
    assert "team" in cond(p.status, "Queued")["message"]
    assert p.actions == []


def test_plan_quality_gate():
    body = efr()
    p = plan(body, children_through(body, "evaluate", messages={"evaluate": EVAL_BAD}), SETTINGS, NOW)
    assert kinds(p, "create") == []
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "QualityGateFailed"
    assert cond(p.status, "QualityGatePassed")["status"] == "False"
    assert p.status["metrics"]["tunedNdcg10"] == 0.30
    assert any(e[1] == "QualityGateFailed" for e in p.events)
    over = efr({"evaluation": {"gate": {"override": True}}})
    p = plan(over, children_through(over, "evaluate", messages={"evaluate": EVAL_OVERRIDDEN}), SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["export"]
    assert cond(p.status, "QualityGatePassed")["reason"] == "Overridden"
    ok = efr()
    p = plan(ok, children_through(ok, "evaluate", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Job")] and cond(p.status, "QualityGatePassed")["status"] == "True"
    assert p.status["metrics"] == {"baseNdcg10": 0.41, "tunedNdcg10": 0.52, "gate": "passed", "gateMetric": "ndcg@10",
                                   "gateDataset": "test", "relativeImprovement": 0.268293, "required": 0.0}


def test_plan_waits_briefly_for_the_evaluate_termination_message():
    body = efr()
    ch = children_through(body, "evaluate")
    ch.pods = {}
    p = plan(body, ch, SETTINGS, datetime(2025, 1, 1, 11, 30, 10, tzinfo=timezone.utc))
    assert kinds(p, "create") == [] and p.requeue_after
    p = plan(body, ch, SETTINGS, NOW)  # 30 min later: go on without metrics
    assert kinds(p, "create") == [("create", "Job")]
    assert cond(p.status, "QualityGatePassed")["reason"] == "MetricsUnavailable"


def _serving_children(body, dep=None, svc=True):
    ch = children_through(body, "export", messages={"evaluate": EVAL_OK})
    if svc:
        ch.services = [{"name": b.serving_name("demo"), "uid": "svc", "owner": UID, "owners": [],
                        "component": "serving", "deleting": False,
                        "hash": b.build_serving_service(body, parsed(body))["metadata"]["annotations"][
                            b.HASH_ANNOTATION]}]
    if dep is not None:
        ch.deployments = [dep]
    return ch


def _dep_summary(body, ready: int, digest=None):
    spec = parsed(body)
    digest = digest or model_digest_of(body)
    d = b.build_serving_deployment(body, spec, SETTINGS, digest)
    return {"name": d["metadata"]["name"], "uid": "dep", "owner": UID, "hash": d["metadata"]["annotations"][
        b.HASH_ANNOTATION], "digest": digest, "generation": 1, "observedGeneration": 1,
        "replicas": spec.serving.replicas, "statusReplicas": spec.serving.replicas, "updated": ready,
        "ready": ready, "available": ready, "deleting": False}


def test_plan_deploys_after_export_and_reports_ready():
    body = efr()
    p = plan(body, children_through(body, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert kinds(p) == [("create", "Service"), ("create", "Deployment")]
    assert p.status["phase"] == "Deploying" and cond(p.status, "Ready")["status"] == "False"
    assert p.status["endpoint"] == "http://demo-serve.ns.svc:8000"
    body["status"] = p.status
    p2 = plan(body, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS, NOW + timedelta(seconds=5))
    assert p2.actions == []
    assert p2.status["phase"] == "Serving" and cond(p2.status, "Ready")["status"] == "True"
    assert cond(p2.status, "Succeeded")["status"] == "True"
    assert p2.status["stage"] == "serving" and p2.status["modelDigest"] == model_digest_of(body)
    assert any(e[1] == "Ready" for e in p2.events)
    # lastTransitionTime only moves on flips
    p3 = plan({**body, "status": p2.status}, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS,
              NOW + timedelta(minutes=5))
    assert p3.status == p2.status and p3.events == []


def test_plan_retrain_rolls_the_deployment_to_the_new_model():
    body = efr()
    served = plan(body, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS, NOW).status
    new = efr({"training": {"epochs": 5}}, status=served, generation=2)
    old_children = _serving_children(body, _dep_summary(body, ready=1))
    p = plan(new, old_children, SETTINGS, NOW)
    # train re-runs under a new name; earlier stages are not re-run; serving keeps the old model
    jobs = [a.obj for a in p.actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["train"]
    assert jobs[0]["metadata"]["name"] not in {j["name"] for j in old_children.jobs}
    assert not any(a.kind == "Deployment" for a in p.actions)
    assert cond(p.status, "Ready")["reason"] == "ServingPreviousModel"
    assert p.status["endpoint"] and any(e[1] == "Retraining" for e in p.events)
    # completed superseded jobs of the re-run stage go; earlier stages stay
    deleted = {a.name for a in p.actions if a.verb == "delete"}
    old_train = next(j["name"] for j in old_children.jobs if j["stage"] == "train")
    assert old_train in deleted
    # after the new export: the Deployment is updated with a new digest
    ch = children_through(new, "export", messages={"evaluate": EVAL_OK})
    ch.services, ch.deployments = old_children.services, old_children.deployments
    p = plan({**new, "status": p.status}, ch, SETTINGS, NOW)
    upd = [a for a in p.actions if a.verb == "update" and a.kind == "Deployment"]
    assert upd and upd[0].obj["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == \
        model_digest_of(new) != model_digest_of(body)
    assert p.status["phase"] == "Deploying"


def test_plan_stops_a_running_superseded_job():
    body = efr()
    ch = children_through(body, "train", "Running")
    new = efr({"training": {"epochs": 9}}, generation=2)
    p = plan(new, ch, SETTINGS, NOW)
    running = next(j for j in ch.jobs if j["stage"] == "train")
    assert ("delete", "Job") in kinds(p) and running["name"] in {a.name for a in p.actions if a.verb == "delete"}
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job" and a.verb == "create"] \
        == ["train"]


def test_plan_retrain_annotation_restarts_from_the_named_stage_with_force():
    body = efr()
    done = _serving_children(body, _dep_summary(body, ready=1))
    rt = efr(annotations={b.RETRAIN_ANNOTATION: "2025-01-01", b.RETRAIN_FROM_ANNOTATION: "train"})
    p = plan(rt, done, SETTINGS, NOW)
    jobs = [a.obj for a in p.actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["train"]
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--force"
    rt2 = efr(annotations={b.RETRAIN_ANNOTATION: "x"})
    jobs = [a.obj for a in plan(rt2, done, SETTINGS, NOW).actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["ingest"]


def test_plan_rwo_multi_replica_is_a_clear_condition():
    body = efr({"serving": {"replicas": 3}})
    p = plan(body, children_through(body, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert not any(a.kind == "Deployment" for a in p.actions)
    ready = cond(p.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReadWriteOnceMultiReplica"
    assert p.status["phase"] == "Blocked" and any(e[1] == "ReadWriteOnceMultiReplica" for e in p.events)
    rwx = efr({"serving": {"replicas": 3}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    p = plan(rwx, children_through(rwx, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert ("create", "Deployment") in kinds(p)


def test_plan_serving_disabled_removes_serving_objects():
    body = efr({"serving": {"enabled": False}})
    ch = _serving_children(body, _dep_summary(efr(), ready=1))
    p = plan(body, ch, SETTINGS, NOW)
    assert sorted(kinds(p, "delete")) == [("delete", "Deployment"), ("delete", "Service")]
    assert p.status["phase"] == "Succeeded" and cond(p.status, "Ready")["reason"] == "ServingDisabled"
    assert "endpoint" not in p.status


def test_plan_retention_policy_moves_the_claim_owner():
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    ch = children_through(body, "ingest", "Running")
    p = plan(body, ch, SETTINGS, NOW)
    so = [a for a in p.actions if a.verb == "set-owners"]
    assert so and so[0].owners[0]["uid"] == UID
    ch.claims[0]["owners"] = so[0].owners
    ch.claims[0]["owner"] = UID
    assert not [a for a in plan(body, ch, SETTINGS, NOW).actions if a.verb == "set-owners"]
    retain = efr()
    p = plan(retain, ch, SETTINGS, NOW)
    assert [a.owners for a in p.actions if a.verb == "set-owners"] == [[]]


def test_plan_existing_claim_and_foreign_children():
    body = efr({"workspace": {"existingClaim": "shared"}})
    p = plan(body, Children(), SETTINGS, NOW)
    assert ("create", "PersistentVolumeClaim") not in kinds(p)
    vols = p.actions[-1].obj["spec"]["template"]["spec"]["volumes"]
    assert vols[0]["persistentVolumeClaim"]["claimName"] == "shared"
    ch = Children(configmaps=[{"name": "demo-spec", "uid": "x", "owner": "another", "hash": "h", "deleting": False}])
    p = plan(efr(), ch, SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "PersistentVolumeClaim")]  # no Job while a child conflicts
    assert cond(p.status, "Progressing")["reason"] == "ChildConflict" and p.requeue_after


def test_plan_updates_the_spec_configmap_when_the_spec_changes():
    body = efr()
    ch = children_through(body, "ingest", "Running")
    new = efr({"serving": {"replicas": 1, "port": 8080}}, generation=2)
    assert ("update", "ConfigMap") in kinds(plan(new, ch, SETTINGS, NOW))
    assert ("update", "ConfigMap") not in kinds(plan(body, ch, SETTINGS, NOW))


def test_plan_invalid_spec():
    body = efr({"chunking": 1})
    p = plan(body, Children(), SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Failed"
    assert cond(p.status, "Failed")["reason"] == "InvalidSpec" and "spec.chunking" in p.status["message"]


def test_plan_ignores_jobs_being_deleted_and_other_owners():
    body = efr()
    ch = children_through(body, "ingest")
    ch.jobs[0] = {**ch.jobs[0], "owner": "someone-else"}
    p = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]
    ch = children_through(body, "ingest")
    p = plan(body, ch, SETTINGS, NOW, ignored_uids={ch.jobs[0]["uid"]})
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]


def test_transition_events_only_on_changes():
    body = efr()
    p = plan(body, children_through(body, "ingest", "Running"), SETTINGS, NOW)
    assert transition_events(p.status, p.status) == []
    later = copy.deepcopy(p.status)
    later["stages"][0]["phase"] = "Succeeded"
    assert [e[1] for e in transition_events(p.status, later)] == ["StageSucceeded"]


def test_multi_node_plan_creates_rendezvous_service_first():
    body = efr({"training": {"nodes": 2}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    p = plan(body, children_through(body, "prepare"), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Service"), ("create", "Job")]
    assert p.actions[0].obj["metadata"]["name"] == p.actions[1].obj["spec"]["template"]["spec"]["subdomain"]
    rwo = efr({"training": {"nodes": 2}})
    p = plan(rwo, children_through(rwo, "prepare"), SETTINGS, NOW)
    assert kinds(p, "create") == [] and p.status["phase"] == "Blocked"
    assert cond(p.status, "Progressing")["reason"] == "ReadWriteOnceMultiNode"



def test_plan_says_when_a_stage_pod_cannot_be_scheduled():
    """A GPU stage on a cluster without GPUs: the scheduler's reason in status and one Warning Event."""
    body = efr()
    ch = children_through(body, "prepare", "Running")
    job = next(j for j in ch.jobs if j["stage"] == "prepare")
    pending = summarize_pod({"metadata": {"name": "p", "labels": {b.JOB_NAME_LABEL: job["name"]}},
                             "status": {"phase": "Pending", "conditions": [
                                 {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}})
    ch.pods[job["name"]] = [pending]
    p = plan(body, ch, SETTINGS, NOW)
    prog = cond(p.status, "Progressing")
    assert prog["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in prog["message"]
    assert "training.gpusPerNode" in p.status["message"]
    assert [e for e in p.events if e[1] == "Unschedulable"]
    again = plan({**body, "status": p.status}, ch, SETTINGS, NOW)
    assert not [e for e in again.events if e[1] == "Unschedulable"]  # once, not every reconcile


def test_plan_replicas_zero_is_complete_but_not_ready():
    """serving.replicas 0: the Deployment exists and is rolled out, but no pod answers: never Ready."""
    body = efr({"serving": {"replicas": 0}})
    p = plan(body, _serving_children(body, _dep_summary(body, ready=0)), SETTINGS, NOW)
    ready = cond(p.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ScaledToZero"
    assert p.status["phase"] == "Succeeded" and "serving.replicas 0" in p.status["message"]
    assert cond(p.status, "Succeeded")["status"] == "True"
