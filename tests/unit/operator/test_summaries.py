"""Summaries of child objects from the watch caches, and the stage reports they carry."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.plan import (
    evaluate_report,
    export_digest,
    summarize_deployment,
    summarize_job,
    summarize_pod,
)

from eft.stage_reports import ExportReport
from tests.unit.operator.factories import EVAL_BAD, EVAL_OK, EVAL_OVERRIDDEN, UID


def test_summaries():
    jb = {"metadata": {"name": "j", "uid": "u", "labels": {b.STAGE_LABEL: "train"},
                       "ownerReferences": [{"uid": UID, "controller": True}]},
          "spec": {"suspend": True}, "status": {}}
    assert summarize_job(jb)["state"] == "Queued" and summarize_job(jb)["owner"] == UID
    jb["spec"]["suspend"] = False
    assert summarize_job(jb)["state"] == "Running"
    jb["status"] = {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                 "lastTransitionTime": "t"}]}
    s = summarize_job(jb)
    assert s["state"] == "Failed" and s["failed"] == 3 and s["completionTime"] == "t"
    jb["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    assert summarize_job(jb)["state"] == "Succeeded"
    pb = {"metadata": {"name": "p", "labels": {b.JOB_NAME_LABEL: "j"}}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "stage", "state": {"terminated": {"exitCode": 1, "message": "train: CUDA OOM\n", "finishedAt": "t"}}}]}}
    assert summarize_pod(pb)["message"] == "train: CUDA OOM" and summarize_pod(pb)["job"] == "j"
    db = {"metadata": {"name": "d", "generation": 2, "annotations": {b.HASH_ANNOTATION: "h"}},
          "spec": {"replicas": 2, "template": {"metadata": {"annotations": {b.DIGEST_ANNOTATION: "dg"}}}},
          "status": {"observedGeneration": 2, "readyReplicas": 2}}
    d = summarize_deployment(db)
    assert d["hash"] == "h" and d["digest"] == "dg" and d["ready"] == 2 and d["updated"] == 0


def test_stage_reports_parse():
    r = evaluate_report(EVAL_OK)
    assert r.tuned_ndcg10 == 0.52 and r.gate == "passed" and not r.blocks_shipping()
    assert evaluate_report(EVAL_BAD).blocks_shipping() and not evaluate_report(EVAL_OVERRIDDEN).blocks_shipping()
    assert evaluate_report("evaluate: up to date") is None
    assert evaluate_report('{"gate": "maybe", "gateMetric": "ndcg@10", "gateDataset": "test"}') is None
    assert evaluate_report('{"gate": "failed"') is None  # truncated
    assert evaluate_report(None) is None
    digest = "sha256:" + "ab" * 32
    assert export_digest(ExportReport(model_digest=digest, variants=["fp32"]).line()) == digest
    assert export_digest("export: done") is None and export_digest('{"modelDigest": "abc"}') is None
