"""The quickstart through the real operator on the real cluster: every stage in its own pod, nothing stubbed.

`kubectl apply -f examples/quickstart.yaml` -> the workspace claim binds -> ingest ... export each run
`eft stage NAME` in a pod of the stage image on the shared claim -> status.metrics are the numbers the
evaluate pod wrote -> the serving Deployment becomes Ready through its readiness probe -> the real
`openai` client, through the Service's ClusterIP, gets what the exported model computes locally.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from eft.spec import STAGES
from eft.stage_reports import model_digest
from tests.support.cluster import namespace

# images built and loaded (first test of a session), then the whole pipeline on two cores
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

from tests.support.paths import REPO  # noqa: E402

NAME = "quickstart"
TEXTS = ["How does a Deployment roll out a new ReplicaSet?", "PersistentVolumeClaim access modes",
         "what is a liveness probe for"]


def stage_jobs(rc, ns: str) -> dict[str, dict]:
    items = rc.get("jobs", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return {j["metadata"]["labels"]["eft.ai/stage"]: j for j in items}


@pytest.fixture(scope="module")
def quickstart(real_cluster, eft_operator):
    """examples/quickstart.yaml applied in a fresh namespace and Ready; yields the namespace."""
    rc = real_cluster
    with namespace(rc) as ns:
        t0 = time.monotonic()
        rc.kubectl("apply", "-n", ns, "-f", str(REPO / "examples" / "quickstart.yaml"))
        rc.wait_for_object("pvc", f"{NAME}-workspace", ns)  # the operator creates it
        rc.kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Bound", f"pvc/{NAME}-workspace",
                   "--timeout=60s")
        rc.kubectl("wait", "-n", ns, "--for=condition=Ready", f"embeddingfinetune/{NAME}", "--timeout=1800s",
                   timeout=1860)
        print(f"\nquickstart through the operator: Ready after {time.monotonic() - t0:.0f}s")
        print(rc.kubectl("get", "eft,jobs,pods,deploy,svc", "-n", ns).stdout)
        yield ns


def served_vs_local(rc, ns: str, texts=TEXTS, max_retries: int = 3) -> np.ndarray:
    """Cosine per text: the real openai client through the Service vs the exported model run here."""
    from openai import OpenAI

    from eft.serving.backends import load_backend

    ws = rc.pvc_path(ns, f"{NAME}-workspace")
    client = OpenAI(base_url=service_url(rc, ns), api_key="unused", max_retries=max_retries, timeout=30)
    got = client.embeddings.create(model=client.models.list().data[0].id, input=list(texts))
    served = np.array([d.embedding for d in got.data], dtype=np.float32)
    local = load_backend(ws / "export", backend="onnx", variant="auto", device="cpu").embed_texts(list(texts))
    return np.sum(served * local, axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1))


def service_url(rc, ns: str) -> str:
    svc = rc.get("service", f"{NAME}-serve", "-n", ns)
    return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/v1"


def test_quickstart_runs_every_stage_in_a_pod_and_serves_the_model(real_cluster, quickstart):
    rc, ns = real_cluster, quickstart

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
    # the quickstart ships whatever the verdict (its gate.override), and the status says which it was
    assert status["metrics"]["gate"] == metrics["gate"]["status"] and metrics["gate"]["status"] in ("passed", "overridden")
    # status.modelDigest is the digest of the exported files
    export_manifest = json.loads((ws / "export" / "manifest.json").read_text())
    assert status["modelDigest"] == model_digest(export_manifest["outputs"])
    files_owner = {p.stat().st_uid for p in (ws / "export").iterdir()}
    assert files_owner == {1000}, "the stages ran as uid 1000 and wrote the claim through fsGroup"

    # the real openai client through the Service, against the exported model run here
    assert status["endpoint"] == f"http://{NAME}-serve.{ns}.svc:8000"
    cosines = served_vs_local(rc, ns)
    print(f"served vs local cosine: min {cosines.min():.6f}")
    assert cosines.min() > 0.999


def test_a_training_change_reruns_from_train_and_rolls_out_without_a_failed_request(real_cluster, quickstart):
    rc, ns = real_cluster, quickstart
    before = {s: j["metadata"]["name"] for s, j in stage_jobs(rc, ns).items()}
    old = rc.get("embeddingfinetune", NAME, "-n", ns)
    url = service_url(rc, ns)
    calls, failures, stop = [0], [], threading.Event()

    def client_loop():
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10)  # every failure counts
        while not stop.is_set():
            try:
                client.embeddings.create(model=f"{NAME}-embed", input=TEXTS[:1])
                calls[0] += 1
            except Exception as e:  # noqa: BLE001 - recorded, asserted below
                failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.05)

    thread = threading.Thread(target=client_loop, daemon=True)
    thread.start()
    try:
        rc.kubectl("patch", "embeddingfinetune", NAME, "-n", ns, "--type", "merge",
                   "-p", json.dumps({"spec": {"training": {"learningRate": 3.0e-5}}}))
        deadline = time.monotonic() + 1500
        while True:
            st = rc.get("embeddingfinetune", NAME, "-n", ns).get("status") or {}
            ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            if (st.get("observedGeneration") == old["metadata"]["generation"] + 1 and ready.get("status") == "True"
                    and st.get("modelDigest") != old["status"]["modelDigest"]):
                break
            assert time.monotonic() < deadline, f"no rollout of the retrained model: {st.get('message')}"
            time.sleep(2)
        time.sleep(2)  # a few calls on the new model too
    finally:
        stop.set()
        thread.join(timeout=30)
    after = {s: j["metadata"]["name"] for s, j in stage_jobs(rc, ns).items()}
    # nothing before train ran again; train and what follows ran under new names
    for s in ("ingest", "sdg", "prepare"):
        assert after[s] == before[s], s
    for s in ("train", "evaluate", "export"):
        assert after[s] != before[s], s
    print(f"rollout: {calls[0]} calls, {len(failures)} failed")
    assert not failures, failures[:5]
    assert calls[0] > 20
    assert served_vs_local(rc, ns).min() > 0.999  # the Service answers with the new export


def test_deleting_the_resource_keeps_the_workspace_under_retain(real_cluster, quickstart):
    """retentionPolicy Retain (the default): the children go with the resource, the workspace claim stays."""
    rc, ns = real_cluster, quickstart
    ws = rc.pvc_path(ns, f"{NAME}-workspace")
    rc.kubectl("delete", "embeddingfinetune", NAME, "-n", ns, "--timeout=120s")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = rc.get("jobs,deployments,services,configmaps", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")
        if not left["items"]:
            break
        time.sleep(1)
    assert not left["items"], [i["metadata"]["name"] for i in left["items"]]
    assert rc.get("pvc", f"{NAME}-workspace", "-n", ns)["status"]["phase"] == "Bound"
    assert (ws / "export" / "model-manifest.json").is_file()
