"""export stage: the tuned model as a validated ONNX embedding function, quantized variants, TensorRT engine.

Inputs: train/model (the tuned sentence-transformers model), prepare/beir (test split for quality).
Output folder (servable as is with `eft serve --model <workspace>/export`):

    model.onnx                fp32 graph: (input_ids, attention_mask[, token_type_ids]) -> L2-normalised
                              pooled embedding, dynamic batch and sequence axes
    model.int8.onnx           dynamic int8 (CPU), if exported and accepted
    model.fp16.onnx           fp16 (GPU), if spec.export.onnx.fp16 and accepted
    tokenizer.json, tokenizer_config.json, vocab/merges..., config.json
    tensorrt/model.plan       TensorRT engine, if enabled and TensorRT is installed
    model-manifest.json       the model's manifest (eft.serving.manifest): every file with its sha256,
                              dimension, max length, pooling, prefixes, default served name, variants with
                              their measured test-split nDCG@10 and status, validation, TensorRT status
    manifest.json             the runner's stage manifest (not ours)

The fp32 graph must reproduce PyTorch (cosine >= 0.9999 on short, medium and maximum-length test texts,
in batches and alone) or the stage fails. Each variant's nDCG@10 on the test split (exact cosine
retrieval, BEIR's EvaluateRetrieval) is compared with fp32 ONNX; one losing more than
spec.export.onnx.maxQualityLoss (relative) is rejected: recorded with its numbers, its file removed.

The steps live in their own modules: export_validation (fp32 vs PyTorch), export_quality (the test split,
nDCG@10, the acceptance rule), export_variants (int8, fp16), export_tensorrt, export_report (what
`eft run` prints, with the HTTP smoke check).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eft.pipeline import StageContext, StageFailed
from eft.settings import StageSettings
from eft.stage_reports import EvaluateReport, ExportReport, gate_reason_suffix, model_digest
from eft.stages.export_quality import METRIC, QualitySplit, Reference, judge, load_test_split, measure_reference
from eft.stages.export_report import report
from eft.stages.export_tensorrt import tensorrt_engine
from eft.stages.export_validation import compare_with_pytorch, flat_texts, validation_texts
from eft.stages.export_variants import ExportFolder, build_variants, fp32_entry
from eft.workspace import MANIFEST, StageResult, digest_tree, write_json_atomic

# The stage module's public face: `run` for the runner, `report` for `eft run`, `judge` the acceptance rule.
__all__ = ["EXPORTERS", "MIN_COSINE", "judge", "report", "run"]

log = logging.getLogger("eft.export")

MIN_COSINE = 0.9999
# The TorchScript exporter first (exact opset, no extra package); the dynamo exporter as the fallback.
EXPORTERS = ("torchscript", "dynamo")


def _fail(msg: str) -> StageFailed:
    return StageFailed("export", msg)


@dataclass
class _Exported:
    """What the ONNX steps produced: the model manifest and the stage result are written from it."""

    facts: dict[str, Any]
    onnx: dict[str, Any]  # eft.onnx_export.export_onnx's answer: exporter, opset, inputs
    validation: dict[str, Any]
    reference: Reference
    variants: dict[str, dict[str, Any]]
    tensorrt: dict[str, Any]

    @property
    def served(self) -> list[str]:
        return [v for v, e in self.variants.items() if e["status"] == "accepted"]


def run(ctx: StageContext) -> StageResult:
    import torch

    _refuse_gated_model(ctx)
    model_dir = _tuned_model_dir(ctx)
    beir_dir = ctx.input("prepare") / "beir"
    threads = _threads(ctx.settings)
    torch.set_num_threads(threads)
    manifest = _manifest_head(ctx, model_dir)
    t0 = time.perf_counter()
    if not ctx.spec.export.onnx.enabled:
        return _onnx_disabled(ctx, manifest)
    split_name, split = load_test_split(beir_dir)
    manifest["quality"]["split"] = split_name
    exported = _export(ctx, model_dir, split, manifest["prefixes"], threads)
    _write_model_manifest(ctx.out, model_dir, manifest, exported)
    _log_outcome(exported, time.perf_counter() - t0)
    return _stage_result(ctx.out, exported)


def _export(ctx: StageContext, model_dir: Path, split: QualitySplit, prefixes: dict[str, str],
            threads: int) -> _Exported:
    """fp32 ONNX validated against PyTorch, then the variants and the TensorRT engine, all into ctx.out."""
    spec = ctx.spec
    st, facts = _load_model(ctx, model_dir)
    texts = validation_texts(st, split.corpus, split.queries, facts["max_seq_length"])
    folder = ExportFolder(ctx.out, facts, prefixes, threads)
    onnx_info, validation, fp32 = _export_fp32(ctx, st, folder, texts)
    reference = measure_reference(fp32, split, prefixes, flat_texts(texts), ctx.progress)
    fp32.close()
    variants = {"fp32": fp32_entry(reference)}
    variants.update(build_variants(folder, spec.export.onnx, st[0].auto_model.config, reference, ctx.progress))
    trt = tensorrt_engine(folder, spec.export.tensorrt, reference, ctx.progress)
    return _Exported(facts, onnx_info, validation, reference, variants, trt)


def _refuse_gated_model(ctx: StageContext) -> None:
    """A model the quality gate stopped is never exported, whoever asks (a runner, `eft stage export`)."""
    evaluate = ctx.workspace.manifest("evaluate") or {}
    verdict = EvaluateReport.parse(evaluate.get("summary"))
    if verdict is None:
        raise _fail("the evaluate stage's report is missing or unreadable: re-run evaluate")
    if verdict.blocks_shipping():
        why = gate_reason_suffix(verdict.gate_reason)
        raise _fail(f"the quality gate failed ({verdict.gate_metric} on {verdict.gate_dataset}: tuned "
                    f"{verdict.gate_tuned if verdict.gate_tuned is not None else verdict.tuned_ndcg10} vs base "
                    f"{verdict.gate_base if verdict.gate_base is not None else verdict.base_ndcg10}{why}); nothing "
                    "is exported. Set evaluation.gate.override: true to ship anyway")


def _tuned_model_dir(ctx: StageContext) -> Path:
    model_dir = ctx.input("train") / "model"
    if not model_dir.is_dir():
        raise _fail(f"{model_dir} is missing: the train stage publishes the tuned model there")
    return model_dir


def _threads(settings: StageSettings) -> int:
    """Torch and ONNX Runtime threads: the setting, else every CPU this process may use."""
    from eft.serving.backends import available_cpus

    return settings.threads if settings.threads is not None else available_cpus()


def _manifest_head(ctx: StageContext, model_dir: Path) -> dict[str, Any]:
    """The model manifest's fields known before anything is exported."""
    from eft.serving.manifest import FORMAT

    spec = ctx.spec
    return {
        "format": FORMAT,
        "model_name": ctx.efr.served_model_name(),
        "created_unix": int(time.time()),
        "prefixes": {"query": spec.base_model.query_prefix, "passage": spec.base_model.passage_prefix},
        # Relative, so the workspace can be mounted anywhere (the torch backend serves it from the export).
        "source": {"path": os.path.relpath(os.path.abspath(model_dir),
                                           os.path.abspath(ctx.workspace.stage_dir("export")))},
        "quality": {"metric": METRIC, "split": "test", "max_quality_loss": spec.export.onnx.max_quality_loss},
    }


