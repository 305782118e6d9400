"""Events of a reconcile: one per transition between the status written last and the new one."""

from __future__ import annotations

from typing import Any, NamedTuple

from eft.controller.conditions import ConditionType

# a finished (or stopped) pipeline that starts running again re-runs from some stage
_AT_REST = ("Serving", "Succeeded", "Deploying", "Blocked", "Failed")


class Event(NamedTuple):
    type: str  # Normal | Warning
    reason: str
    message: str


def transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """One Event per transition between the status the operator wrote last and the new one."""
    return [*_stage_events(old, new), *_phase_events(old, new), *_condition_events(old, new)]


def _stage_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    old_stages = {e.get("name"): e for e in old.get("stages") or []}
    for e in new.get("stages") or []:
        o = old_stages.get(e["name"]) or {}
        before = o.get("phase") if o.get("job") == e.get("job") else None
        event = _stage_event(e) if e.get("phase") != before else None
        if event is not None:
            events.append(event)
    return events


def _stage_event(entry: dict[str, Any]) -> Event | None:
    s, job, phase = entry["name"], entry.get("job"), entry.get("phase")
    detail = f": {entry['message']}" if entry.get("message") else ""
    if phase == "Running":
        return Event("Normal", "StageStarted", f"stage {s} started (Job {job})")
    if phase == "Queued":
        return Event("Normal", "StageQueued", f"stage {s}: Job {job} is waiting for admission (suspended)")
    if phase == "Succeeded":
        return Event("Normal", "StageSucceeded", f"stage {s} succeeded{detail}")
    if phase == "Failed":
        return Event("Warning", "StageFailed", f"stage {s} failed after {entry.get('attempts', 1)} attempt(s){detail}")
    return None  # Pending: nothing happened yet


def _phase_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    old_phase, phase = old.get("phase"), new.get("phase")
    if phase == old_phase:
        return []
    events: list[Event] = []
    stage, message = new.get("stage") or "", new.get("message")
    if phase == "Suspended":
        events.append(Event("Normal", "Suspended", message or f"suspended before stage {stage}"))
    elif old_phase == "Suspended":
        events.append(Event("Normal", "Resumed", f"resumed at stage {stage}"))
    if phase in ("Running", "Queued") and old_phase in _AT_REST:
        events.append(Event("Normal", "Retraining", f"spec or retrain annotation changed: re-running from stage "
                                                    f"{stage}"))
    outcome = _outcome_event(phase, stage, message, _conditions(new))
    return events + ([outcome] if outcome else [])


def _outcome_event(phase: str | None, stage: str, message: str | None,
                   conditions: dict[str, dict[str, Any]]) -> Event | None:
    if phase == "Deploying":
        return Event("Normal", "Deploying", message or "rolling out the model")
    if phase == "Serving":
        return Event("Normal", "Ready", message or "serving")
    if phase == "Succeeded":
        return Event("Normal", "Completed", message or "pipeline complete")
    if phase == "Blocked":
        return Event("Warning", conditions.get(ConditionType.READY, {}).get("reason") or "Blocked", message or "")
    if phase == "Failed":
        reason = conditions.get(ConditionType.FAILED, {}).get("reason")
        if reason in ("InvalidSpec", "QualityGateFailed"):
            return Event("Warning", reason, f"stage {stage}: {message or ''}")
        if reason == "PolicyViolation":
            return Event("Warning", reason, message or "")
    return None


def _condition_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    before, after = _conditions(old), _conditions(new)
    events: list[Event] = []
    p_old, p_new = before.get(ConditionType.PROGRESSING) or {}, after.get(ConditionType.PROGRESSING) or {}
    for reason in ("Unschedulable", "ContainerCannotStart"):
        if p_new.get("reason") == reason and p_old.get("reason") != reason:
            events.append(Event("Warning", reason, p_new.get("message") or ""))
    gate = _gate_event(before.get(ConditionType.QUALITY_GATE_PASSED) or {},
                       after.get(ConditionType.QUALITY_GATE_PASSED) or {})
    return events + ([gate] if gate else [])


def _gate_event(old: dict[str, Any], new: dict[str, Any]) -> Event | None:
    if (new.get("status"), new.get("reason")) == (old.get("status"), old.get("reason")):
        return None
    message = f"stage evaluate: {new.get('message')}"
    if new.get("status") == "True":
        return Event("Normal", "QualityGatePassed", message)
    if new.get("reason") == "Overridden":
        return Event("Warning", "QualityGateOverridden", message)
    if new.get("reason") == "MetricsUnavailable":
        return Event("Warning", "MetricsUnavailable", message)
    return None


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in status.get("conditions") or []}
