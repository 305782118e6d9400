"""The status document the operator writes: phase, stages, metrics, serving and the conditions.

A condition's lastTransitionTime moves only when its status flips, so writing the same decision again
changes nothing (the controller skips the PATCH when the document is unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from eft.controller.conditions import CONDITION_TYPES, Condition

MESSAGE_MAX = 1024


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def trim(msg: str | None) -> str | None:
    """One line of at most MESSAGE_MAX characters (termination messages can be multi-line and long)."""
    if msg is None:
        return None
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= MESSAGE_MAX else msg[: MESSAGE_MAX - 3] + "..."


def condition_entries(conditions: Iterable[Condition], old: dict[str, Any], generation: int,
                      now: str) -> list[dict[str, Any]]:
    """status.conditions: one entry per type, in CONDITION_TYPES order."""
    conditions = list(conditions)
    types = sorted(c.type.value for c in conditions)
    if types != sorted(CONDITION_TYPES):
        raise ValueError(f"status needs exactly one condition of each type {CONDITION_TYPES}, got {types}")
    by_type = {c.type.value: c for c in conditions}
    previous = {c.get("type"): c for c in old.get("conditions") or []}
    return [_entry(by_type[t], previous.get(t), generation, now) for t in CONDITION_TYPES]


def _entry(cond: Condition, prev: dict[str, Any] | None, generation: int, now: str) -> dict[str, Any]:
    unchanged = prev is not None and prev.get("status") == cond.status and prev.get("lastTransitionTime")
    return {"type": cond.type.value, "status": cond.status, "reason": cond.reason,
            "message": trim(cond.message) or "", "lastTransitionTime": prev["lastTransitionTime"] if unchanged else now,
            "observedGeneration": generation}


def build_status(old: dict[str, Any], generation: int, now: str, *, phase: str, stage: str | None, message: str,
                 stages: list[dict[str, Any]], metrics: dict[str, Any] | None, endpoint: str | None,
                 digest: str | None, conditions: Iterable[Condition]) -> dict[str, Any]:
    out: dict[str, Any] = {"observedGeneration": generation, "phase": phase}
    if stage:
        out["stage"] = stage
    if message:
        out["message"] = trim(message)
    out["stages"] = stages
    if metrics:
        out["metrics"] = metrics
    if endpoint:
        out["endpoint"] = endpoint
    if digest:
        out["modelDigest"] = digest
    out["conditions"] = condition_entries(conditions, old, generation, now)
    return out
