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
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from eft.pipeline import StageContext, StageFailed
from eft.stage_reports import EvaluateReport, ExportReport, model_digest
from eft.textutil import passage_text
from eft.workspace import MANIFEST, StageResult, digest_tree, read_json, write_json_atomic

log = logging.getLogger("eft.export")

MIN_COSINE = 0.9999
METRIC = "ndcg@10"
# Quality is measured on the whole test corpus up to this many passages (then: every relevant passage
# plus a fixed random sample), to bound the time of three full-corpus encodings on CPU.
MAX_QUALITY_CORPUS = 50_000
# The TorchScript exporter first (exact opset, no extra package); the dynamo exporter as the fallback.
EXPORTERS = ("torchscript", "dynamo")
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def _fail(msg: str) -> StageFailed:
    return StageFailed("export", msg)


# ------------------------------------------------------------------------------------ data


def load_test_split(beir_dir: Path) -> tuple[dict, dict, dict]:
    """The workspace's test split through the same loader the evaluate stage uses."""
    from eft.metrics import DatasetError, load_beir

    try:
        data = load_beir(beir_dir, "test")
    except DatasetError as exc:
        raise _fail(f"the export measures quality on the test split: {exc}") from None
    return data.corpus, data.queries, data.qrels


def validation_texts(st: Any, corpus: dict, queries: dict, max_len: int) -> dict[str, list[str]]:
    """Held-out test texts: short (queries), medium (passages), and one that reaches max_seq_length."""
    qids = sorted(queries)[:8]
    short = [queries[q] for q in qids if queries[q].strip()]
    docs = [passage_text(corpus[d]) for d in sorted(corpus)[:200]]
    docs = [d for d in docs if d]
    medium = docs[:8]
    long_ = ""
    pool = docs or short or ["kubernetes pod container"]
    i = 0
    tok = st.tokenizer
    while len(tok(long_, truncation=False, verbose=False)["input_ids"]) <= max_len + 8:
        long_ = (long_ + " " + pool[i % len(pool)]).strip()
        i += 1
        if i > 10_000:  # pragma: no cover - pathological tokenizer
            break
    return {"short": short or ["what is a pod?"], "medium": medium or pool[:1], "max": [long_]}


# ------------------------------------------------------------------------------------ quality


