"""A tiny fake workspace (prepare/beir + train/model) to run the real export stage on, for tests and benches.

The test split is deliberately made of near-duplicate passages (the same field described for six
workload kinds), so rankings hinge on small score differences and a lossy variant (int8) measurably
changes nDCG@10.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eft.settings import StageSettings

KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
FIELDS = {
    "replicas": "Number of desired pods for this {kind}. This is a pointer to distinguish between explicit zero "
                "and not specified. Defaults to 1.",
    "minReadySeconds": "Minimum number of seconds for which a newly created pod of the {kind} should be ready without "
                       "any of its containers crashing, for it to be considered available. Defaults to 0.",
    "selector": "Label query over pods that should match the replica count of the {kind}. It must match the pod "
                "template's labels.",
    "template": "Template describes the pods that will be created by the {kind} controller.",
    "revisionHistoryLimit": "The number of old {kind} revisions to retain to allow rollback. This is a pointer to "
                            "distinguish between explicit zero and not specified. Defaults to 10.",
    "paused": "Indicates that the {kind} is paused and will not be processed by its controller.",
    "updateStrategy": "The strategy used to replace existing pods of the {kind} with new ones, for example a rolling "
                      "update with a maximum number of unavailable pods.",
}
QUESTIONS = {
    "replicas": "how many pods does a {kind} run",
    "minReadySeconds": "how long must a new {kind} pod be ready before it counts as available",
    "selector": "which label query selects the pods of a {kind}",
    "template": "what describes the pods a {kind} creates",
    "revisionHistoryLimit": "how many old revisions does a {kind} keep for rollback",
    "paused": "how do I pause a {kind}",
    "updateStrategy": "how are {kind} pods replaced during an update",
}


def tiny_beir(folder: Path, n_queries: int = 24) -> Path:
    """corpus.jsonl, queries.jsonl, qrels/test.tsv (and dev.tsv) in BEIR format."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, rels = [], [], []
    for ki, kind in enumerate(KINDS):
        for fi, (field, desc) in enumerate(FIELDS.items()):
            did = f"d-{kind.lower()}-{field.lower()}"
            corpus.append({"_id": did, "title": f"{kind}Spec.{field}", "text": desc.format(kind=kind),
                           "metadata": {"source": f"{kind}.md", "position": fi}})
            if (ki * len(FIELDS) + fi) % 2 == 0 and len(queries) < n_queries:
                qid = f"q-{kind.lower()}-{field.lower()}"
                queries.append({"_id": qid, "text": QUESTIONS[field].format(kind=kind)})
                rels.append((qid, did))
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for row in corpus:
            f.write(json.dumps(row) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for row in queries:
            f.write(json.dumps(row) + "\n")
    for split, part in (("test", rels), ("dev", rels[:4])):
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d in part:
                f.write(f"{q}\t{d}\t1\n")
    return folder


def _stage_manifest(stage: str) -> dict[str, Any]:
    m = {"stage": stage, "status": "succeeded", "outputsDigest": f"fake-{stage}", "counts": {}, "outputs": {}}
    if stage == "evaluate":  # a passed gate, reported as the evaluate stage reports it
        from eft.stage_reports import EvaluateReport

        m["summary"] = EvaluateReport(base_ndcg10=0.5, tuned_ndcg10=0.5, gate="passed", gate_metric="ndcg@10",
                                      gate_dataset="test").line()
    return m


def fake_workspace(root: Path, model_path: str | None = None) -> Path:
    """A workspace whose prepare, train and evaluate stages look complete: the export stage can run on it.

    train/model is a symlink to `model_path` (default: the bundled base model standing in for the tuned one).
    """
    from eft.models import resolve_model_path

    root = Path(root)
    if not (root / "prepare" / "beir" / "corpus.jsonl").is_file():
        tiny_beir(root / "prepare" / "beir")
    (root / "train").mkdir(parents=True, exist_ok=True)
    link = root / "train" / "model"
    if not link.exists():
        os.symlink(model_path or resolve_model_path("bundled"), link, target_is_directory=True)
    (root / "evaluate").mkdir(parents=True, exist_ok=True)
    (root / "evaluate" / "metrics.json").write_text("{}\n")
    for stage in ("prepare", "train", "evaluate"):
        (root / stage / "manifest.json").write_text(json.dumps(_stage_manifest(stage)))
    return root


def fake_spec(name: str = "tiny", tensorrt: dict[str, Any] | None = None, base_model: dict[str, Any] | None = None,
              **onnx: Any):
    """An EmbeddingFinetune with export.onnx overrides (snake_case keys, e.g. max_quality_loss=0)."""
    from eft.spec import parse_document

    spec: dict[str, Any] = {"export": {"onnx": onnx, "tensorrt": tensorrt or {}}}
    if base_model:
        spec["base_model"] = base_model
    return parse_document({"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune", "metadata": {"name": name},
                           "spec": spec})


def run_export(root: Path, name: str = "tiny", tensorrt: dict[str, Any] | None = None,
               base_model: dict[str, Any] | None = None, settings: StageSettings | None = None,
               **onnx: Any) -> Path:
    """Run the real export stage on a fake workspace; returns the published export folder.

    ``settings``: how the stage runs (default: read from the environment, as `eft stage` does)."""
    from eft.pipeline import execute_stage
    from eft.workspace import Workspace

    fake_workspace(root)
    efr = fake_spec(name, tensorrt=tensorrt, base_model=base_model, **onnx)
    ws = Workspace(Path(root))
    execute_stage(efr, ws, "export", progress=lambda msg: None, settings=settings)
    return ws.stage_dir("export")


_SHARED: dict[str, Path] = {}


def shared_export(tmp_root: Path) -> Path:
    """One export of the bundled model per process (tests of several modules share it)."""
    if "default" not in _SHARED:
        _SHARED["default"] = run_export(Path(tmp_root) / "shared-ws")
    return _SHARED["default"]