def _onnx_disabled(ctx: StageContext, manifest: dict[str, Any]) -> StageResult:
    """export.onnx.enabled false: a model manifest that says so (the torch backend can still serve the source)."""
    from eft.serving.manifest import MODEL_MANIFEST

    manifest.update(files={}, variants={}, served_variants=[], onnx={"status": "skipped: disabled"},
                    tensorrt={"status": "skipped: needs the ONNX export (export.onnx.enabled is false)"},
                    dimension=0, max_seq_length=ctx.spec.base_model.max_seq_length)
    write_json_atomic(ctx.out / MODEL_MANIFEST, manifest)
    summary = ExportReport(model_digest=model_digest(digest_tree(ctx.out)), variants=[], tensorrt="skipped")
    return StageResult(counts={"variants": 0}, details={"onnx": "skipped: disabled"}, summary=summary.line())


def _load_model(ctx: StageContext, model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The tuned model on CPU (where the graph is traced and validated) and its facts (eft.onnx_export)."""
    from eft import onnx_export as ox
    from eft.models import load_sentence_model

    ctx.progress(f"loading {model_dir}")
    st = load_sentence_model(ctx.spec.base_model, path=str(model_dir), device="cpu")
    st.eval()
    if getattr(st, "default_prompt_name", None):
        st.default_prompt_name = None  # prefixes are applied by the caller, never implicitly
    try:
        return st, ox.model_facts(st)
    except ox.ExportError as exc:
        raise _fail(str(exc)) from None


def _export_fp32(ctx: StageContext, st: Any, folder: ExportFolder,
                 texts: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """model.onnx from the first exporter whose graph reproduces PyTorch: (export info, validation, fp32 backend)."""
    from eft import onnx_export as ox

    opset = ctx.spec.export.onnx.opset
    # The backends that validate the graph read the tokenizer and config from the folder.
    st.tokenizer.save_pretrained(str(folder.path))
    st[0].auto_model.config.save_pretrained(str(folder.path))
    problems: list[str] = []
    for exporter in EXPORTERS:
        ctx.progress(f"exporting ONNX fp32 (opset {opset}, {exporter} exporter)")
        try:
            info = ox.export_onnx(st, folder.file("fp32"), opset=opset, exporter=exporter)
        except ox.ExportError as exc:
            problems.append(str(exc))
            continue
        folder.facts["inputs"] = info["inputs"]
        backend = folder.open("fp32")
        validation = compare_with_pytorch(st, backend, texts, MIN_COSINE)
        if validation["min_cosine"] >= MIN_COSINE:
            ctx.progress(f"fp32 ONNX matches PyTorch: min cosine {validation['min_cosine']:.6f} over "
                         f"{validation['texts']} texts ({validation['token_lengths']['min']}-"
                         f"{validation['token_lengths']['max']} tokens)")
            return info, validation, backend
        backend.close()
        problems.append(f"{exporter} export: cosine vs PyTorch {validation['min_cosine']:.6f} < {MIN_COSINE} "
                        f"(by length: {validation['by_length']})")
    raise _fail("fp32 ONNX export failed validation: " + "; ".join(problems))


def _write_model_manifest(out: Path, model_dir: Path, manifest: dict[str, Any], exported: _Exported) -> None:
    """Every published file with its checksum, the source model's files, and what the export found."""
    from eft import onnx_export as ox
    from eft.serving.manifest import MODEL_MANIFEST, file_entry

    facts, served = exported.facts, exported.served
    manifest["source"]["files"] = {p.relative_to(model_dir).as_posix(): file_entry(p)
                                   for p in sorted(model_dir.rglob("*")) if p.is_file()}
    manifest.update(
        files={p.relative_to(out).as_posix(): file_entry(p) for p in sorted(out.rglob("*"))
               if p.is_file() and p.name not in (MODEL_MANIFEST, MANIFEST)},
        dimension=facts["dimension"],
        max_seq_length=facts["max_seq_length"],
        pooling=facts["pooling"],
        normalized=True,
        pad_token_id=facts["pad_token_id"],
        inputs=facts["inputs"],
        output=ox.OUTPUT_NAME,
        architecture=facts["architecture"],
        modules=facts["modules"],
        onnx={"status": "exported", "opset": exported.onnx["opset"], "exporter": exported.onnx["exporter"],
              "dynamic_axes": ["batch", "sequence"]},
        validation=exported.validation,
        variants=exported.variants,
        served_variants=served,
        default_variant={"cpu": "int8" if "int8" in served else "fp32", "gpu": "fp16" if "fp16" in served else "fp32"},
        tensorrt=exported.tensorrt,
    )
    manifest["quality"].update(exported.reference.scope())
    write_json_atomic(out / MODEL_MANIFEST, manifest)


def _variant_outcome(variants: dict[str, dict[str, Any]], name: str) -> str:
    e = variants.get(name)
    if not e:
        return "off"
    if e["status"] == "failed":
        return "failed"
    return f"{e['status']} ({-e['relative_loss']:+.3%})"


def _log_outcome(exported: _Exported, seconds: float) -> None:
    v = exported.variants
    log.info("export: ONNX opset %s fp32 %s %.4f; int8 %s; fp16 %s; TensorRT %s (%.1fs)", exported.onnx["opset"],
             METRIC, exported.reference.score, _variant_outcome(v, "int8"), _variant_outcome(v, "fp16"),
             exported.tensorrt["status"], seconds)


def _stage_result(out: Path, exported: _Exported) -> StageResult:
    variants = exported.variants
    counts = {"variants": len(exported.served), "dimension": exported.facts["dimension"],
              "min_cosine": exported.validation["min_cosine"], f"fp32_{METRIC}": exported.reference.score}
    for v in ("int8", "fp16"):
        if v in variants and "relative_loss" in variants[v]:
            counts[f"{v}_loss"] = variants[v]["relative_loss"]
    summary = ExportReport(model_digest=model_digest(digest_tree(out)), variants=list(exported.served),
                           tensorrt=str(exported.tensorrt["status"]).split(":")[0])
    details = {"variants": {k: {kk: vv for kk, vv in e.items() if kk != "fused"} for k, e in variants.items()},
               "tensorrt": exported.tensorrt, "validation": exported.validation}
    return StageResult(counts=counts, details=details, summary=summary.line())