def measure_quality(backend: Any, corpus: dict, queries: dict, qrels: dict, prefixes: dict[str, str],
                    k_values: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Exact cosine retrieval over the test corpus with `backend`; metrics as the evaluate stage computes them."""
    from eft.metrics import score, search

    doc_ids = list(corpus)
    qids = [q for q in queries if q in qrels]
    d_emb = backend.embed_texts([prefixes.get("passage", "") + passage_text(corpus[d]) for d in doc_ids])
    q_emb = backend.embed_texts([prefixes.get("query", "") + queries[q] for q in qids])
    scores, idx = search(q_emb, d_emb, max(k_values))
    results = {q: {doc_ids[j]: float(s) for j, s in zip(idx[r], scores[r])} for r, q in enumerate(qids)}
    metrics = score({q: qrels[q] for q in qids}, results, list(k_values))
    return {f"{m}@{k}": round(metrics[f"{m}@{k}"], 6) for k in k_values for m in ("ndcg", "recall")}


def cap_corpus(corpus: dict, qrels: dict, limit: int = MAX_QUALITY_CORPUS, seed: int = 0) -> tuple[dict, bool]:
    if len(corpus) <= limit:
        return corpus, False
    keep = {d for rels in qrels.values() for d in rels if d in corpus}
    rest = sorted(set(corpus) - keep)
    random.Random(seed).shuffle(rest)
    keep.update(rest[: max(0, limit - len(keep))])
    return {d: corpus[d] for d in corpus if d in keep}, True


def judge(base: float, value: float, max_loss: float) -> tuple[str, float, str | None]:
    """(status, relative loss, reason) of a variant scoring `value` against fp32's `base`."""
    rel = (base - value) / base if base > 0 else (0.0 if value >= base else float("inf"))
    rel = round(rel, 6)
    if rel > max_loss:
        return "rejected", rel, (f"loses {rel:.3%} {METRIC} relative to fp32 ({value:.4f} vs {base:.4f}), "
                                 f"more than maxQualityLoss {max_loss:.2%}")
    return "accepted", rel, None


# ------------------------------------------------------------------------------------ stage


def _threads() -> int:
    from eft.serving.backends import available_cpus

    env = os.environ.get("EFT_THREADS")
    return int(env) if env else available_cpus()


def _provisional_manifest(facts: dict, prefixes: dict, files: dict[str, str]) -> dict[str, Any]:
    return {
        "format": "eft.export/v1", "files": {}, "dimension": facts["dimension"],
        "max_seq_length": facts["max_seq_length"], "pooling": facts["pooling"], "prefixes": prefixes,
        "pad_token_id": facts["pad_token_id"], "inputs": facts["inputs"],
        "variants": {v: {"file": f, "status": "accepted"} for v, f in files.items()},
    }


def _backend(out: Path, facts: dict, prefixes: dict, variant: str, device: str, threads: int):
    from eft.serving.backends import OnnxBackend

    m = _provisional_manifest(facts, prefixes, {variant: VARIANT_FILES[variant]})
    return OnnxBackend(out, variant=variant, device=device, threads=threads, manifest=m)


def _validate(st: Any, backend: Any, texts: dict[str, list[str]]) -> dict[str, Any]:
    """Cosine of ONNX vs PyTorch per text, batched together and one at a time."""
    from eft.onnx_export import cosine_rows

    all_texts = [t for group in texts.values() for t in group]
    ref = st.encode(all_texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False)
    ids = backend.tokenizer.encode(all_texts, truncate=True)
    batched = backend.embed(ids)
    single = np.concatenate([backend.embed([x]) for x in ids])
    cos = np.minimum(cosine_rows(ref, batched), cosine_rows(ref, single))
    per_group: dict[str, float] = {}
    i = 0
    for name, group in texts.items():
        per_group[name] = round(float(cos[i : i + len(group)].min()), 7)
        i += len(group)
    lengths = [len(x) for x in ids]
    return {"min_cosine": round(float(cos.min()), 7), "by_length": per_group, "texts": len(all_texts),
            "token_lengths": {"min": min(lengths), "max": max(lengths)}, "threshold": MIN_COSINE}


def run(ctx: StageContext) -> StageResult:
    import torch

    from eft import onnx_export as ox
    from eft.models import load_sentence_model
    from eft.serving.manifest import FORMAT, MODEL_MANIFEST, file_entry

    spec = ctx.spec
    osp, tsp = spec.export.onnx, spec.export.tensorrt
    _refuse_gated_model(ctx)
    train_dir = ctx.input("train")
    model_dir = train_dir / "model"
    if not model_dir.is_dir():
        raise _fail(f"{model_dir} is missing: the train stage publishes the tuned model there")
    beir_dir = ctx.input("prepare") / "beir"
    out = ctx.out
    threads = _threads()
    torch.set_num_threads(threads)
    prefixes = {"query": spec.base_model.query_prefix, "passage": spec.base_model.passage_prefix}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model_name": ctx.efr.served_model_name(),
        "created_unix": int(time.time()),
        "prefixes": prefixes,
        # Relative, so the workspace can be mounted anywhere (the torch backend serves it from the export).
        "source": {"path": os.path.relpath(os.path.abspath(model_dir),
                                           os.path.abspath(ctx.workspace.stage_dir("export")))},
        "quality": {"metric": METRIC, "split": "test", "max_quality_loss": osp.max_quality_loss},
    }
    t0 = time.perf_counter()
    if not osp.enabled:
        manifest.update(files={}, variants={}, served_variants=[], onnx={"status": "skipped: disabled"},
                        tensorrt={"status": "skipped: needs the ONNX export (export.onnx.enabled is false)"},
                        dimension=0, max_seq_length=spec.base_model.max_seq_length)
        write_json_atomic(out / MODEL_MANIFEST, manifest)
        report = ExportReport(model_digest=model_digest(digest_tree(out)), variants=[], tensorrt="skipped")
        return StageResult(counts={"variants": 0}, details={"onnx": "skipped: disabled"}, summary=report.line())

    corpus, queries, qrels = load_test_split(beir_dir)
    ctx.progress(f"loading {model_dir}")
    st = load_sentence_model(spec.base_model, path=str(model_dir), device="cpu")
    st.eval()
    if getattr(st, "default_prompt_name", None):
        st.default_prompt_name = None  # prefixes are applied by the caller, never implicitly
    try:
        facts = ox.model_facts(st)
    except ox.ExportError as exc:
        raise _fail(str(exc)) from None
    max_len = facts["max_seq_length"]
    texts = validation_texts(st, corpus, queries, max_len)

    # -- fp32 graph, validated against PyTorch (the dynamo exporter is the fallback) --------------
    fp32_path = out / VARIANT_FILES["fp32"]
    st.tokenizer.save_pretrained(str(out))
    st[0].auto_model.config.save_pretrained(str(out))
    validation: dict[str, Any] = {}
    export_info: dict[str, Any] = {}
    problems: list[str] = []
    for exporter in EXPORTERS:
        ctx.progress(f"exporting ONNX fp32 (opset {osp.opset}, {exporter} exporter)")
        try:
            export_info = ox.export_onnx(st, fp32_path, opset=osp.opset, exporter=exporter)
        except ox.ExportError as exc:
            problems.append(str(exc))
            continue
        backend = _backend(out, facts | {"inputs": export_info["inputs"]}, prefixes, "fp32", "cpu", threads)
        validation = _validate(st, backend, texts)
        if validation["min_cosine"] >= MIN_COSINE:
            break
        problems.append(f"{exporter} export: cosine vs PyTorch {validation['min_cosine']:.6f} < {MIN_COSINE} "
                        f"(by length: {validation['by_length']})")
    else:
        raise _fail("fp32 ONNX export failed validation: " + "; ".join(problems))
    ctx.progress(f"fp32 ONNX matches PyTorch: min cosine {validation['min_cosine']:.6f} over "
                 f"{validation['texts']} texts ({validation['token_lengths']['min']}-"
                 f"{validation['token_lengths']['max']} tokens)")
    facts["inputs"] = export_info["inputs"]

    # -- variants and their quality ----------------------------------------------------------------
    import onnxruntime as ort

    from eft.serving.backends import gpu_present

    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()
    q_corpus, capped = cap_corpus(corpus, qrels)
    ctx.progress(f"measuring {METRIC} of fp32 ONNX on {len(qrels)} test queries x {len(q_corpus)} passages")
    base_quality = measure_quality(backend, q_corpus, queries, qrels, prefixes)
    base = base_quality[METRIC]
    ref_emb = backend.embed_texts([t for g in texts.values() for t in g])
    fp32_device = "cpu"
    variants: dict[str, Any] = {"fp32": {"file": VARIANT_FILES["fp32"], "status": "accepted", "device": "cpu, gpu",
                                         "quality": base_quality, "relative_loss": 0.0,
                                         "measured_on": fp32_device}}
    backend.close()
    del backend
    config = st[0].auto_model.config
    wanted = [("int8", osp.int8, ox.quantize_int8, "cpu"), ("fp16", osp.fp16, ox.convert_fp16, "gpu")]
    for name, enabled, make, target in wanted:
        if not enabled:
            continue
        path = out / VARIANT_FILES[name]
        ctx.progress(f"building the {name} variant")
        device = "cuda" if (name == "fp16" and gpu) else "cpu"
        try:
            how = make(fp32_path, path, config)
            vb = _backend(out, facts, prefixes, name, device, threads)
            cos = ox.cosine_rows(ref_emb, vb.embed_texts([t for g in texts.values() for t in g]))
            ctx.progress(f"measuring {METRIC} of {name} on {device}")
            quality = measure_quality(vb, q_corpus, queries, qrels, prefixes)
            vb.close()
            del vb
        except Exception as exc:  # a variant that cannot be built or run is recorded, never served
            variants[name] = {"file": None, "status": "failed", "device": target,
                              "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            log.warning("variant %s failed: %s", name, variants[name]["reason"])
            for p in out.glob(VARIANT_FILES[name] + "*"):
                p.unlink()
            continue
        status, rel, reason = judge(base, quality[METRIC], osp.max_quality_loss)
        entry = {"file": VARIANT_FILES[name], "status": status, "device": target, "quality": quality,
                 "delta": round(quality[METRIC] - base, 6), "relative_loss": rel, "measured_on": device,
                 "cosine_vs_fp32": {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)},
                 **how}
        if status == "rejected":
            entry["reason"] = reason
            entry["rejected_sha256"] = file_entry(path)["sha256"]
            entry["file"] = None
            for p in out.glob(VARIANT_FILES[name] + "*"):
                p.unlink()
        variants[name] = entry
        ctx.progress(f"{name}: {METRIC} {quality[METRIC]:.4f} vs fp32 {base:.4f} ({-rel:+.3%}): {status}")

    # -- TensorRT ------------------------------------------------------------------------------------
    trt_info: dict[str, Any]
    if not tsp.enabled:
        trt_info = {"status": "skipped: disabled"}
    else:
        ok, why = ox.tensorrt_available()
        if not ok:
            trt_info = {"status": "skipped: TensorRT not installed", "detail": why}
        elif not torch.cuda.is_available():
            trt_info = {"status": "skipped: no CUDA GPU to build the engine on"}
        else:
            ctx.progress("building the TensorRT engine")
            (out / "tensorrt").mkdir(exist_ok=True)
            engine = out / "tensorrt" / "model.plan"
            try:
                trt_info = ox.build_tensorrt(fp32_path, engine, facts["inputs"], tsp.max_batch, max_len,
                                             fp16=True, fp8=tsp.fp8)
                from eft.serving.backends import pad_batch

                ids = _ids_for(texts, out, max_len)
                arr, mask = pad_batch(ids, facts["pad_token_id"])
                got = ox.run_tensorrt(engine, arr, mask, facts["inputs"])
                cos = ox.cosine_rows(ref_emb[: len(ids)], got)
                trt_info.update(status="built", engine=f"tensorrt/{engine.name}", gpu=torch.cuda.get_device_name(0),
                                cosine_vs_fp32={"min": round(float(cos.min()), 6)})
                if cos.min() < 0.999:
                    trt_info["status"] = "rejected"
                    trt_info["reason"] = f"cosine vs fp32 ONNX {cos.min():.5f} < 0.999"
                    shutil.rmtree(out / "tensorrt", ignore_errors=True)
            except Exception as exc:
                shutil.rmtree(out / "tensorrt", ignore_errors=True)
                trt_info = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                log.warning("TensorRT engine: %s", trt_info["status"])

    # -- manifest ------------------------------------------------------------------------------------
    served = [v for v, e in variants.items() if e["status"] == "accepted"]
    files = {p.relative_to(out).as_posix(): file_entry(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in (MODEL_MANIFEST, MANIFEST)}
    src_files = {p.relative_to(model_dir).as_posix(): file_entry(p) for p in sorted(model_dir.rglob("*"))
                 if p.is_file()}
    manifest["source"]["files"] = src_files
    manifest.update(
        files=files,
        dimension=facts["dimension"],
        max_seq_length=max_len,
        pooling=facts["pooling"],
        normalized=True,
        pad_token_id=facts["pad_token_id"],
        inputs=facts["inputs"],
        output=ox.OUTPUT_NAME,
        architecture=facts["architecture"],
        modules=facts["modules"],
        onnx={"status": "exported", "opset": export_info["opset"], "exporter": export_info["exporter"],
              "dynamic_axes": ["batch", "sequence"]},
        validation=validation,
        variants=variants,
        served_variants=served,
        default_variant={"cpu": "int8" if "int8" in served else "fp32", "gpu": "fp16" if "fp16" in served else "fp32"},
        tensorrt=trt_info,
    )
    manifest["quality"].update(queries=len([q for q in queries if q in qrels]), passages=len(q_corpus),
                               corpus_capped=capped)
    write_json_atomic(out / MODEL_MANIFEST, manifest)

    def loss(v: str) -> str:
        e = variants.get(v)
        if not e:
            return "off"
        if e["status"] == "failed":
            return "failed"
        return f"{e['status']} ({-e['relative_loss']:+.3%})"

    counts = {"variants": len(served), "dimension": facts["dimension"], "min_cosine": validation["min_cosine"],
              f"fp32_{METRIC}": base}
    for v in ("int8", "fp16"):
        if v in variants and "relative_loss" in variants[v]:
            counts[f"{v}_loss"] = variants[v]["relative_loss"]
    log.info("export: ONNX opset %s fp32 %s %.4f; int8 %s; fp16 %s; TensorRT %s (%.1fs)", export_info["opset"],
             METRIC, base, loss("int8"), loss("fp16"), trt_info["status"], time.perf_counter() - t0)
    report = ExportReport(model_digest=model_digest(digest_tree(out)), variants=list(served),
                          tensorrt=str(trt_info["status"]).split(":")[0])
    return StageResult(counts=counts, details={"variants": {k: {kk: vv for kk, vv in e.items() if kk != "fused"}
                                                            for k, e in variants.items()},
                                               "tensorrt": trt_info, "validation": validation},
                       summary=report.line())


def _refuse_gated_model(ctx: StageContext) -> None:
    """A model the quality gate stopped is never exported, whoever asks (a runner, `eft stage export`)."""
    evaluate = ctx.workspace.manifest("evaluate") or {}
    report = EvaluateReport.parse(evaluate.get("summary"))
    if report is None:
        raise _fail("the evaluate stage's report is missing or unreadable: re-run evaluate")
    if report.blocks_shipping():
        raise _fail(f"the quality gate failed ({report.gate_metric} on {report.gate_dataset}: tuned "
                    f"{report.gate_tuned if report.gate_tuned is not None else report.tuned_ndcg10} vs base "
                    f"{report.gate_base if report.gate_base is not None else report.base_ndcg10}); nothing is "
                    "exported. Set evaluation.gate.override: true to ship anyway")


def _ids_for(texts: dict[str, list[str]], out: Path, max_len: int) -> list[list[int]]:
    from eft.serving.backends import TextTokenizer

    return TextTokenizer(max_len, folder=out).encode([t for g in texts.values() for t in g], truncate=True)


# ------------------------------------------------------------------------------------ report


def format_table(manifest: dict[str, Any]) -> str:
    rows = [("variant", "status", "file", "MB", METRIC, "vs fp32", "device")]
    files = manifest.get("files") or {}
    variants = manifest.get("variants") or {}
    for name in sorted(variants, key=lambda v: (list(VARIANT_FILES).index(v) if v in VARIANT_FILES else 9, v)):
        e = variants[name]
        q = (e.get("quality") or {}).get(METRIC)
        f = e.get("file")
        mb = f"{files[f]['bytes'] / 1e6:.1f}" if f and f in files else "-"
        rel = e.get("relative_loss")
        rows.append((name, e.get("status", "?"), f or "-", mb, f"{q:.4f}" if q is not None else "-",
                     "-" if rel is None or name == "fp32" else f"{-rel:+.3%}", e.get("device", "")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(stage_dir: Path) -> str:
    try:
        return _report(Path(stage_dir))
    except Exception as exc:  # a report never breaks `eft run`
        return f"export: no report ({type(exc).__name__}: {exc})"


def _report(stage_dir: Path) -> str:
    from eft.serving.manifest import MODEL_MANIFEST

    p = stage_dir / MODEL_MANIFEST
    if not p.is_file():
        return ""
    m = read_json(p)
    if (m.get("onnx") or {}).get("status", "").startswith("skipped"):
        return f"export: ONNX {m['onnx']['status']}; TensorRT: {(m.get('tensorrt') or {}).get('status', '-')}"
    head = (f"export: {m.get('model_name')} — dim {m.get('dimension')}, max {m.get('max_seq_length')} tokens, "
            f"pooling {m.get('pooling')}, ONNX opset {(m.get('onnx') or {}).get('opset', '-')} "
            f"({(m.get('onnx') or {}).get('exporter', '-')}), fp32 vs PyTorch min cosine "
            f"{(m.get('validation') or {}).get('min_cosine', '-')}")
    lines = [head, format_table(m)]
    for name, e in sorted((m.get("variants") or {}).items()):
        if e.get("reason"):
            lines.append(f"  {name}: {e['reason']}")
    trt = m.get("tensorrt") or {}
    lines.append(f"TensorRT: {trt.get('status', '-')}")
    q = m.get("quality") or {}
    lines.append(f"quality: {q.get('metric')} on the test split ({q.get('queries')} queries x {q.get('passages')} "
                 f"passages), maxQualityLoss {q.get('max_quality_loss', 0):.2%}")
    if m.get("served_variants") and os.environ.get("EFT_SKIP_SMOKE") != "1":
        from eft.serving.smoke import smoke_check

        lines.append(smoke_check(stage_dir))
    lines.append(f"serve it: eft serve --model {stage_dir}")
    return "\n".join(lines)
