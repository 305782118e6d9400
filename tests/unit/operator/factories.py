"""Builders of the operator's inputs for its unit tests: resources, child summaries, stage reports."""


from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.settings import Settings
from eft.fingerprint import job_fingerprints
from eft.spec import STAGES, EmbeddingFinetuneSpec
from eft.stage_reports import EvaluateReport, ExportReport

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = Settings(image="registry.example/eft:test")
UID = "uid-1"


def efr(spec: dict | None = None, name: str = "demo", status: dict | None = None, annotations=None, generation=1):
    body = {"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune",
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": generation,
                         "annotations": annotations or {}},
            "spec": spec or {}}
    if status is not None:
        body["status"] = status
    return body


def parsed(body) -> EmbeddingFinetuneSpec:
    return EmbeddingFinetuneSpec.model_validate(body["spec"])


def job(body, stage, state="Succeeded", *, fp=None, failed=0, suspended=False, uid=None, completion=None):
    fps = job_fingerprints(parsed(body), (body["metadata"].get("annotations") or {}).get(b.RETRAIN_ANNOTATION),
                             (body["metadata"].get("annotations") or {}).get(b.RETRAIN_FROM_ANNOTATION))
    fp = fp or fps[stage]
    return {"name": b.job_name(body["metadata"]["name"], stage, fp), "uid": uid or f"job-{stage}-{fp}",
            "owner": UID, "stage": stage, "fingerprint": fp, "state": state, "active": 1 if state == "Running" else 0,
            "failed": failed, "succeeded": 1 if state == "Succeeded" else 0, "startTime": "2025-01-01T11:00:00Z",
            "completionTime": completion or ("2025-01-01T11:30:00Z" if state in ("Succeeded", "Failed") else None),
            "reason": "BackoffLimitExceeded" if state == "Failed" else None,
            "conditionMessage": "Job has reached the specified backoff limit" if state == "Failed" else None,
            "deleting": False}


def pod(job_summary, phase="Succeeded", message="ok"):
    return {"name": job_summary["name"] + "-abcde", "job": job_summary["name"], "phase": phase, "message": message,
            "exitCode": 0 if phase == "Succeeded" else 1, "reason": None, "finishedAt": "2025-01-01T11:30:00Z"}


def infra(body):
    """The ConfigMap and workspace claim as they exist after the first reconcile."""
    spec = parsed(body)
    cm = b.build_spec_configmap(body, spec)
    claim = b.build_workspace_claim(body, spec)
    return {
        "configmaps": [{"name": cm["metadata"]["name"], "uid": "cm", "owner": UID, "owners": [],
                        "hash": cm["metadata"]["annotations"][b.HASH_ANNOTATION], "deleting": False}],
        "claims": [{"name": claim["metadata"]["name"], "uid": "pvc", "owner": None, "owners": [],
                    "hash": None, "deleting": False, "resourceVersion": "1"}],
    }


def children_through(body, upto: str, last_state="Succeeded", messages=None, **extra) -> Children:
    messages = messages or {}
    jobs, pods = [], {}
    for s in STAGES:
        state = last_state if s == upto else "Succeeded"
        j = job(body, s, state)
        jobs.append(j)
        if state in ("Succeeded", "Failed"):
            default = export_message(body) if s == "export" and state == "Succeeded" else f"{s} done"
            pods[j["name"]] = [pod(j, state, messages.get(s, default))]
        if s == upto:
            break
    return Children(jobs=jobs, pods=pods, **{**infra(body), **extra})


# termination messages built with the model the evaluate stage writes them with
EVAL_OK = EvaluateReport(base_ndcg10=0.41, tuned_ndcg10=0.52, gate="passed", gate_metric="ndcg@10",
                         gate_dataset="test", relative_improvement=0.268293, required=0.0).line()
EVAL_BAD = EvaluateReport(base_ndcg10=0.41, tuned_ndcg10=0.30, gate="failed", gate_metric="ndcg@10",
                          gate_dataset="test", relative_improvement=-0.268293, required=0.0).line()
EVAL_OVERRIDDEN = EVAL_BAD.replace('"failed"', '"overridden"')


def model_digest_of(body) -> str:
    """A stand-in digest of the exported files, different for every export run of a spec."""
    return "sha256:" + hashlib.sha256(job_fingerprints(parsed(body))["export"].encode()).hexdigest()


def export_message(body) -> str:
    return ExportReport(model_digest=model_digest_of(body), variants=["fp32", "int8"]).line()


def kinds(p, verb=None):
    return [(a.verb, a.kind) for a in p.actions if verb is None or a.verb == verb]


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


def serving_children(body, dep=None, svc=True):
    """Every stage succeeded (the gate passed); the serving Service exists, and the Deployment ``dep``."""
    ch = children_through(body, "export", messages={"evaluate": EVAL_OK})
    if svc:
        ch.services = [{"name": b.serving_name("demo"), "uid": "svc", "owner": UID, "owners": [],
                        "component": "serving", "deleting": False,
                        "hash": b.build_serving_service(body, parsed(body))["metadata"]["annotations"][
                            b.HASH_ANNOTATION]}]
    if dep is not None:
        ch.deployments = [dep]
    return ch


def deployment_summary(body, ready: int, digest=None):
    """The serving Deployment as built for ``body``, with ``ready`` replicas updated, ready and available."""
    spec = parsed(body)
    digest = digest or model_digest_of(body)
    d = b.build_serving_deployment(body, spec, SETTINGS, digest)
    return {"name": d["metadata"]["name"], "uid": "dep", "owner": UID, "hash": d["metadata"]["annotations"][
        b.HASH_ANNOTATION], "digest": digest, "generation": 1, "observedGeneration": 1,
        "replicas": spec.serving.replicas, "statusReplicas": spec.serving.replicas, "updated": ready,
        "ready": ready, "available": ready, "deleting": False}

