"""The reconcile decision as one pure function: ``plan(resource, children, settings, now) -> Plan``.

Level-based: the next action is computed from the spec, the status the operator wrote before and the
child objects that exist right now (summaries from the operator's watch caches), never from the event
that woke the operator up. Whatever crashed or restarted in between, calling ``plan`` again converges.

Stage runs are identified by *fingerprints*: a stage's fingerprint hashes the spec sections that stage
depends on (eft.stage_defs, hashed by eft.fingerprint) and its upstream stages' fingerprints (plus the retrain
token on the stage a retrain starts from). The Job of a stage is named ``<name>-<stage>-<fingerprint>``, so

* a finished stage is never re-run: its Job exists (or status remembers it) under the wanted name;
* a spec change re-runs exactly the stages whose fingerprint changed (the earliest affected one and
  everything downstream), under new Job names that never collide with the old ones;
* a restarted operator recomputes the same names and finds the Jobs it created (a 409 is adoption).

One reconcile, in order: validate the spec; the platform's defaults and policy (policy_rules.py); the infrastructure (spec ConfigMap, workspace claim); the
stage Jobs (superseded runs, then the current stage); the quality gate; serving; the status and Events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from eft.controller.actions import Action, Changes
from eft.controller.children import Children
from eft.controller.conditions import CONDITION_TYPES, Condition, ConditionType
from eft.controller.events import Event, transition_events
from eft.controller.gate import Gate, quality_gate
from eft.controller.infrastructure import ensure_infrastructure
from eft.controller.policy_rules import policy_violations, with_policy_defaults
from eft.controller.serving import Serving, serve, serving_during_run
from eft.controller.settings import Settings
from eft.controller.stage_jobs import delete_superseded, next_stage
from eft.controller.stage_runs import StageRun, stage_run
from eft.controller.status import build_status, iso
from eft.controller.step import Step
from eft.spec import EmbeddingFinetuneSpec, describe_validation_error

# what other modules import from here: the decision, its inputs and outputs
__all__ = ["CONDITION_TYPES", "Action", "Children", "Plan", "plan"]

T = ConditionType


@dataclass
class Plan:
    actions: list[Action]
    status: dict[str, Any]
    events: list[Event]
    requeue_after: float | None = None


def plan(efr: dict[str, Any], children: Children, settings: Settings, now: datetime,
         ignored_uids: frozenset[str] | set[str] = frozenset()) -> Plan:
    """``ignored_uids``: children this operator deleted that the watch caches still show."""
    try:
        spec = EmbeddingFinetuneSpec.model_validate(efr.get("spec") or {})
    except ValidationError as err:
        return invalid_spec_plan(efr, err, now)
    spec = with_policy_defaults(spec, settings.policy)
    violations = policy_violations(spec, settings.policy)
    if violations:
        return refused_plan(efr, "PolicyViolation", "refused by the platform policy: " + "; ".join(violations), now)
    changes = Changes(uid=efr["metadata"]["uid"])
    ensure_infrastructure(changes, efr, spec, children)
    run = stage_run(efr, spec, children, ignored_uids)
    delete_superseded(changes, run, spec, children)
    gate = quality_gate(run.entries["evaluate"], settings, now)
    if run.current is None:
        step, serving = serve(changes, efr, spec, settings, run, children)
    else:
        step = next_stage(changes, efr, spec, settings, run, gate, children)
        serving = serving_during_run(changes, efr, spec, children)
    old = efr.get("status") or {}
    status = _status(efr, spec, now, run, gate, step, serving)
    return Plan(changes.actions, status, transition_events(old, status), step.requeue)


def _status(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, now: datetime, run: StageRun, gate: Gate, step: Step,
            serving: Serving) -> dict[str, Any]:
    old = efr.get("status") or {}
    stage = run.current or ("serving" if spec.serving.enabled else "export")
    # keep the served model's numbers until the new run's evaluate reports
    metrics = gate.metrics if gate.metrics is not None else old.get("metrics")
    return build_status(old, _generation(efr), iso(now), phase=step.phase, stage=stage, message=step.message,
                        stages=run.stages, metrics=metrics, endpoint=serving.endpoint, digest=serving.digest,
                        conditions=[step.progressing, _succeeded(run, step), step.failed, gate.condition,
                                    step.queued, serving.ready])


def _succeeded(run: StageRun, step: Step) -> Condition:
    if run.current is None:
        return Condition(T.SUCCEEDED, "True", "PipelineCompleted", "every stage succeeded")
    if step.failed.is_true:
        return Condition(T.SUCCEEDED, "False", step.failed.reason, step.failed.message)
    return Condition(T.SUCCEEDED, "False", "InProgress", f"next stage: {run.current}")


def invalid_spec_plan(efr: dict[str, Any], err: ValidationError, now: datetime) -> Plan:
    """An invalid spec: nothing is created or deleted; status says what is wrong and keeps the rest."""
    message = "invalid spec: " + "; ".join(describe_validation_error(err, prefix="spec"))
    return refused_plan(efr, "InvalidSpec", message, now)


def refused_plan(efr: dict[str, Any], reason: str, message: str, now: datetime) -> Plan:
    """A spec the operator will not act on (invalid, or against the platform policy): nothing is created or
    deleted (a model already serving keeps serving); status says why and keeps the rest."""
    old = efr.get("status") or {}
    conditions = [Condition(T.PROGRESSING, "False", reason, message),
                  Condition(T.SUCCEEDED, "False", reason, message),
                  Condition(T.FAILED, "True", reason, message),
                  Condition(T.QUALITY_GATE_PASSED, "Unknown", "NotEvaluated", "the spec was not acted on"),
                  Condition(T.QUEUED, "False", "NotQueued", "no Job is waiting"),
                  Condition(T.READY, "False", reason, message)]
    status = build_status(old, _generation(efr), iso(now), phase="Failed", stage=old.get("stage"), message=message,
                          stages=old.get("stages") or [], metrics=old.get("metrics"), endpoint=old.get("endpoint"),
                          digest=old.get("modelDigest"), conditions=conditions)
    return Plan([], status, transition_events(old, status), None)


def _generation(efr: dict[str, Any]) -> int:
    return efr["metadata"].get("generation") or 1
