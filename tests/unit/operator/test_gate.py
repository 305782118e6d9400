"""The quality gate and metrics of the current run, from the evaluate pod's termination message."""


from __future__ import annotations

from datetime import datetime, timedelta, timezone

from eft.controller import builders as b
from eft.controller.gate import gate_message, quality_gate
from eft.controller.plan import plan
from eft.stage_reports import EvaluateReport
from tests.unit.operator.factories import (
    EVAL_BAD,
    EVAL_OK,
    EVAL_OVERRIDDEN,
    NOW,
    SETTINGS,
    children_through,
    cond,
    efr,
    kinds,
)


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


def _evaluate(phase="Succeeded", message=None, completion="2025-01-01T11:30:00Z"):
    e = {"name": "evaluate", "job": "demo-evaluate-x", "phase": phase, "completionTime": completion}
    return {**e, "message": message} if message is not None else e


def test_quality_gate_outcomes():
    g = quality_gate(_evaluate("Running"), SETTINGS, NOW)
    assert (g.condition.status, g.condition.reason) == ("Unknown", "NotEvaluated")
    assert g.metrics is None and not g.blocks_shipping and not g.waiting_for_metrics
    g = quality_gate(_evaluate(message=EVAL_BAD), SETTINGS, NOW)
    assert (g.condition.status, g.condition.reason) == ("False", "BelowThreshold") and g.blocks_shipping
    assert g.metrics["tunedNdcg10"] == 0.30
    g = quality_gate(_evaluate(message=EVAL_OVERRIDDEN), SETTINGS, NOW)
    assert g.condition.reason == "Overridden" and not g.blocks_shipping
    assert g.condition.message.endswith("; shipped anyway (gate.override)")
    g = quality_gate(_evaluate(message=EVAL_OK), SETTINGS, NOW)
    assert g.condition.is_true and g.condition.message == \
        "ndcg@10 on test: base 0.4100, tuned 0.5200 (+26.8%, required >= +0.0%)"
    # a synthetic split the gate does not accept as evidence: not below the threshold, and the condition says why
    unverifiable = EvaluateReport(base_ndcg10=0.41, tuned_ndcg10=0.52, gate="failed", gate_metric="ndcg@10",
                                  gate_dataset="test", relative_improvement=0.268293, required=0.0,
                                  gate_reason="offlineQuestionsOnly").line()
    g = quality_gate(_evaluate(message=unverifiable), SETTINGS, NOW)
    assert (g.condition.status, g.condition.reason) == ("False", "Unverifiable") and g.blocks_shipping
    assert g.condition.message.startswith("ndcg@10 on test: base 0.4100, tuned 0.5200 (+26.8%, required >= +0.0%); "
                                          "not accepted as evidence: every synthetic test question was cut")
    assert g.metrics["gateReason"] == "offlineQuestionsOnly"
    g = quality_gate(_evaluate(message=unverifiable.replace('"failed"', '"overridden"')), SETTINGS, NOW)
    assert g.condition.reason == "Overridden" and not g.blocks_shipping and "not accepted as evidence" in g.condition.message
    # a message that is not a report: the gate outcome is unavailable, at once
    g = quality_gate(_evaluate(message="evaluate: up to date"), SETTINGS, NOW)
    assert g.condition.reason == "MetricsUnavailable" and not g.waiting_for_metrics


def test_quality_gate_waits_for_the_message_within_the_grace_period():
    grace = timedelta(seconds=SETTINGS.metrics_grace_seconds)
    done_at = datetime(2025, 1, 1, 11, 30, tzinfo=timezone.utc)
    early = quality_gate(_evaluate(message=None), SETTINGS, done_at + grace / 2)
    assert early.waiting_for_metrics and early.condition.reason == "WaitingForMetrics"
    late = quality_gate(_evaluate(message=None), SETTINGS, done_at + grace * 2)
    assert not late.waiting_for_metrics and late.condition.reason == "MetricsUnavailable"
    # without a completion time there is nothing to count from: keep waiting
    assert quality_gate(_evaluate(message=None, completion=None), SETTINGS, done_at + grace * 9).waiting_for_metrics


def test_gate_message_uses_the_gates_own_metric():
    r = EvaluateReport(gate="passed", gate_metric="recall@10", gate_dataset="dev", gate_base=0.5, gate_tuned=0.6,
                       base_ndcg10=0.1, tuned_ndcg10=0.2)
    assert gate_message(r).startswith("recall@10 on dev: base 0.5000, tuned 0.6000")
    bare = EvaluateReport(gate="failed", gate_metric="ndcg@10", gate_dataset="test")
    assert gate_message(bare) == "gate failed on ndcg@10 (test)"
