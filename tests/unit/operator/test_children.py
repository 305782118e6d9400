"""Summaries of child objects from the watch caches, and the stage reports they carry."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.children import (
    controller_uid,
    evaluate_report,
    export_digest,
    live,
    summarize_deployment,
    summarize_job,
    summarize_object,
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


def test_summarize_object_and_ownership():
    body = {"metadata": {"name": "demo-spec", "uid": "u", "resourceVersion": "9",
                         "labels": {b.COMPONENT_LABEL: "spec"}, "annotations": {b.HASH_ANNOTATION: "h"},
                         "ownerReferences": [{"uid": "other", "controller": False}, {"uid": UID, "controller": True}]}}
    s = summarize_object(body)
    assert s == {"name": "demo-spec", "uid": "u", "owner": UID, "owners": body["metadata"]["ownerReferences"],
                 "hash": "h", "component": "spec", "resourceVersion": "9", "deleting": False}
    assert controller_uid({"ownerReferences": [{"uid": "other"}]}) is None
    assert summarize_object({"metadata": {"name": "x", "deletionTimestamp": "t"}})["deleting"] is True


def test_pod_summary_prefers_the_stage_container_and_reports_unschedulable():
    pb = {"metadata": {"name": "p", "labels": {"job-name": "j"}}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "sidecar", "state": {"terminated": {"exitCode": 2, "message": "sidecar"}}},
        {"name": "stage", "lastState": {"terminated": {"exitCode": 3, "message": "stage said"}}}]}}
    s = summarize_pod(pb)
    assert (s["job"], s["message"], s["exitCode"], s["unschedulable"]) == ("j", "stage said", 3, None)
    pending = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    assert summarize_pod(pending)["unschedulable"] == "unschedulable"


def test_live_skips_objects_being_deleted():
    going, new = {"name": "a", "deleting": True, "uid": 1}, {"name": "a", "deleting": False, "uid": 2}
    assert live([going, new], "a") is new and live([going], "a") is None and live([new], "b") is None
