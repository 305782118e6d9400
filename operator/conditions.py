"""Status conditions as typed values; status.py renders them the way the API shows them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """Every condition the operator writes; status.conditions lists them in this order."""

    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    QUALITY_GATE_PASSED = "QualityGatePassed"
    QUEUED = "Queued"
    READY = "Ready"


CONDITION_TYPES: tuple[str, ...] = tuple(t.value for t in ConditionType)


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str

    @property
    def is_true(self) -> bool:
        return self.status == "True"


NO_FAILURE = Condition(ConditionType.FAILED, "False", "NoFailure", "no stage failed")
NOT_QUEUED = Condition(ConditionType.QUEUED, "False", "NotQueued", "no Job is waiting for admission")
