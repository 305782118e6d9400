"""The export stage on a tiny fake workspace (the bundled model standing in for the tuned one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from eft.stages import export as export_stage

from eft.pipeline import StageFailed
from eft.serving.backends import load_backend
from eft.serving.manifest import MODEL_MANIFEST
from eft.settings import StageSettings
from tests.support.export_workspace import fake_workspace, run_export, shared_export, tiny_beir
from eft.stage_reports import ExportReport, model_digest
from eft.workspace import sha256_file


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def manifest(export_dir) -> dict:
    return json.loads((export_dir / MODEL_MANIFEST).read_text())


def test_manifest_fields(export_dir, manifest):
    m = manifest
    assert m["format"] == "eft.export/v1"
    assert m["model_name"] == "tiny-embed"
    assert (m["dimension"], m["max_seq_length"], m["pooling"], m["normalized"]) == (384, 256, "mean", True)
    assert m["prefixes"] == {"query": "", "passage": ""}
    assert m["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["onnx"] == {"status": "exported", "opset": 17, "exporter": "torchscript",
                         "dynamic_axes": ["batch", "sequence"]}
    # every file of the folder but the two manifests is listed, with its real checksum and size
    on_disk = {p.name for p in export_dir.iterdir() if p.is_file()} - {MODEL_MANIFEST, "manifest.json"}
    assert set(m["files"]) == on_disk
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= on_disk
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(export_dir / name)
        assert entry["bytes"] == (export_dir / name).stat().st_size
    # validation against PyTorch covered short, medium and maximum-length texts
    v = m["validation"]
    assert v["min_cosine"] >= 0.9999 and set(v["by_length"]) == {"short", "medium", "max"}
    assert v["token_lengths"]["max"] == 256
    # variants, with measured quality
    fp32, int8 = m["variants"]["fp32"], m["variants"]["int8"]
    assert fp32["status"] == "accepted" and 0 < fp32["quality"]["ndcg@10"] <= 1
    assert int8["status"] == "accepted" and int8["file"] == "model.int8.onnx"
    assert "ndcg@10" in int8["quality"] and "relative_loss" in int8 and "delta" in int8
    assert int8["relative_loss"] <= 0.01
    assert m["served_variants"] == ["fp32", "int8"] and m["default_variant"]["cpu"] == "int8"
    assert m["tensorrt"]["status"] == "skipped: disabled"
    assert m["source"]["path"] == "../train/model" and "model.safetensors" in m["source"]["files"]
    assert m["quality"] == {"metric": "ndcg@10", "split": "test", "max_quality_loss": 0.01, "queries": 21,
                            "passages": 42, "corpus_capped": False}


def test_stage_manifest_is_separate_and_covers_model_manifest(export_dir):
    stage = json.loads((export_dir / "manifest.json").read_text())
    assert stage["status"] == "succeeded" and stage["stage"] == "export"
    assert MODEL_MANIFEST in stage["outputs"]  # a file named manifest.json would be left out of the digest
    assert stage["counts"]["variants"] == 2 and stage["counts"]["min_cosine"] >= 0.9999
    report = ExportReport.parse(stage["summary"])
    assert report.variants == ["fp32", "int8"] and report.tensorrt == "skipped"
    # status.modelDigest: the digest of exactly the files the stage published
    assert report.model_digest == model_digest(stage["outputs"])


def test_onnx_graph_is_dynamic_and_normalised(export_dir):
    g = onnx.load(str(export_dir / "model.onnx"))
    assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for inp in g.graph.input:
        dims = [d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (inp.name, dims)
    assert [d.dim_param for d in g.graph.output[0].type.tensor_type.shape.dim][0] == "batch"
    s = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 3), (3, 17), (2, 256)):
        ids = rng.integers(1000, 20000, (batch, seq))
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        if batch > 1:
            mask[0, seq // 2:] = 0
        out = s.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        assert out.shape == (batch, 384)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_judge():
    assert export_stage.judge(0.80, 0.80, 0.0)[0] == "accepted"
    assert export_stage.judge(0.80, 0.81, 0.0)[:2] == ("accepted", -0.0125)
    status, rel, reason = export_stage.judge(0.80, 0.7999, 0.0)
    assert status == "rejected" and rel == 0.000125 and "more than maxQualityLoss 0.00%" in reason
    assert export_stage.judge(0.80, 0.79, 0.0125)[0] == "accepted"
    assert export_stage.judge(0.80, 0.79, 0.0124)[0] == "rejected"


def test_threads_come_from_the_stage_settings():
    from eft.serving.backends import available_cpus

    assert export_stage._threads(StageSettings(threads=3)) == 3
    assert export_stage._threads(StageSettings()) == available_cpus()


def _graded_qrels_from(export_dir: Path, beir: Path) -> None:
    """Test qrels = fp32's own top-10 ranking (graded 10..1): fp32 scores nDCG@10 = 1 by construction and
    any variant that changes a ranking scores below it, so a lossy variant is guaranteed to be lossy."""
    from eft.textutil import passage_text

    b = load_backend(export_dir, variant="fp32", device="cpu", threads=2)
    corpus = [json.loads(x) for x in (beir / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (beir / "queries.jsonl").read_text().splitlines()]
    d = b.embed_texts([passage_text(c) for c in corpus])
    q = b.embed_texts([x["text"] for x in queries])
    lines = ["query-id\tcorpus-id\tscore"]
    for qi, row in enumerate(q @ d.T):
        for rank, j in enumerate(np.argsort(-row)[:10]):
            lines.append(f"{queries[qi]['_id']}\t{corpus[j]['_id']}\t{10 - rank}")
    (beir / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")


def test_lossy_variant_rejected_at_zero_tolerance(export_dir, tmp_path):
    root = fake_workspace(tmp_path / "ws")
    _graded_qrels_from(export_dir, root / "prepare" / "beir")
    out = run_export(root, max_quality_loss=0.0, fp16=True, tensorrt={"enabled": True})
    m = json.loads((out / MODEL_MANIFEST).read_text())
    fp32, int8, fp16 = (m["variants"][k] for k in ("fp32", "int8", "fp16"))
    assert fp32["quality"]["ndcg@10"] == pytest.approx(1.0, abs=1e-6)
    # int8 must be measurably lossy here, else this test could not tell a broken rejection from a working one
    assert int8["quality"]["ndcg@10"] < fp32["quality"]["ndcg@10"]
    assert int8["relative_loss"] > 0
    assert int8["status"] == "rejected" and int8["file"] is None
    assert "more than maxQualityLoss 0.00%" in int8["reason"] and len(int8["rejected_sha256"]) == 64
    assert not (out / "model.int8.onnx").exists() and "model.int8.onnx" not in m["files"]
    assert "int8" not in m["served_variants"] and m["default_variant"]["cpu"] == "fp32"
    # fp16 was built and measured (on CPU here) and judged by the same rule
    assert fp16["measured_on"] in ("cpu", "cuda") and "ndcg@10" in fp16["quality"]
    assert fp16["status"] == ("rejected" if fp16["relative_loss"] > 0 else "accepted")
    assert (fp16["status"] == "accepted") == (out / "model.fp16.onnx").exists()
    # TensorRT was asked for but is not installed here
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert m["tensorrt"]["status"] == "skipped: TensorRT not installed"
    # the rejected variant cannot be served; fp32 is the CPU default
    from eft.serving.manifest import ModelRefused

    with pytest.raises(ModelRefused, match="int8 is not servable: loses"):
        load_backend(out, variant="int8", device="cpu")
    assert load_backend(out, device="cpu", threads=1).variant == "fp32"
    # the report shows the rejection
    text = export_stage.report(out, settings=StageSettings(smoke_test=False))
    assert "smoke check" not in text
    assert "rejected" in text and "int8: loses" in text and "TensorRT:" in text


def test_report_ends_with_a_running_server_smoke_check(export_dir):
    text = export_stage.report(export_dir)
    lines = text.splitlines()
    assert lines[1].split()[:5] == ["variant", "status", "file", "MB", "ndcg@10"]
    assert any(line.startswith("int8 ") and "accepted" in line for line in lines)
    assert any(line.startswith("smoke check OK: served 'tiny-embed'") for line in lines), text


def test_validation_failure_fails_the_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(export_stage, "MIN_COSINE", 1.5)  # nothing can pass
    monkeypatch.setattr(export_stage, "EXPORTERS", ("torchscript",))  # (one export is enough to show it)
    with pytest.raises(StageFailed, match="fp32 ONNX export failed validation"):
        run_export(tmp_path / "ws", int8=False)
    assert not (tmp_path / "ws" / "export").exists()


def test_quality_is_measured_on_the_test_split_else_on_validation_else_on_training_questions(tmp_path):
    from eft.stages.export_quality import load_test_split

    beir = tiny_beir(tmp_path / "b")
    name, split = load_test_split(beir)
    assert name == "test" and len(split.queries) == 21
    # split.test resolved to 0 (the gate reads a human-labelled dataset): prepare writes an empty test split
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    name, split = load_test_split(beir)
    assert name == "dev" and len(split.queries) == len(split.qrels) == 4
    (beir / "qrels" / "dev.tsv").rename(beir / "qrels" / "train.tsv")
    assert load_test_split(beir)[0] == "train"


def test_no_questions_to_measure_on_fails_fast(tmp_path):
    root = fake_workspace(tmp_path / "ws")
    for split in ("test", "dev"):
        (root / "prepare" / "beir" / "qrels" / f"{split}.tsv").unlink()
    with pytest.raises(StageFailed, match="measures quality on prepare's questions, and .* has none"):
        run_export(root)


def test_onnx_disabled(tmp_path):
    out = run_export(tmp_path / "ws", enabled=False)
    m = json.loads((out / MODEL_MANIFEST).read_text())
    assert m["onnx"] == {"status": "skipped: disabled"} and m["variants"] == {} and m["files"] == {}
    assert export_stage.report(out).splitlines()[0].startswith("export:")


def test_tiny_beir_loads_with_beir(tmp_path):
    from beir.datasets.data_loader import GenericDataLoader

    corpus, queries, qrels = GenericDataLoader(str(tiny_beir(tmp_path / "b"))).load(split="test")
    assert len(corpus) == 42 and len(queries) == len(qrels) == 21
