"""Serving: the Deployment and Service of the exported model, and the Ready condition."""


from __future__ import annotations

from datetime import timedelta

from eft.controller import builders as b
from eft.controller.actions import Changes
from eft.controller.plan import plan
from eft.controller.serving import rolled_out, serving_during_run
from tests.unit.operator.factories import (
    EVAL_OK,
    NOW,
    SETTINGS,
    UID,
    children_through,
    cond,
    deployment_summary,
    efr,
    kinds,
    model_digest_of,
    parsed,
    serving_children,
)


def test_plan_deploys_after_export_and_reports_ready():
    body = efr()
    p = plan(body, children_through(body, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert kinds(p) == [("create", "Service"), ("create", "Deployment")]
    assert p.status["phase"] == "Deploying" and cond(p.status, "Ready")["status"] == "False"
    assert p.status["endpoint"] == "http://demo-serve.ns.svc:8000"
    body["status"] = p.status
    p2 = plan(body, serving_children(body, deployment_summary(body, ready=1)), SETTINGS, NOW + timedelta(seconds=5))
    assert p2.actions == []
    assert p2.status["phase"] == "Serving" and cond(p2.status, "Ready")["status"] == "True"
    assert cond(p2.status, "Succeeded")["status"] == "True"
    assert p2.status["stage"] == "serving" and p2.status["modelDigest"] == model_digest_of(body)
    assert any(e[1] == "Ready" for e in p2.events)
    # lastTransitionTime only moves on flips
    p3 = plan({**body, "status": p2.status}, serving_children(body, deployment_summary(body, ready=1)), SETTINGS,
              NOW + timedelta(minutes=5))
    assert p3.status == p2.status and p3.events == []


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
    ch = serving_children(body, deployment_summary(efr(), ready=1))
    p = plan(body, ch, SETTINGS, NOW)
    assert sorted(kinds(p, "delete")) == [("delete", "Deployment"), ("delete", "Service")]
    assert p.status["phase"] == "Succeeded" and cond(p.status, "Ready")["reason"] == "ServingDisabled"
    assert "endpoint" not in p.status


def test_plan_replicas_zero_is_complete_but_not_ready():
    """serving.replicas 0: the Deployment exists and is rolled out, but no pod answers: never Ready."""
    body = efr({"serving": {"replicas": 0}})
    p = plan(body, serving_children(body, deployment_summary(body, ready=0)), SETTINGS, NOW)
    ready = cond(p.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ScaledToZero"
    assert p.status["phase"] == "Succeeded" and "serving.replicas 0" in p.status["message"]
    assert cond(p.status, "Succeeded")["status"] == "True"


def test_rolled_out_needs_the_desired_template_on_every_replica():
    body = efr({"serving": {"replicas": 2}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    desired = b.build_serving_deployment(body, parsed(body), SETTINGS, model_digest_of(body))
    dep = deployment_summary(body, ready=2)
    assert rolled_out(dep, desired, 2)
    assert not rolled_out(None, desired, 2)
    for field, value in (("hash", "other"), ("observedGeneration", 0), ("updated", 1), ("ready", 1),
                         ("available", 1), ("statusReplicas", 3)):
        assert not rolled_out({**dep, field: value}, desired, 2), field


def test_a_foreign_serving_deployment_blocks_the_rollout():
    body = efr()
    ch = serving_children(body, {**deployment_summary(body, ready=1), "owner": "another"})
    p = plan(body, ch, SETTINGS, NOW)
    assert not any(a.kind == "Deployment" for a in p.actions)
    assert p.status["phase"] == "Blocked" and cond(p.status, "Ready")["reason"] == "ChildConflict"
    assert "Deployment demo-serve exists but is not owned" in p.status["message"] and p.requeue_after == 10.0
    assert "modelDigest" not in p.status


def test_serving_during_a_run_keeps_the_previous_model():
    body = efr()
    ch = serving_children(body, deployment_summary(body, ready=1, digest="sha256:old"))
    s = serving_during_run(Changes(UID), body, parsed(body), ch)
    assert (s.ready.status, s.ready.reason) == ("False", "ServingPreviousModel") and "sha256:old" in s.ready.message
    assert s.digest == "sha256:old" and s.endpoint == "http://demo-serve.ns.svc:8000"
    nothing = children_through(body, "train", "Running")
    s = serving_during_run(Changes(UID), body, parsed(body), nothing)
    assert (s.ready.reason, s.endpoint, s.digest) == ("NotDeployed", None, None)
    off = efr({"serving": {"enabled": False}})
    s = serving_during_run(Changes(UID), off, parsed(off), ch)
    assert s.ready.reason == "ServingPreviousModel" and s.endpoint is None  # a disabled endpoint is not shown
    assert serving_during_run(Changes(UID), off, parsed(off), nothing).ready.reason == "ServingDisabled"
