"""The export stage's human report (`eft run` prints it after the stages): the model, a table of its variants
with their measured quality, TensorRT's status, and a running-server smoke check of the exported folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eft.settings import StageSettings
from eft.stages.export_quality import METRIC
from eft.stages.export_variants import VARIANT_FILES
from eft.workspace import read_json


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


def report(stage_dir: Path, settings: StageSettings | None = None) -> str:
    """The report of a published export folder; `settings.smoke_test` False leaves out the smoke check."""
    try:
        return _report(Path(stage_dir), settings or StageSettings())
    except Exception as exc:  # a report never breaks `eft run`
        return f"export: no report ({type(exc).__name__}: {exc})"


def _report(stage_dir: Path, settings: StageSettings) -> str:
    from eft.serving.manifest import MODEL_MANIFEST

    p = stage_dir / MODEL_MANIFEST
    if not p.is_file():
        return ""
    m = read_json(p)
    if (m.get("onnx") or {}).get("status", "").startswith("skipped"):
        return f"export: ONNX {m['onnx']['status']}; TensorRT: {(m.get('tensorrt') or {}).get('status', '-')}"
    lines = [_headline(m), format_table(m)]
    for name, e in sorted((m.get("variants") or {}).items()):
        if e.get("reason"):
            lines.append(f"  {name}: {e['reason']}")
    trt = m.get("tensorrt") or {}
    lines.append(f"TensorRT: {trt.get('status', '-')}")
    q = m.get("quality") or {}
    lines.append(f"quality: {q.get('metric')} on the {q.get('split', 'test')} split ({q.get('queries')} queries x {q.get('passages')} "
                 f"passages), maxQualityLoss {q.get('max_quality_loss', 0):.2%}")
    if m.get("served_variants") and settings.smoke_test:
        from eft.serving.smoke import smoke_check

        lines.append(smoke_check(stage_dir))
    lines.append(f"serve it: eft serve --model {stage_dir}")
    return "\n".join(lines)


def _headline(m: dict[str, Any]) -> str:
    onnx = m.get("onnx") or {}
    return (f"export: {m.get('model_name')} — dim {m.get('dimension')}, max {m.get('max_seq_length')} tokens, "
            f"pooling {m.get('pooling')}, ONNX opset {onnx.get('opset', '-')} ({onnx.get('exporter', '-')}), "
            f"fp32 vs PyTorch min cosine {(m.get('validation') or {}).get('min_cosine', '-')}")
