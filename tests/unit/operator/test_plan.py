"""The reconcile decision as a whole: plan(resource, children, settings, now), phase by phase."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.conditions import CONDITION_TYPES
from eft.controller.plan import plan
from tests.unit.operator.factories import (
    EVAL_OK,
    NOW,
    SETTINGS,
    children_through,
    cond,
    deployment_summary,
    efr,
    kinds,
    model_digest_of,
    serving_children,
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


def test_plan_invalid_spec():
    body = efr({"chunking": 1})
    p = plan(body, Children(), SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Failed"
    assert cond(p.status, "Failed")["reason"] == "InvalidSpec" and "spec.chunking" in p.status["message"]


def test_plan_retrain_rolls_the_deployment_to_the_new_model():
    body = efr()
    served = plan(body, serving_children(body, deployment_summary(body, ready=1)), SETTINGS, NOW).status
    new = efr({"training": {"epochs": 5}}, status=served, generation=2)
    old_children = serving_children(body, deployment_summary(body, ready=1))
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


def test_plan_keeps_the_status_of_an_invalid_spec_and_touches_no_child():
    """A spec edited into an invalid one: the stages, endpoint and digest written before stay; nothing is deleted."""
    body = efr()
    served = plan(body, serving_children(body, deployment_summary(body, ready=1)), SETTINGS, NOW).status
    broken = efr({"chunking": 1}, status=served, generation=2)
    p = plan(broken, serving_children(body, deployment_summary(body, ready=1)), SETTINGS, NOW)
    assert p.actions == [] and p.requeue_after is None
    st = p.status
    assert st["stages"] == served["stages"] and st["endpoint"] == served["endpoint"]
    assert st["modelDigest"] == served["modelDigest"] and st["stage"] == served["stage"]
    assert [c["type"] for c in st["conditions"]] == list(CONDITION_TYPES)
    assert {c["reason"] for c in st["conditions"] if c["type"] != "QualityGatePassed" and c["type"] != "Queued"} \
        == {"InvalidSpec"}
    assert all(c["observedGeneration"] == 2 for c in st["conditions"]) and st["observedGeneration"] == 2
    assert [e[1] for e in p.events if e[0] == "Warning"] == ["InvalidSpec"]


def test_plan_applies_in_a_fixed_order_and_is_stable():
    """Children first (infrastructure), then superseded Jobs, then the next stage; the same inputs give the
    same plan, and a plan applied (its status written back) raises no Event twice."""
    body = efr({"training": {"epochs": 5}}, generation=2)
    old = efr()
    ch = children_through(old, "train")  # ingest..prepare unchanged, the old train run superseded
    ch.configmaps[0]["hash"] = "stale"
    p = plan(body, ch, SETTINGS, NOW)
    assert kinds(p) == [("update", "ConfigMap"), ("delete", "Job"), ("create", "Job")]
    assert plan(body, ch, SETTINGS, NOW) == p
    again = plan({**body, "status": p.status}, ch, SETTINGS, NOW)
    assert again.status == p.status and again.events == []


def test_plan_reports_every_phase_with_all_conditions_in_order():
    body = efr()
    for upto, state in (("ingest", "Running"), ("train", "Queued"), ("train", "Failed"), ("export", "Succeeded")):
        p = plan(body, children_through(body, upto, state, messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
        assert [c["type"] for c in p.status["conditions"]] == list(CONDITION_TYPES), (upto, state)
        assert set(p.status) <= {"observedGeneration", "phase", "stage", "message", "stages", "metrics", "endpoint",
                                 "modelDigest", "conditions"}
