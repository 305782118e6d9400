"""The quality gate and metrics of the current run, from the evaluate pod's termination message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eft.controller.children import evaluate_report
from eft.controller.conditions import Condition, ConditionType
from eft.controller.settings import Settings
from eft.stage_reports import EvaluateReport, gate_reason_suffix

_GATE = ConditionType.QUALITY_GATE_PASSED


@dataclass(frozen=True)
class Gate:
    condition: Condition  # QualityGatePassed
    metrics: dict[str, Any] | None  # status.metrics of this run; None until evaluate reports
    blocks_shipping: bool  # the gate failed and was not overridden: nothing is exported or served
    waiting_for_metrics: bool  # evaluate succeeded; its termination message may still show up


def quality_gate(evaluate: dict[str, Any], settings: Settings, now: datetime) -> Gate:
    """The gate as the evaluate stage's status.stages entry tells it."""
    done = evaluate["phase"] == "Succeeded"
    report = evaluate_report(evaluate.get("message")) if done else None
    waiting = done and report is None and not evaluate.get("message") and _within_grace(evaluate, settings, now)
    return Gate(condition=_gate_condition(done, report, waiting),
                metrics=report.metrics() if report is not None else None,
                blocks_shipping=report is not None and report.blocks_shipping(),
                waiting_for_metrics=waiting)


def _within_grace(evaluate: dict[str, Any], settings: Settings, now: datetime) -> bool:
    done_at = _parse_time(evaluate.get("completionTime"))
    return done_at is None or (now - done_at).total_seconds() < settings.metrics_grace_seconds


def _gate_condition(done: bool, report: EvaluateReport | None, waiting: bool) -> Condition:
    if not done:
        return Condition(_GATE, "Unknown", "NotEvaluated", "the evaluate stage of the current run has not finished")
    if report is not None and report.gate == "passed":
        return Condition(_GATE, "True", "Passed", gate_message(report))
    if report is not None and report.gate == "overridden":
        return Condition(_GATE, "False", "Overridden", gate_message(report) + "; shipped anyway (gate.override)")
    if report is not None and report.gate_reason is not None:
        return Condition(_GATE, "False", "Unverifiable", gate_message(report))
    if report is not None:
        return Condition(_GATE, "False", "BelowThreshold", gate_message(report))
    if waiting:
        return Condition(_GATE, "Unknown", "WaitingForMetrics", "waiting for the evaluate pod's termination message")
    return Condition(_GATE, "Unknown", "MetricsUnavailable",
                     "the evaluate stage reported no gate outcome (termination message missing or not JSON)")


def gate_message(r: EvaluateReport) -> str:
    base = r.gate_base if r.gate_base is not None else r.base_ndcg10
    tuned = r.gate_tuned if r.gate_tuned is not None else r.tuned_ndcg10
    if base is None or tuned is None:
        return f"gate {r.gate} on {r.gate_metric} ({r.gate_dataset})"
    change = f" ({r.relative_improvement:+.1%}" if r.relative_improvement is not None else " ("
    required = f", required >= {r.required:+.1%})" if r.required is not None else ")"
    return (f"{r.gate_metric} on {r.gate_dataset}: base {base:.4f}, tuned {tuned:.4f}{change}{required}"
            + gate_reason_suffix(r.gate_reason))


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
