"""The status document: its fields, condition entries and lastTransitionTime, trimmed messages."""


from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from eft.controller.conditions import CONDITION_TYPES, Condition, ConditionType
from eft.controller.status import MESSAGE_MAX, build_status, condition_entries, iso, trim

T = ConditionType


def _conditions(ready="False"):
    return [Condition(t, ready if t == T.READY else "False", f"{t.value}Reason", f"{t.value} message")
            for t in reversed(ConditionType)]  # any order in, CONDITION_TYPES order out


def test_condition_entries_are_in_order_and_keep_their_transition_time():
    first = condition_entries(_conditions(), {}, 3, "t1")
    assert [c["type"] for c in first] == list(CONDITION_TYPES)
    assert first[-1] == {"type": "Ready", "status": "False", "reason": "ReadyReason", "message": "Ready message",
                         "lastTransitionTime": "t1", "observedGeneration": 3}
    assert json.dumps(first[-1]) == ('{"type": "Ready", "status": "False", "reason": "ReadyReason", "message": '
                                     '"Ready message", "lastTransitionTime": "t1", "observedGeneration": 3}')
    later = condition_entries(_conditions(ready="True"), {"conditions": first}, 4, "t2")
    times = {c["type"]: c["lastTransitionTime"] for c in later}
    assert times.pop("Ready") == "t2" and set(times.values()) == {"t1"}  # only the flipped one moves


def test_condition_entries_need_each_type_once():
    with pytest.raises(ValueError, match="exactly one condition of each type"):
        condition_entries(_conditions()[1:], {}, 1, "t")
    with pytest.raises(ValueError):
        condition_entries(_conditions() + [Condition(T.READY, "True", "R", "m")], {}, 1, "t")


def test_build_status_writes_only_what_is_known():
    st = build_status({}, 1, "t", phase="Running", stage=None, message="", stages=[], metrics=None, endpoint=None,
                      digest=None, conditions=_conditions())
    assert list(st) == ["observedGeneration", "phase", "stages", "conditions"]
    full = build_status({}, 2, "t", phase="Serving", stage="serving", message="line one\n  line two", stages=[{}],
                        metrics={"gate": "passed"}, endpoint="http://e", digest="sha256:d", conditions=_conditions())
    assert list(full) == ["observedGeneration", "phase", "stage", "message", "stages", "metrics", "endpoint",
                          "modelDigest", "conditions"]
    assert full["message"] == "line one line two"


def test_trim_and_iso():
    assert trim(None) is None and trim("a\n b") == "a b"
    long = trim("x" * 5000)
    assert len(long) == MESSAGE_MAX and long.endswith("...")
    assert iso(datetime(2025, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))) == "2025-01-01T12:00:00Z"
