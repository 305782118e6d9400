"""The export's TensorRT engine (tensorrt/model.plan): built from the fp32 graph when the spec asks, TensorRT
is installed and a CUDA GPU is present, then checked against fp32 ONNX; an engine that drifts is removed."""

from __future__ import annotations

import logging
import shutil
from typing import Any, Callable

from eft.stages.export_quality import Reference
from eft.stages.export_variants import ExportFolder

log = logging.getLogger("eft.export")

MIN_COSINE_VS_FP32 = 0.999
ENGINE = "tensorrt/model.plan"


def tensorrt_engine(folder: ExportFolder, tensorrt_spec: Any, reference: Reference,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """The engine's entry in the model manifest: how it was built and checked, or why there is none."""
    import torch

    from eft import onnx_export as ox

    if not tensorrt_spec.enabled:
        return {"status": "skipped: disabled"}
    ok, why = ox.tensorrt_available()
    if not ok:
        return {"status": "skipped: TensorRT not installed", "detail": why}
    if not torch.cuda.is_available():
        return {"status": "skipped: no CUDA GPU to build the engine on"}
    progress("building the TensorRT engine")
    try:
        return _build_and_check(folder, tensorrt_spec, reference)
    except Exception as exc:
        shutil.rmtree(folder.path / "tensorrt", ignore_errors=True)
        info = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        log.warning("TensorRT engine: %s", info["status"])
        return info


def _build_and_check(folder: ExportFolder, tensorrt_spec: Any, reference: Reference) -> dict[str, Any]:
    import torch

    from eft import onnx_export as ox
    from eft.serving.backends import TextTokenizer, pad_batch

    facts, max_len = folder.facts, folder.facts["max_seq_length"]
    engine = folder.path / ENGINE
    engine.parent.mkdir(exist_ok=True)
    info = ox.build_tensorrt(folder.file("fp32"), engine, facts["inputs"], tensorrt_spec.max_batch, max_len,
                             fp16=True, fp8=tensorrt_spec.fp8)
    ids = TextTokenizer(max_len, folder=folder.path).encode(reference.texts, truncate=True)
    arr, mask = pad_batch(ids, facts["pad_token_id"])
    got = ox.run_tensorrt(engine, arr, mask, facts["inputs"])
    cos = ox.cosine_rows(reference.embeddings[: len(ids)], got)
    info.update(status="built", engine=ENGINE, gpu=torch.cuda.get_device_name(0),
                cosine_vs_fp32={"min": round(float(cos.min()), 6)})
    if cos.min() < MIN_COSINE_VS_FP32:
        info["status"] = "rejected"
        info["reason"] = f"cosine vs fp32 ONNX {cos.min():.5f} < {MIN_COSINE_VS_FP32}"
        shutil.rmtree(engine.parent, ignore_errors=True)
    return info
