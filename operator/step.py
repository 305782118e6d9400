"""Where the pipeline stands after a reconcile: status.phase, its message and the conditions that follow."""

from __future__ import annotations

from dataclasses import dataclass

from eft.controller.conditions import NO_FAILURE, NOT_QUEUED, Condition


@dataclass(frozen=True)
class Step:
    phase: str
    message: str
    progressing: Condition
    failed: Condition = NO_FAILURE
    queued: Condition = NOT_QUEUED
    requeue: float | None = None  # reconcile again after this many seconds, even without an event
