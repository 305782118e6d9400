"""The quickstart through the real operator on the real cluster: every stage in its own pod, nothing stubbed.

`kubectl apply -f examples/quickstart.yaml` -> the workspace claim binds -> ingest ... export each run
`eft stage NAME` in a pod of the stage image on the shared claim -> status.metrics are the numbers the
evaluate pod wrote -> the serving Deployment becomes Ready through its readiness probe -> the real
`openai` client, through the Service's ClusterIP, gets what the exported model computes locally.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from eft.spec import STAGES
from eft.stage_reports import model_digest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = "quickstart"
TEXTS = ["How does a Deployment roll out a new ReplicaSet?", "PersistentVolumeClaim access modes",
         "what is a liveness probe for"]


def stage_jobs(rc, ns: str) -> dict[str, dict]:
    items = rc.get("jobs", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return {j["metadata"]["labels"]["eft.ai/stage"]: j for j in items}


def test_quickstart_runs_every_stage_in_a_pod_and_serves_the_model(real_cluster, eft_operator, e2e_namespace):
    rc, ns = real_cluster, e2e_namespace
    t0 = time.monotonic()
    rc.kubectl("apply", "-n", ns, "-f", str(REPO / "examples" / "quickstart.yaml"))
    rc.kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Bound", f"pvc/{NAME}-workspace", "--timeout=60s")
    rc.kubectl("wait", "-n", ns, "--for=condition=Ready", f"embeddingfinetune/{NAME}", "--timeout=1800s",
               timeout=1860)
    elapsed = time.monotonic() - t0
    print(f"quickstart through the operator: Ready after {elapsed:.0f}s")
    print(rc.kubectl("get", "eft,jobs,pods,deploy,svc", "-n", ns, "-o", "wide").stdout)

    efr = rc.get("embeddingfinetune", NAME, "-n", ns)
    status = efr["status"]
    assert status["phase"] == "Serving"
    # every stage ran once, in order, in a pod of the stage image running `eft stage NAME`
    jobs = stage_jobs(rc, ns)
    assert set(jobs) == set(STAGES)
    starts = [jobs[s]["status"]["startTime"] for s in STAGES]
    assert starts == sorted(starts)
    pods = rc.get("pods", "-n", ns, "-l", "eft.ai/stage")["items"]
    for s in STAGES:
        job = jobs[s]
        assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), (s, job["status"])
        mine = [p for p in pods if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job["metadata"]["name"]]
        assert len(mine) == 1, s
        c = mine[0]["spec"]["containers"][0]
        assert c["image"].endswith("-cpu") and "eft-stages" in c["image"]
        assert c["command"][:3] == ["eft", "stage", s]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        term = mine[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0

    # status.metrics are what the evaluate pod computed (read back from the workspace on the claim)
    ws = rc.pvc_path(ns, f"{NAME}-workspace")
    metrics = json.loads((ws / "evaluate" / "metrics.json").read_text())
    assert status["metrics"]["baseNdcg10"] == round(metrics["test"]["base"]["ndcg@10"], 4)
    assert status["metrics"]["tunedNdcg10"] == round(metrics["test"]["tuned"]["ndcg@10"], 4)
    assert status["metrics"]["gate"] == "passed"
    # status.modelDigest is the digest of the exported files
    export_manifest = json.loads((ws / "export" / "manifest.json").read_text())
    assert status["modelDigest"] == model_digest(export_manifest["outputs"])
    files_owner = {p.stat().st_uid for p in (ws / "export").iterdir()}
    assert files_owner == {1000}, "the stages ran as uid 1000 and wrote the claim through fsGroup"

    # the real openai client through the Service, against the exported model run here
    from openai import OpenAI

    from eft.serving.backends import load_backend

    svc = rc.get("service", f"{NAME}-serve", "-n", ns)
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/v1"
    assert status["endpoint"].endswith(f".{ns}.svc:{svc['spec']['ports'][0]['port']}")
    client = OpenAI(base_url=url, api_key="unused", max_retries=3, timeout=30)
    served_model = client.models.list().data[0].id
    got = client.embeddings.create(model=served_model, input=TEXTS)
    served = np.array([d.embedding for d in got.data], dtype=np.float32)
    local = load_backend(ws / "export", backend="onnx", variant="auto", device="cpu").embed_texts(TEXTS)
    cosines = np.sum(served * local, axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1))
    print(f"served vs local cosine: min {cosines.min():.6f}")
    assert cosines.min() > 0.999
