"""The example specs (examples/*.yaml, gitops/finetunes/*.yaml): each passes `eft validate` (the CLI), says
what it claims to show, and (kube) is accepted by the API server under the generated CRD."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlparse

import pytest
import yaml

from tests.support.paths import REPO  # noqa: E402

EXAMPLES = sorted((REPO / "examples").glob("*.yaml")) + sorted((REPO / "gitops" / "finetunes").glob("*.yaml"))
IDS = [str(p.relative_to(REPO)) for p in EXAMPLES]
CRD = REPO / "crds" / "embeddingfinetune.yaml"
QUEUES = REPO / "gitops" / "kueue" / "queues.yaml"


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def as_stored(name: str) -> dict:
    """The example as the operator sees it: a stored object has a uid."""
    doc = load(name)
    doc["metadata"].update(uid="5f0c2d8e-0000-4000-8000-000000000001", generation=1)
    return doc


def test_the_examples_exist():
    names = {p.name for p in (REPO / "examples").glob("*.yaml")}
    assert {"quickstart.yaml", "gpu-cluster.yaml", "kueue.yaml", "eval-datasets.yaml", "corpus-pvc.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_eft_validate(path):
    proc = subprocess.run([sys.executable, "-m", "eft.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "valid EmbeddingFinetune" in proc.stdout


def test_names_are_unique():
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES]
    assert len(names) == len(set(names)), names


def test_gpu_cluster_uses_an_in_cluster_llm_with_a_secret_key():
    from eft.spec import parse_document

    spec = parse_document(load("gpu-cluster.yaml")).spec
    assert spec.sdg.backend == "openai"
    host = urlparse(spec.sdg.openai.base_url).hostname
    assert host.endswith(".svc.cluster.local") or host.endswith(".svc"), host
    assert spec.sdg.openai.base_url.endswith("/v1")
    assert spec.sdg.openai.api_key_secret is not None
    assert spec.training.gpus_per_node >= 1 and spec.serving.gpus >= 1
    assert spec.export.tensorrt.enabled and spec.export.onnx.fp16
    assert spec.scheduling.tolerations, "GPU nodes are usually tainted"


def test_gpu_cluster_stage_pods_get_the_gpus_and_the_key():
    """What the operator builds from the example: a train Job with a GPU, an SDG Job with the key."""
    from eft.controller import builders as b
    from eft.controller.settings import Settings

    from eft.spec import parse_document

    doc = as_stored("gpu-cluster.yaml")
    spec = parse_document(doc).spec
    train = b.build_stage_job(doc, spec, "train", "0123456789abcdef", Settings())
    (c,) = train["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    sdg = b.build_stage_job(doc, spec, "sdg", "0123456789abcdef", Settings())
    (c,) = sdg["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "llm-api-key", "key": "api-key"}
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_eval_datasets_example_points_at_a_loadable_beir_folder():
    from eft.metrics import load_beir
    from eft.spec import load_spec

    efr = load_spec(REPO / "examples" / "eval-datasets.yaml")
    assert efr.spec.evaluation.datasets
    for ds in efr.spec.evaluation.datasets:
        data = load_beir(ds.path, ds.split)
        assert len(data.queries) >= 10 and len(data.corpus) >= 10


def test_corpus_pvc_example_reads_claims():
    from eft.spec import parse_document

    spec = parse_document(load("corpus-pvc.yaml")).spec
    assert spec.corpus.existing_claim and spec.base_model.existing_claim
    assert "ReadWriteMany" in spec.workspace.access_modes  # two serving replicas read the same export
    assert spec.serving.replicas == 2


# --------------------------------------------------------------------------- Kueue


def _queues() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in yaml.safe_load_all(QUEUES.read_text()):
        if d:
            out.setdefault(d["kind"], []).append(d)
    return out


def _quantity(v) -> float:
    s = str(v)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def test_kueue_example_matches_the_queues():
    from eft.spec import parse_document

    doc = load("kueue.yaml")
    spec = parse_document(doc).spec
    q = _queues()
    assert set(q) == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    (lq,) = q["LocalQueue"]
    assert lq["metadata"]["name"] == spec.queue_name
    assert lq["metadata"]["namespace"] == doc["metadata"]["namespace"]
    (cq,) = q["ClusterQueue"]
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    flavors = {f["metadata"]["name"] for f in q["ResourceFlavor"]}
    (group,) = cq["spec"]["resourceGroups"]
    assert {"cpu", "memory", "nvidia.com/gpu"} <= set(group["coveredResources"])
    assert {f["name"] for f in group["flavors"]} == flavors


def test_kueue_stage_jobs_are_labelled_and_fit_the_quota():
    """Every stage Job the operator builds for the example carries the queue label Kueue reads, has
    requests for every covered resource it uses, and fits one flavor's nominal quota."""
    from eft.controller import builders as b
    from eft.controller.settings import Settings

    from eft.spec import STAGES, parse_document

    doc = as_stored("kueue.yaml")
    spec = parse_document(doc).spec
    (cq,) = _queues()["ClusterQueue"]
    (group,) = cq["spec"]["resourceGroups"]
    quotas = [{r["name"]: _quantity(r["nominalQuota"]) for r in f["resources"]} for f in group["flavors"]]
    for stage in STAGES:
        job = b.build_stage_job(doc, spec, stage, "0123456789abcdef", Settings())
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == spec.queue_name
        (c,) = job["spec"]["template"]["spec"]["containers"]
        req = {k: _quantity(v) for k, v in (c["resources"].get("requests") or {}).items()}
        assert "cpu" in req and "memory" in req, f"{stage}: Kueue counts quota from requests"
        assert any(all(req.get(r, 0) <= quota.get(r, 0) for r in req) for quota in quotas), (stage, req)
