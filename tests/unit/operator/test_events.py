"""Events: one per transition between the status written last and the new one."""


from __future__ import annotations

import copy

from eft.controller.events import Event, transition_events
from eft.controller.plan import plan
from tests.unit.operator.factories import NOW, SETTINGS, children_through, efr


def test_transition_events_only_on_changes():
    body = efr()
    p = plan(body, children_through(body, "ingest", "Running"), SETTINGS, NOW)
    assert transition_events(p.status, p.status) == []
    later = copy.deepcopy(p.status)
    later["stages"][0]["phase"] = "Succeeded"
    assert [e[1] for e in transition_events(p.status, later)] == ["StageSucceeded"]


def _status(phase, stages=(), **conditions):
    return {"phase": phase, "stage": "train", "message": f"{phase} message", "stages": list(stages),
            "conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} says"}
                           for t, (s, r) in conditions.items()]}


def test_stage_events_follow_the_job_not_just_the_phase():
    running = {"name": "train", "job": "demo-train-a", "phase": "Running"}
    rerun = {**running, "job": "demo-train-b"}
    assert transition_events(_status("Running", [running]), _status("Running", [rerun])) == [
        Event("Normal", "StageStarted", "stage train started (Job demo-train-b)")]
    failed = {**running, "phase": "Failed", "attempts": 2, "message": "OOM"}
    assert transition_events(_status("Running", [running]), _status("Running", [failed])) == [
        ("Warning", "StageFailed", "stage train failed after 2 attempt(s): OOM")]
    queued = {**running, "phase": "Queued"}
    assert [e.reason for e in transition_events({}, _status("Queued", [queued]))][:1] == ["StageQueued"]
    pending = {**running, "phase": "Pending"}
    assert transition_events(_status("Running", [running]), _status("Running", [pending])) == []


def test_phase_events():
    assert transition_events(_status("Running"), _status("Suspended")) == [
        ("Normal", "Suspended", "Suspended message")]
    assert [e.reason for e in transition_events(_status("Suspended"), _status("Running"))] == ["Resumed"]
    assert [e.reason for e in transition_events(_status("Serving"), _status("Running"))] == ["Retraining"]
    assert [e.reason for e in transition_events(_status("Running"), _status("Deploying"))] == ["Deploying"]
    assert [e.reason for e in transition_events(_status("Deploying"), _status("Serving"))] == ["Ready"]
    assert [e.reason for e in transition_events(_status("Deploying"), _status("Succeeded"))] == ["Completed"]
    blocked = _status("Blocked", Ready=("False", "ReadWriteOnceMultiReplica"))
    assert transition_events(_status("Running"), blocked) == [
        ("Warning", "ReadWriteOnceMultiReplica", "Blocked message")]
    # a failed stage has its own Event (StageFailed); the phase adds one only for spec and gate failures
    assert transition_events(_status("Running"), _status("Failed", Failed=("True", "StageFailed"))) == []
    assert transition_events(_status("Running"), _status("Failed", Failed=("True", "InvalidSpec"))) == [
        ("Warning", "InvalidSpec", "stage train: Failed message")]


def test_condition_events():
    unsched = _status("Running", Progressing=("True", "Unschedulable"))
    assert transition_events(_status("Running"), unsched) == [("Warning", "Unschedulable", "Progressing says")]
    assert transition_events(unsched, unsched) == []
    for (status, reason), want in ((("True", "Passed"), ("Normal", "QualityGatePassed")),
                                   (("False", "Overridden"), ("Warning", "QualityGateOverridden")),
                                   (("Unknown", "MetricsUnavailable"), ("Warning", "MetricsUnavailable"))):
        new = _status("Running", QualityGatePassed=(status, reason))
        assert transition_events(_status("Running"), new) == [(*want, "stage evaluate: QualityGatePassed says")]
    below = _status("Running", QualityGatePassed=("False", "BelowThreshold"))
    assert transition_events(_status("Running"), below) == []  # the Failed phase says it (QualityGateFailed)
