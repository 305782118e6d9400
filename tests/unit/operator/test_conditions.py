"""Conditions as typed values: the types the operator writes, in the order it writes them."""


from __future__ import annotations

import dataclasses

import pytest

from eft.controller.conditions import CONDITION_TYPES, NO_FAILURE, NOT_QUEUED, Condition, ConditionType


def test_condition_types_are_the_documented_ones_in_order():
    assert CONDITION_TYPES == ("Progressing", "Succeeded", "Failed", "QualityGatePassed", "Queued", "Ready")
    assert all(type(t) is str for t in CONDITION_TYPES)  # plain strings in the API's JSON
    assert [t.value for t in ConditionType] == list(CONDITION_TYPES)


def test_condition_is_a_frozen_value():
    c = Condition(ConditionType.READY, "True", "ModelServing", "serving")
    assert c == Condition(ConditionType.READY, "True", "ModelServing", "serving") and c.is_true
    assert not Condition(ConditionType.READY, "Unknown", "X", "").is_true
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.status = "False"  # type: ignore[misc]
    assert (NO_FAILURE.type, NO_FAILURE.status) == (ConditionType.FAILED, "False")
    assert (NOT_QUEUED.type, NOT_QUEUED.status) == (ConditionType.QUEUED, "False")
