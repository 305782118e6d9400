"""Unit tests of the operator's pure parts: child builders, fingerprints, the plan function, RBAC."""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from eft.controller import builders as b
from eft.stage_reports import EvaluateReport, ExportReport
from eft.controller.plan import (Children, evaluate_report, export_digest, plan, restart_stage, restart_table, stage_fingerprints,
                                 summarize_deployment, summarize_job, summarize_pod, transition_events)
from eft.controller.rbac import cluster_role_rules
from eft.controller.settings import Settings
from eft.spec import STAGES, EmbeddingFinetuneSpec

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
    fps = stage_fingerprints(parsed(body), (body["metadata"].get("annotations") or {}).get(b.RETRAIN_ANNOTATION),
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
    return "sha256:" + hashlib.sha256(stage_fingerprints(parsed(body))["export"].encode()).hexdigest()


def export_message(body) -> str:
    return ExportReport(model_digest=model_digest_of(body), variants=["fp32", "int8"]).line()


def kinds(p, verb=None):
    return [(a.verb, a.kind) for a in p.actions if verb is None or a.verb == verb]


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


# ----------------------------------------------------------------------------- names


def test_names_fit_kubernetes_limits():
    long = "a" * 63
    jn = b.job_name(long, "evaluate", "0123abcd")
    assert len(jn) <= b.JOB_NAME_MAX and jn.endswith("-evaluate-0123abcd")
    assert b.job_name(long, "evaluate", "0123abcd") != b.job_name("a" * 62 + "b", "evaluate", "0123abcd")
    assert b.job_name("demo", "train", "0123abcd") == "demo-train-0123abcd"
    assert len(b.serving_name(long)) <= 63
    assert b.serving_name("9lives")[0].isalpha()
    assert b.workspace_claim_name("demo") == "demo-workspace"


# ----------------------------------------------------------------------------- in-pod spec


def test_pod_spec_rewrites_cluster_inputs_to_mount_paths():
    body = efr({"corpus": {"existingClaim": "docs", "path": "handbook/"},
                "baseModel": {"name": "models/e5", "existingClaim": "models"}})
    s = b.pod_spec(parsed(body))
    assert s.corpus.path == "/eft/corpus/handbook" and s.corpus.existing_claim is None
    assert s.base_model.name == "/eft/base-model/models/e5" and s.base_model.existing_claim is None
    cm = efr({"corpus": {"configMap": "small-docs"}})
    assert b.pod_spec(parsed(cm)).corpus.path == "/eft/corpus"
    url = efr({"corpus": {"path": "s3://bucket/docs", "credentialsSecret": "s3"}})
    assert b.pod_spec(parsed(url)).corpus.path == "s3://bucket/docs"


def test_spec_configmap_holds_a_loadable_manifest(tmp_path):
    from eft.spec import load_spec

    body = efr({"corpus": {"existingClaim": "docs", "path": "a"}, "training": {"epochs": 2}})
    cm = b.build_spec_configmap(body, parsed(body))
    f = tmp_path / "spec.yaml"
    f.write_text(cm["data"]["spec.yaml"])
    loaded = load_spec(f)
    assert loaded.name == "demo" and loaded.spec.training.epochs == 2
    assert loaded.spec.corpus.path == "/eft/corpus/a"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    assert cm["metadata"]["annotations"][b.HASH_ANNOTATION] == b.object_hash(cm)


# ----------------------------------------------------------------------------- workspace claim


def test_workspace_claim_follows_retention_policy():
    body = efr({"workspace": {"size": "5Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}})
    pvc = b.build_workspace_claim(body, parsed(body))
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "fast"}
    assert "ownerReferences" not in pvc["metadata"]  # Retain (default): survives the resource
    delete = efr({"workspace": {"retentionPolicy": "Delete"}})
    pvc = b.build_workspace_claim(delete, parsed(delete))
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == UID
    other = {"uid": "someone", "kind": "X", "name": "x", "apiVersion": "v1"}
    assert b.desired_claim_owners(body, parsed(body), [other, b.owner_reference(body)]) == [other]


# ----------------------------------------------------------------------------- stage Jobs


def test_stage_job_basics():
    body = efr({"queueName": "team-a", "scheduling": {
        "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "high", "serviceAccountName": "eft-stage",
        "imagePullSecrets": ["regcred"], "backoffLimit": 3,
        "stages": {"train": {"image": "custom/train:1", "resources": {"limits": {"memory": "8Gi"}}}}},
        "baseModel": {"hfTokenSecret": {"name": "hf", "key": "token"}}})
    spec = parsed(body)
    j = b.build_stage_job(body, spec, "train", "0123abcd", SETTINGS)
    assert j["metadata"]["name"] == "demo-train-0123abcd"
    assert j["metadata"]["labels"][b.QUEUE_LABEL] == "team-a"
    assert j["metadata"]["labels"][b.INSTANCE_LABEL] == "demo"
    assert j["metadata"]["labels"][b.STAGE_LABEL] == "train"
    assert "suspend" not in j["spec"]  # Kueue suspends it itself
    assert j["spec"]["backoffLimit"] == 3
    pod_spec = j["spec"]["template"]["spec"]
    c = pod_spec["containers"][0]
    assert c["image"] == "custom/train:1"
    assert c["command"] == ["eft", "stage", "train", "--spec", "/etc/eft/spec.yaml", "--workspace", "/workspace"]
    assert c["resources"] == {"limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["nodeSelector"] == {"pool": "gpu"} and pod_spec["priorityClassName"] == "high"
    assert pod_spec["tolerations"][0]["key"] == "gpu" and pod_spec["serviceAccountName"] == "eft-stage"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HOME"]["value"].startswith("/workspace/")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/eft"]["readOnly"] and "/workspace" in mounts and "/dev/shm" in mounts
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    assert vols["workspace"]["persistentVolumeClaim"]["claimName"] == "demo-workspace"
    assert vols["spec"]["configMap"]["name"] == "demo-spec"
    # CPU stage: default image, no GPU, no /dev/shm
    ing = b.build_stage_job(body, spec, "ingest", "0123abcd", SETTINGS)
    ci = ing["spec"]["template"]["spec"]["containers"][0]
    assert ci["image"] == SETTINGS.image and "nvidia.com/gpu" not in str(ci["resources"])
    assert b.build_stage_job(body, spec, "ingest", "x", SETTINGS, force=True)["spec"]["template"]["spec"][
        "containers"][0]["command"][-1] == "--force"


def test_stage_gpus_and_cpu_cluster():
    spec = parsed(efr({"training": {"gpusPerNode": 4}}))
    assert [b.stage_gpus(spec, s) for s in STAGES] == [0, 0, 1, 4, 1, 1]
    cpu = parsed(efr({"training": {"gpusPerNode": 0}, "scheduling": {"stages": {"evaluate": {"gpus": 2}}}}))
    assert [b.stage_gpus(cpu, s) for s in STAGES] == [0, 0, 0, 0, 2, 0]


def test_stage_secrets_and_inputs():
    body = efr({"corpus": {"existingClaim": "docs", "credentialsSecret": "ignored-for-claims"},
                "sdg": {"backend": "openai", "openai": {"baseURL": "http://nim:8000/v1", "apiKeyEnv": "NIM_KEY",
                                                         "apiKeySecret": {"name": "nim", "key": "k"}}}})
    spec = parsed(body)
    ingest = b.build_stage_job(body, spec, "ingest", "f", SETTINGS)["spec"]["template"]["spec"]
    c = ingest["containers"][0]
    assert {"secretRef": {"name": "ignored-for-claims"}} in c["envFrom"]
    corpus = next(v for v in ingest["volumes"] if v["name"] == "corpus")
    assert corpus["persistentVolumeClaim"] == {"claimName": "docs", "readOnly": True}
    assert {"name": "corpus", "mountPath": "/eft/corpus", "readOnly": True} in c["volumeMounts"]
    sdg = b.build_stage_job(body, spec, "sdg", "f", SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in sdg["env"]}
    assert env["NIM_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "nim", "key": "k"}
    assert "envFrom" not in sdg and not any(m["name"] == "corpus" for m in sdg["volumeMounts"])
    train = b.build_stage_job(body, spec, "train", "f", SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert "NIM_KEY" not in {e["name"] for e in train["env"]}
    cmb = efr({"corpus": {"configMap": "docs-cm"}})
    v = b.build_stage_job(cmb, parsed(cmb), "ingest", "f", SETTINGS)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "corpus", "configMap": {"name": "docs-cm"}} in v


def test_multi_node_training_is_an_indexed_job_with_rendezvous():
    body = efr({"training": {"nodes": 3, "gpusPerNode": 8}})
    spec = parsed(body)
    j = b.build_stage_job(body, spec, "train", "abcd1234", SETTINGS)
    s = j["spec"]
    assert s["completionMode"] == "Indexed" and s["completions"] == 3 and s["parallelism"] == 3
    pod_spec = s["template"]["spec"]
    svc = b.build_rendezvous_service(body, "train", "abcd1234")
    assert pod_spec["subdomain"] == svc["metadata"]["name"] == "demo-train-abcd1234"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {b.JOB_NAME_LABEL: "demo-train-abcd1234"}
    c = pod_spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["MASTER_ADDR"]["value"] == "demo-train-abcd1234-0.demo-train-abcd1234"
    assert env["PET_NNODES"]["value"] == "3" and env["PET_NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["command"][:3] == ["torchrun", "--module", "eft.cli"] and c["command"][3:5] == ["stage", "train"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    # other stages stay single-pod
    assert "completionMode" not in b.build_stage_job(body, spec, "evaluate", "x", SETTINGS)["spec"]


# ----------------------------------------------------------------------------- serving


def test_serving_deployment_rolls_without_downtime():
    body = efr({"serving": {"replicas": 2, "port": 9000, "resources": {"limits": {"cpu": "2"}}, "gpus": 1}})
    spec = parsed(body)
    d = b.build_serving_deployment(body, spec, SETTINGS, "digest-1")
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert d["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == "digest-1"
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["eft"] and c["args"][:3] == ["serve", "--model", "/workspace/export"]
    assert "--port" in c["args"] and "9000" in c["args"]
    assert c["args"][c["args"].index("--served-model-name") + 1] == "demo-embed"
    assert c["image"] == SETTINGS.serving_image
    torch = efr({"serving": {"backend": "torch"}})
    assert b.serving_container(torch, parsed(torch), SETTINGS)["args"][2] == "/workspace/train/model"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["resources"] == {"limits": {"cpu": "2", "nvidia.com/gpu": 1}}
    vol = d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert vol == {"claimName": "demo-workspace", "readOnly": True}
    assert c["volumeMounts"][0]["readOnly"] is True
    d2 = b.build_serving_deployment(body, spec, SETTINGS, "digest-2")
    assert d2["metadata"]["annotations"][b.HASH_ANNOTATION] != d["metadata"]["annotations"][b.HASH_ANNOTATION]
    svc = b.build_serving_service(body, spec)
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert b.serving_endpoint(body, spec) == "http://demo-serve.ns.svc:9000"


def test_serving_container_can_be_swapped():
    tei = efr({"serving": {"image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.5",
                           "args": ["--model-id", "/workspace/train/model", "--port", "8000"],
                           "healthPath": "/health", "env": [{"name": "MAX_BATCH_TOKENS", "value": "16384"}]}})
    c = b.serving_container(tei, parsed(tei), SETTINGS)
    assert "command" not in c and c["args"][0] == "--model-id"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and "tcpSocket" in c["livenessProbe"]
    assert {"name": "MAX_BATCH_TOKENS", "value": "16384"} in c["env"]
    nim = efr({"serving": {"image": "nvcr.io/nim/x:1", "command": ["/opt/nim/start.sh"], "healthPath":
                           "/v1/health/ready"}})
    c = b.serving_container(nim, parsed(nim), SETTINGS)
    assert c["command"] == ["/opt/nim/start.sh"] and "args" not in c


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprints_rerun_only_affected_stages():
    base = parsed(efr())
    fp = stage_fingerprints(base)
    assert len(set(fp.values())) == len(STAGES)
    assert stage_fingerprints(parsed(efr())) == fp  # deterministic
    t = stage_fingerprints(parsed(efr({"training": {"epochs": 7}})))
    assert [s for s in STAGES if t[s] != fp[s]] == ["train", "evaluate", "export"]
    e = stage_fingerprints(parsed(efr({"export": {"onnx": {"int8": False}}})))
    assert [s for s in STAGES if e[s] != fp[s]] == ["export"]
    ing = stage_fingerprints(parsed(efr({"corpus": {"chunking": {"maxTokens": 128}}})))
    assert all(ing[s] != fp[s] for s in STAGES)
    for unrelated in ({"serving": {"replicas": 3}}, {"scheduling": {"backoffLimit": 5}}, {"suspend": True},
                      {"queueName": "q"}, {"workspace": {"retentionPolicy": "Delete"}}):
        assert stage_fingerprints(parsed(efr(unrelated))) == fp, unrelated
    r = stage_fingerprints(base, "token-1", "train")
    assert [s for s in STAGES if r[s] != fp[s]] == ["train", "evaluate", "export"]
    assert stage_fingerprints(base, "token-1")["ingest"] != fp["ingest"]
    assert restart_stage(base, parsed(efr({"split": {"test": 0.2}}))) == "prepare"
    assert restart_stage(base, parsed(efr({"serving": {"port": 1234}}))) is None
    table = dict(restart_table())
    assert table["corpus.path"] == "ingest" and table["training"] == "train" and table["export"] == "export"


# ----------------------------------------------------------------------------- summaries


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


# ----------------------------------------------------------------------------- plan


def test_plan_first_reconcile_creates_spec_workspace_and_first_job():
    body = efr()
    p = plan(body, Children(), SETTINGS, NOW)
    assert kinds(p) == [("create", "ConfigMap"), ("create", "PersistentVolumeClaim"), ("create", "Job")]
    j = p.actions[-1].obj
    assert j["metadata"]["labels"][b.STAGE_LABEL] == "ingest"
    st = p.status
    assert st["phase"] == "Running" and st["stage"] == "ingest" and st["observedGeneration"] == 1
    assert [s["phase"] for s in st["stages"]] == ["Pending"] * 6
    assert {c["type"] for c in st["conditions"]} == {"Progressing", "Succeeded", "Failed", "QualityGatePassed",
                                                     "Queued", "Ready"}
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    assert cond(st, "Ready")["status"] == "False"


def test_plan_waits_for_a_running_stage_and_then_moves_on():
    body = efr()
    p = plan(body, children_through(body, "ingest", "Running"), SETTINGS, NOW)
    assert p.actions == []
    assert p.status["phase"] == "Running" and p.status["stages"][0]["phase"] == "Running"
    assert ("Normal", "StageStarted", f"stage ingest started (Job {p.status['stages'][0]['job']})") in p.events
    body["status"] = p.status
    p2 = plan(body, children_through(body, "ingest"), SETTINGS, NOW)
    assert kinds(p2) == [("create", "Job")] and p2.actions[0].obj["metadata"]["labels"][b.STAGE_LABEL] == "sdg"
    assert p2.status["stages"][0]["message"] == "ingest done"
    assert any(e[1] == "StageSucceeded" for e in p2.events)


def test_plan_never_reruns_a_finished_stage_whose_job_is_gone():
    body = efr()
    p = plan(body, children_through(body, "prepare"), SETTINGS, NOW)
    body["status"] = p.status
    ch = children_through(body, "prepare")
    ch.jobs = [j for j in ch.jobs if j["stage"] != "ingest"]  # e.g. deleted by someone
    p2 = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p2.actions if a.kind == "Job"] == ["train"]
    assert p2.status["stages"][0]["phase"] == "Succeeded"


def test_plan_failed_stage_reports_termination_message():
    body = efr()
    ch = children_through(body, "train", "Failed", messages={"train": "train: CUDA out of memory"})
    ch.jobs[-1]["failed"] = 3
    p = plan(body, ch, SETTINGS, NOW)
    assert kinds(p, "create") == []
    st = p.status
    assert st["phase"] == "Failed" and st["stage"] == "train"
    assert st["stages"][3] == {**st["stages"][3], "phase": "Failed", "attempts": 3,
                               "message": "train: CUDA out of memory"}
    assert cond(st, "Failed")["status"] == "True" and cond(st, "Failed")["reason"] == "StageFailed"
    assert "CUDA out of memory" in cond(st, "Failed")["message"]
    ev = [e for e in p.events if e[1] == "StageFailed"]
    assert ev and ev[0][0] == "Warning" and "3 attempt" in ev[0][2] and "CUDA" in ev[0][2]


def test_plan_failed_stage_without_message_uses_job_condition():
    body = efr()
    ch = children_through(body, "sdg", "Failed")
    ch.pods = {}
    p = plan(body, ch, SETTINGS, NOW)
    assert "BackoffLimitExceeded" in p.status["stages"][1]["message"]


def test_plan_suspend_pauses_between_stages():
    body = efr({"suspend": True})
    p = plan(body, children_through(body, "sdg"), SETTINGS, NOW)
    assert kinds(p, "create") == []
    assert p.status["phase"] == "Suspended" and p.status["stage"] == "prepare"
    assert cond(p.status, "Progressing")["reason"] == "Suspended"
    assert any(e[1] == "Suspended" for e in p.events)
    # a running stage is not interrupted
    p = plan(body, children_through(body, "sdg", "Running"), SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Running"
    # resume
    body2 = efr({"suspend": False}, status=plan(body, children_through(body, "sdg"), SETTINGS, NOW).status)
    p = plan(body2, children_through(body2, "sdg"), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Job")] and any(e[1] == "Resumed" for e in p.events)


def test_plan_reports_kueue_queued_jobs():
    body = efr({"queueName": "team"})
    ch = children_through(body, "train", "Queued")
    p = plan(body, ch, SETTINGS, NOW)
    assert p.status["phase"] == "Queued" and cond(p.status, "Queued")["status"] == "True"
    assert "team" in cond(p.status, "Queued")["message"]
    assert p.actions == []


def test_plan_quality_gate():
    body = efr()
    p = plan(body, children_through(body, "evaluate", messages={"evaluate": EVAL_BAD}), SETTINGS, NOW)
    assert kinds(p, "create") == []
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "QualityGateFailed"
    assert cond(p.status, "QualityGatePassed")["status"] == "False"
    assert p.status["metrics"]["tunedNdcg10"] == 0.30
    assert any(e[1] == "QualityGateFailed" for e in p.events)
    over = efr({"evaluation": {"gate": {"override": True}}})
    p = plan(over, children_through(over, "evaluate", messages={"evaluate": EVAL_OVERRIDDEN}), SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["export"]
    assert cond(p.status, "QualityGatePassed")["reason"] == "Overridden"
    ok = efr()
    p = plan(ok, children_through(ok, "evaluate", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Job")] and cond(p.status, "QualityGatePassed")["status"] == "True"
    assert p.status["metrics"] == {"baseNdcg10": 0.41, "tunedNdcg10": 0.52, "gate": "passed", "gateMetric": "ndcg@10",
                                   "gateDataset": "test", "relativeImprovement": 0.268293, "required": 0.0}


def test_plan_waits_briefly_for_the_evaluate_termination_message():
    body = efr()
    ch = children_through(body, "evaluate")
    ch.pods = {}
    p = plan(body, ch, SETTINGS, datetime(2025, 1, 1, 11, 30, 10, tzinfo=timezone.utc))
    assert kinds(p, "create") == [] and p.requeue_after
    p = plan(body, ch, SETTINGS, NOW)  # 30 min later: go on without metrics
    assert kinds(p, "create") == [("create", "Job")]
    assert cond(p.status, "QualityGatePassed")["reason"] == "MetricsUnavailable"


def _serving_children(body, dep=None, svc=True):
    ch = children_through(body, "export", messages={"evaluate": EVAL_OK})
    if svc:
        ch.services = [{"name": b.serving_name("demo"), "uid": "svc", "owner": UID, "owners": [],
                        "component": "serving", "deleting": False,
                        "hash": b.build_serving_service(body, parsed(body))["metadata"]["annotations"][
                            b.HASH_ANNOTATION]}]
    if dep is not None:
        ch.deployments = [dep]
    return ch


def _dep_summary(body, ready: int, digest=None):
    spec = parsed(body)
    digest = digest or model_digest_of(body)
    d = b.build_serving_deployment(body, spec, SETTINGS, digest)
    return {"name": d["metadata"]["name"], "uid": "dep", "owner": UID, "hash": d["metadata"]["annotations"][
        b.HASH_ANNOTATION], "digest": digest, "generation": 1, "observedGeneration": 1,
        "replicas": spec.serving.replicas, "statusReplicas": spec.serving.replicas, "updated": ready,
        "ready": ready, "available": ready, "deleting": False}


def test_plan_deploys_after_export_and_reports_ready():
    body = efr()
    p = plan(body, children_through(body, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert kinds(p) == [("create", "Service"), ("create", "Deployment")]
    assert p.status["phase"] == "Deploying" and cond(p.status, "Ready")["status"] == "False"
    assert p.status["endpoint"] == "http://demo-serve.ns.svc:8000"
    body["status"] = p.status
    p2 = plan(body, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS, NOW + timedelta(seconds=5))
    assert p2.actions == []
    assert p2.status["phase"] == "Serving" and cond(p2.status, "Ready")["status"] == "True"
    assert cond(p2.status, "Succeeded")["status"] == "True"
    assert p2.status["stage"] == "serving" and p2.status["modelDigest"] == model_digest_of(body)
    assert any(e[1] == "Ready" for e in p2.events)
    # lastTransitionTime only moves on flips
    p3 = plan({**body, "status": p2.status}, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS,
              NOW + timedelta(minutes=5))
    assert p3.status == p2.status and p3.events == []


def test_plan_retrain_rolls_the_deployment_to_the_new_model():
    body = efr()
    served = plan(body, _serving_children(body, _dep_summary(body, ready=1)), SETTINGS, NOW).status
    new = efr({"training": {"epochs": 5}}, status=served, generation=2)
    old_children = _serving_children(body, _dep_summary(body, ready=1))
    p = plan(new, old_children, SETTINGS, NOW)
    # train re-runs under a new name; earlier stages are not re-run; serving keeps the old model
    jobs = [a.obj for a in p.actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["train"]
    assert jobs[0]["metadata"]["name"] not in {j["name"] for j in old_children.jobs}
    assert not any(a.kind == "Deployment" for a in p.actions)
    assert cond(p.status, "Ready")["reason"] == "ServingPreviousModel"
    assert p.status["endpoint"] and any(e[1] == "Retraining" for e in p.events)
    # completed superseded jobs of the re-run stage go; earlier stages stay
    deleted = {a.name for a in p.actions if a.verb == "delete"}
    old_train = next(j["name"] for j in old_children.jobs if j["stage"] == "train")
    assert old_train in deleted
    # after the new export: the Deployment is updated with a new digest
    ch = children_through(new, "export", messages={"evaluate": EVAL_OK})
    ch.services, ch.deployments = old_children.services, old_children.deployments
    p = plan({**new, "status": p.status}, ch, SETTINGS, NOW)
    upd = [a for a in p.actions if a.verb == "update" and a.kind == "Deployment"]
    assert upd and upd[0].obj["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == \
        model_digest_of(new) != model_digest_of(body)
    assert p.status["phase"] == "Deploying"


def test_plan_stops_a_running_superseded_job():
    body = efr()
    ch = children_through(body, "train", "Running")
    new = efr({"training": {"epochs": 9}}, generation=2)
    p = plan(new, ch, SETTINGS, NOW)
    running = next(j for j in ch.jobs if j["stage"] == "train")
    assert ("delete", "Job") in kinds(p) and running["name"] in {a.name for a in p.actions if a.verb == "delete"}
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job" and a.verb == "create"] \
        == ["train"]


def test_plan_retrain_annotation_restarts_from_the_named_stage_with_force():
    body = efr()
    done = _serving_children(body, _dep_summary(body, ready=1))
    rt = efr(annotations={b.RETRAIN_ANNOTATION: "2025-01-01", b.RETRAIN_FROM_ANNOTATION: "train"})
    p = plan(rt, done, SETTINGS, NOW)
    jobs = [a.obj for a in p.actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["train"]
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--force"
    rt2 = efr(annotations={b.RETRAIN_ANNOTATION: "x"})
    jobs = [a.obj for a in plan(rt2, done, SETTINGS, NOW).actions if a.verb == "create" and a.kind == "Job"]
    assert [j["metadata"]["labels"][b.STAGE_LABEL] for j in jobs] == ["ingest"]


def test_plan_rwo_multi_replica_is_a_clear_condition():
    body = efr({"serving": {"replicas": 3}})
    p = plan(body, children_through(body, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert not any(a.kind == "Deployment" for a in p.actions)
    ready = cond(p.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReadWriteOnceMultiReplica"
    assert p.status["phase"] == "Blocked" and any(e[1] == "ReadWriteOnceMultiReplica" for e in p.events)
    rwx = efr({"serving": {"replicas": 3}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    p = plan(rwx, children_through(rwx, "export", messages={"evaluate": EVAL_OK}), SETTINGS, NOW)
    assert ("create", "Deployment") in kinds(p)


def test_plan_serving_disabled_removes_serving_objects():
    body = efr({"serving": {"enabled": False}})
    ch = _serving_children(body, _dep_summary(efr(), ready=1))
    p = plan(body, ch, SETTINGS, NOW)
    assert sorted(kinds(p, "delete")) == [("delete", "Deployment"), ("delete", "Service")]
    assert p.status["phase"] == "Succeeded" and cond(p.status, "Ready")["reason"] == "ServingDisabled"
    assert "endpoint" not in p.status


def test_plan_retention_policy_moves_the_claim_owner():
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    ch = children_through(body, "ingest", "Running")
    p = plan(body, ch, SETTINGS, NOW)
    so = [a for a in p.actions if a.verb == "set-owners"]
    assert so and so[0].owners[0]["uid"] == UID
    ch.claims[0]["owners"] = so[0].owners
    ch.claims[0]["owner"] = UID
    assert not [a for a in plan(body, ch, SETTINGS, NOW).actions if a.verb == "set-owners"]
    retain = efr()
    p = plan(retain, ch, SETTINGS, NOW)
    assert [a.owners for a in p.actions if a.verb == "set-owners"] == [[]]


def test_plan_existing_claim_and_foreign_children():
    body = efr({"workspace": {"existingClaim": "shared"}})
    p = plan(body, Children(), SETTINGS, NOW)
    assert ("create", "PersistentVolumeClaim") not in kinds(p)
    vols = p.actions[-1].obj["spec"]["template"]["spec"]["volumes"]
    assert vols[0]["persistentVolumeClaim"]["claimName"] == "shared"
    ch = Children(configmaps=[{"name": "demo-spec", "uid": "x", "owner": "another", "hash": "h", "deleting": False}])
    p = plan(efr(), ch, SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "PersistentVolumeClaim")]  # no Job while a child conflicts
    assert cond(p.status, "Progressing")["reason"] == "ChildConflict" and p.requeue_after


def test_plan_updates_the_spec_configmap_when_the_spec_changes():
    body = efr()
    ch = children_through(body, "ingest", "Running")
    new = efr({"serving": {"replicas": 1, "port": 8080}}, generation=2)
    assert ("update", "ConfigMap") in kinds(plan(new, ch, SETTINGS, NOW))
    assert ("update", "ConfigMap") not in kinds(plan(body, ch, SETTINGS, NOW))


def test_plan_invalid_spec():
    body = efr({"chunking": 1})
    p = plan(body, Children(), SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Failed"
    assert cond(p.status, "Failed")["reason"] == "InvalidSpec" and "spec.chunking" in p.status["message"]


def test_plan_ignores_jobs_being_deleted_and_other_owners():
    body = efr()
    ch = children_through(body, "ingest")
    ch.jobs[0] = {**ch.jobs[0], "owner": "someone-else"}
    p = plan(body, ch, SETTINGS, NOW)
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]
    ch = children_through(body, "ingest")
    p = plan(body, ch, SETTINGS, NOW, ignored_uids={ch.jobs[0]["uid"]})
    assert [a.obj["metadata"]["labels"][b.STAGE_LABEL] for a in p.actions if a.kind == "Job"] == ["ingest"]


def test_transition_events_only_on_changes():
    body = efr()
    p = plan(body, children_through(body, "ingest", "Running"), SETTINGS, NOW)
    assert transition_events(p.status, p.status) == []
    later = copy.deepcopy(p.status)
    later["stages"][0]["phase"] = "Succeeded"
    assert [e[1] for e in transition_events(p.status, later)] == ["StageSucceeded"]


def test_multi_node_plan_creates_rendezvous_service_first():
    body = efr({"training": {"nodes": 2}, "workspace": {"accessModes": ["ReadWriteMany"]}})
    p = plan(body, children_through(body, "prepare"), SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "Service"), ("create", "Job")]
    assert p.actions[0].obj["metadata"]["name"] == p.actions[1].obj["spec"]["template"]["spec"]["subdomain"]
    rwo = efr({"training": {"nodes": 2}})
    p = plan(rwo, children_through(rwo, "prepare"), SETTINGS, NOW)
    assert kinds(p, "create") == [] and p.status["phase"] == "Blocked"
    assert cond(p.status, "Progressing")["reason"] == "ReadWriteOnceMultiNode"


# ----------------------------------------------------------------------------- RBAC


def test_rbac_rules_have_no_wildcards():
    rules = cluster_role_rules()
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
    res = {(g, x) for r in rules for g in r["apiGroups"] for x in r["resources"]}
    for needed in (("batch", "jobs"), ("", "pods"), ("", "configmaps"), ("", "persistentvolumeclaims"),
                   ("", "services"), ("apps", "deployments"), ("", "events"), ("eft.ai", "embeddingfinetunes"),
                   ("eft.ai", "embeddingfinetunes/status")):
        assert needed in res


@pytest.mark.parametrize("verb_kind", ["create", "update", "delete", "set-owners"])
def test_every_planned_verb_is_allowed_by_rbac(verb_kind):
    """Each (verb, kind) the plan can emit maps to an RBAC verb the rules grant."""
    need = {"create": "create", "update": "update", "delete": "delete", "set-owners": "patch"}[verb_kind]
    kinds_for = {"create": ["ConfigMap", "PersistentVolumeClaim", "Job", "Service", "Deployment"],
                 "update": ["ConfigMap", "Service", "Deployment"], "delete": ["Job", "Service", "Deployment"],
                 "set-owners": ["PersistentVolumeClaim"]}[verb_kind]
    plural = {"ConfigMap": ("", "configmaps"), "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
              "Job": ("batch", "jobs"), "Service": ("", "services"), "Deployment": ("apps", "deployments")}
    rules = cluster_role_rules()
    for k in kinds_for:
        g, r = plural[k]
        assert any(g in x["apiGroups"] and r in x["resources"] and need in x["verbs"] for x in rules), (k, need)


# ----------------------------------------------------------------------------- controller (fake API)


class FakeKube:
    """In-memory stand-in for eft.controller.kube.Kube: create/get/replace/patch/delete by (kind, name)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.requests = 0

    def _key(self, kind, name):
        return (kind, name)

    def create(self, obj):
        from eft.controller.kube import KubeError

        self.requests += 1
        kind = obj["kind"]
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"] + str(self.requests)
        self.calls.append(("create", kind, name))
        if (kind, name) in self.objects:
            raise KubeError(409, "Conflict", {"message": "already exists"})
        stored = copy.deepcopy(obj)
        stored["metadata"].update({"name": name, "uid": f"uid-{kind}-{name}", "resourceVersion": "1"})
        self.objects[(kind, name)] = stored
        return stored

    def get(self, kind, ns, name):
        self.requests += 1
        self.calls.append(("get", kind, name))
        return copy.deepcopy(self.objects[(kind, name)])

    def replace(self, obj):
        self.requests += 1
        self.calls.append(("replace", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    def patch(self, kind, ns, name, patch, sub=None, content_type=None):
        self.requests += 1
        self.calls.append(("patch", kind, name if not sub else f"{name}/{sub}"))
        return {"metadata": {"resourceVersion": "5"}}

    def delete(self, kind, ns, name, uid=None, propagation="Background"):
        self.requests += 1
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, name), None)


def _controller(fake):
    from eft.controller.controller import Controller

    c = Controller(SETTINGS, kube_factory=lambda: fake)
    c.kube = fake
    return c


def test_controller_reconcile_writes_children_status_and_events():
    import asyncio

    fake = FakeKube()
    c = _controller(fake)
    body = efr()
    c.resources[("ns", "demo")] = body
    asyncio.run(c.reconcile(("ns", "demo")))
    made = [x for x in fake.calls if x[0] == "create"]
    assert [k for _, k, _ in made] == ["ConfigMap", "PersistentVolumeClaim", "Job"]
    assert ("patch", "EmbeddingFinetune", "demo/status") in fake.calls
    # the status this process wrote is used until the watch shows a newer resource version
    assert c.current_body(("ns", "demo"))["status"]["phase"] == "Running"


def test_controller_adopts_on_409_and_never_duplicates():
    import asyncio

    fake = FakeKube()
    c = _controller(fake)
    body = efr()
    c.resources[("ns", "demo")] = body
    asyncio.run(c.reconcile(("ns", "demo")))  # caches are empty: it creates
    n_jobs = sum(1 for k in fake.objects if k[0] == "Job")
    asyncio.run(c.reconcile(("ns", "demo")))  # caches still empty (watch lag): 409 -> adopt
    assert sum(1 for k in fake.objects if k[0] == "Job") == n_jobs == 1
    assert ("get", "Job", b.job_name("demo", "ingest", stage_fingerprints(parsed(body))["ingest"])) in fake.calls


def test_controller_refuses_to_adopt_a_foreign_object():
    import asyncio

    from eft.controller.controller import _Blocked

    fake = FakeKube()
    fake.objects[("ConfigMap", "demo-spec")] = {"kind": "ConfigMap", "metadata": {
        "name": "demo-spec", "uid": "x", "ownerReferences": [{"uid": "someone", "controller": True}]}}
    c = _controller(fake)
    with pytest.raises(_Blocked):
        c._apply(efr(), plan(efr(), Children(), SETTINGS, NOW).actions[0])
    # a retained workspace claim of an earlier resource with the same name is reused
    fake.objects[("PersistentVolumeClaim", "demo-workspace")] = {"kind": "PersistentVolumeClaim", "metadata": {
        "name": "demo-workspace", "uid": "p", "resourceVersion": "3",
        "labels": {b.INSTANCE_LABEL: "demo", b.NAME_LABEL: "eft"}}}
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    act = next(a for a in plan(body, Children(), SETTINGS, NOW).actions if a.kind == "PersistentVolumeClaim")
    c._apply(body, act)
    assert ("patch", "PersistentVolumeClaim", "demo-workspace") in fake.calls


def test_work_queue_deduplicates_and_serialises_keys():
    import asyncio

    from eft.controller.controller import WorkQueue

    async def scenario():
        q = WorkQueue()
        q.add(("a", "1"))
        q.add(("a", "1"))
        assert len(q) == 1
        key = await q.get()
        q.add(key)  # while in flight: remembered, not handed out twice
        assert len(q) == 0
        q.done(key)
        assert len(q) == 1
        q.add_after(("b", "2"), 0.01)
        await asyncio.sleep(0.05)
        assert len(q) == 2

    asyncio.run(scenario())


def test_plan_says_when_a_stage_pod_cannot_be_scheduled():
    """A GPU stage on a cluster without GPUs: the scheduler's reason in status and one Warning Event."""
    body = efr()
    ch = children_through(body, "prepare", "Running")
    job = next(j for j in ch.jobs if j["stage"] == "prepare")
    pending = summarize_pod({"metadata": {"name": "p", "labels": {b.JOB_NAME_LABEL: job["name"]}},
                             "status": {"phase": "Pending", "conditions": [
                                 {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}})
    ch.pods[job["name"]] = [pending]
    p = plan(body, ch, SETTINGS, NOW)
    prog = cond(p.status, "Progressing")
    assert prog["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in prog["message"]
    assert "training.gpusPerNode" in p.status["message"]
    assert [e for e in p.events if e[1] == "Unschedulable"]
    again = plan({**body, "status": p.status}, ch, SETTINGS, NOW)
    assert not [e for e in again.events if e[1] == "Unschedulable"]  # once, not every reconcile


def test_plan_replicas_zero_is_complete_but_not_ready():
    """serving.replicas 0: the Deployment exists and is rolled out, but no pod answers: never Ready."""
    body = efr({"serving": {"replicas": 0}})
    p = plan(body, _serving_children(body, _dep_summary(body, ready=0)), SETTINGS, NOW)
    ready = cond(p.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ScaledToZero"
    assert p.status["phase"] == "Succeeded" and "serving.replicas 0" in p.status["message"]
    assert cond(p.status, "Succeeded")["status"] == "True"
