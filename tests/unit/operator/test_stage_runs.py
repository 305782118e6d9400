"""The run the spec asks for and how far it got: status.stages entries from the Jobs and their pods."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.plan import plan
from eft.controller.stage_runs import stage_entry, stage_message, stage_run
from eft.spec import STAGES
from tests.unit.operator.factories import NOW, SETTINGS, children_through, efr, job, parsed, pod


def test_plan_never_reruns_a_finished_stage_whose_job_is_gone():
    body = efr()
    p = plan(body, children_through(body, "prepare"), SETTINGS, NOW)
    body["status"] = p.status
    ch = children_through(body, "prepare")
    ch.jobs = [j for j in ch.jobs if j["stage"] != "ingest"]  # e.g. deleted by someone
    p2 = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p2.actions if a.kind == "Job"] == ["train"]
    assert p2.status["stages"][0]["phase"] == "Succeeded"


def test_plan_failed_stage_without_message_uses_job_condition():
    body = efr()
    ch = children_through(body, "sdg", "Failed")
    ch.pods = {}
    p = plan(body, ch, SETTINGS, NOW)
    assert "BackoffLimitExceeded" in p.status["stages"][1]["message"]


def test_plan_ignores_jobs_being_deleted_and_other_owners():
    body = efr()
    ch = children_through(body, "ingest")
    ch.jobs[0] = {**ch.jobs[0], "owner": "someone-else"}
    p = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]
    ch = children_through(body, "ingest")
    p = plan(body, ch, SETTINGS, NOW, ignored_uids={ch.jobs[0]["uid"]})
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]


def test_stage_run_names_the_jobs_and_finds_the_current_stage():
    body = efr()
    run = stage_run(body, parsed(body), children_through(body, "train", "Running"))
    assert list(run.wanted) == list(STAGES) and run.current == "train"
    assert all(run.wanted[s] == b.job_name("demo", s, run.fingerprints[s]) for s in STAGES)
    assert [e["phase"] for e in run.stages] == ["Succeeded"] * 3 + ["Running", "Pending", "Pending"]
    done = stage_run(body, parsed(body), children_through(body, "export"))
    assert done.current is None
    assert stage_run(body, parsed(body), Children()).current == "ingest"


def test_stage_entry_from_the_job_and_from_what_status_remembers():
    body = efr()
    j = {**job(body, "train", "Failed", failed=2), "active": 1}
    e = stage_entry("train", j["name"], j, [pod(j, "Failed", "boom\n  twice")], None)
    assert e == {"name": "train", "job": j["name"], "phase": "Failed", "attempts": 3,
                 "startTime": "2025-01-01T11:00:00Z", "completionTime": "2025-01-01T11:30:00Z",
                 "message": "boom twice"}
    running = job(body, "train", "Running")
    assert "completionTime" not in stage_entry("train", running["name"], running, [], None)
    # the pod that wrote the message is gone: the message written before (same Job, same phase) stays
    done = job(body, "train")
    prev = {"name": "train", "job": done["name"], "phase": "Succeeded", "message": "train: 3 epochs"}
    assert stage_entry("train", done["name"], done, [], prev)["message"] == "train: 3 epochs"
    assert "message" not in stage_entry("train", done["name"], done, [], {**prev, "phase": "Running"})
    # no Job: Pending, unless status remembers it succeeded
    assert stage_entry("train", done["name"], None, [], None) == {"name": "train", "job": done["name"],
                                                                   "phase": "Pending"}
    assert stage_entry("train", done["name"], None, [], prev) == prev
    assert stage_entry("train", done["name"], None, [], {**prev, "phase": "Failed"})["phase"] == "Pending"


def test_stage_message_is_the_last_pods_termination_message():
    body = efr()
    failed = job(body, "train", "Failed")
    first = {**pod(failed, "Failed", "first try"), "name": "a", "finishedAt": "2025-01-01T11:10:00Z"}
    last = {**pod(failed, "Failed", "second try"), "name": "b", "finishedAt": "2025-01-01T11:20:00Z"}
    assert stage_message(failed, [last, first]) == "second try"
    assert stage_message(failed, [pod(failed, "Succeeded", "other phase")]) == \
        "BackoffLimitExceeded Job has reached the specified backoff limit"
    assert stage_message(job(body, "train"), []) is None
    assert stage_message(job(body, "train", "Running"), [pod(failed, "Running", "x")]) is None
