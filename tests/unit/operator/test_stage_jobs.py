"""The stage Jobs of a reconcile: superseded runs go, the current stage is reported, held or started."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.children import summarize_pod
from eft.controller.plan import plan
from eft.controller.stage_jobs import forced_by_retrain
from eft.spec import STAGES
from tests.unit.operator.factories import (
    NOW,
    SETTINGS,
    UID,
    children_through,
    cond,
    deployment_summary,
    efr,
    job,
    kinds,
    serving_children,
)


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
    done = serving_children(body, deployment_summary(body, ready=1))
    rt = efr(annotations={b.RETRAIN_ANNOTATION: "2025-01-01", b.RETRAIN_FROM_ANNOTATION: "train"})
    p = plan(rt, done, SETTINGS, NOW)
    jobs = [a.obj for a in p.actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["train"]
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--force"
    rt2 = efr(annotations={b.RETRAIN_ANNOTATION: "x"})
    jobs = [a.obj for a in plan(rt2, done, SETTINGS, NOW).actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["ingest"]


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


def test_plan_says_when_a_stage_container_cannot_start():
    """A Secret the spec names that is not in the namespace (another namespace's is unreachable by design): the
    kubelet's words in status and one Warning Event, instead of a stage that looks like it runs."""
    body = efr({"sdg": {"backend": "openai", "openai": {"apiKeySecret": {"name": "llm", "key": "key"}}}})
    ch = children_through(body, "sdg", "Running")
    job = next(j for j in ch.jobs if j["stage"] == "sdg")
    waiting = {"name": "stage", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                      "message": 'secret "llm" not found'}}}
    pod = summarize_pod({"metadata": {"name": "p", "labels": {b.JOB_NAME_LABEL: job["name"]}},
                         "status": {"phase": "Pending", "containerStatuses": [waiting]}})
    assert pod["stuck"] == 'CreateContainerConfigError: secret "llm" not found'
    ch.pods[job["name"]] = [pod]
    p = plan(body, ch, SETTINGS, NOW)
    prog = cond(p.status, "Progressing")
    assert prog["reason"] == "ContainerCannotStart" and 'secret "llm" not found' in prog["message"]
    assert [e for e in p.events if e[1] == "ContainerCannotStart"]
    again = plan({**body, "status": p.status}, ch, SETTINGS, NOW)
    assert not [e for e in again.events if e[1] == "ContainerCannotStart"]
    # a container merely pulling or creating is not stuck
    creating = {"name": "stage", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert summarize_pod({"metadata": {"name": "p"}, "status": {"phase": "Pending",
                                                                "containerStatuses": [creating]}})["stuck"] is None


def test_forced_by_retrain_names_one_stage():
    assert not any(forced_by_retrain({}, s) for s in STAGES)
    assert [s for s in STAGES if forced_by_retrain({b.RETRAIN_ANNOTATION: "t"}, s)] == ["ingest"]
    ann = {b.RETRAIN_ANNOTATION: "t", b.RETRAIN_FROM_ANNOTATION: "evaluate"}
    assert [s for s in STAGES if forced_by_retrain(ann, s)] == ["evaluate"]
    bogus = {b.RETRAIN_ANNOTATION: "t", b.RETRAIN_FROM_ANNOTATION: "nonsense"}
    assert [s for s in STAGES if forced_by_retrain(bogus, s)] == ["ingest"]
    assert not forced_by_retrain({b.RETRAIN_FROM_ANNOTATION: "train"}, "train")  # no token, no retrain


def test_finished_superseded_jobs_stay_until_their_stage_reruns():
    """`kubectl logs` of the last run keeps working: an old Job goes when its stage re-runs, or at the end."""
    body = efr()
    ch = children_through(body, "prepare", "Running")
    old_eval = job(body, "evaluate", "Succeeded", fp="0ld0ld00")
    ch.jobs.append(old_eval)
    assert old_eval["name"] not in {a.name for a in plan(body, ch, SETTINGS, NOW).actions}
    done = children_through(body, "export")
    done.jobs.append(old_eval)
    assert ("delete", "Job", old_eval["name"]) in [(a.verb, a.kind, a.name) for a in
                                                   plan(body, done, SETTINGS, NOW).actions]


def test_rendezvous_services_of_other_runs_are_deleted():
    body = efr({"training": {"nodes": 2}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    ch = children_through(body, "train", "Running")
    mine = b.rendezvous_service_name(next(j["name"] for j in ch.jobs if j["stage"] == "train"))
    ch.services = [{"name": n, "uid": n, "owner": owner, "component": "rendezvous", "deleting": False}
                   for n, owner in ((mine, UID), ("demo-train-0ld0ld00", UID), ("someone-elses", "x"))]
    assert [(a.verb, a.name) for a in plan(body, ch, SETTINGS, NOW).actions if a.kind == "Service"] == [
        ("delete", "demo-train-0ld0ld00")]
