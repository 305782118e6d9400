"""The export folder's ONNX variants: int8 and fp16 built from the fp32 graph, each measured on the test split
and accepted or rejected against fp32 ONNX. A rejected or failed variant is recorded and leaves no file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eft.stages.export_quality import METRIC, Reference, judge

log = logging.getLogger("eft.export")

VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class ExportFolder:
    """The folder being exported into, and its variants opened for measuring before the model manifest exists."""

    path: Path
    facts: dict[str, Any]  # eft.onnx_export.model_facts, with the exported graph's inputs
    prefixes: dict[str, str]
    threads: int

    def file(self, variant: str) -> Path:
        return self.path / VARIANT_FILES[variant]

    def open(self, variant: str, device: str = "cpu"):
        from eft.serving.backends import OnnxBackend

        return OnnxBackend(self.path, variant=variant, device=device, threads=self.threads,
                           manifest=self.provisional_manifest(variant))

    def provisional_manifest(self, variant: str) -> dict[str, Any]:
        """Just enough of a model manifest for OnnxBackend to serve `variant`."""
        f = self.facts
        return {
            "format": "eft.export/v1", "files": {}, "dimension": f["dimension"],
            "max_seq_length": f["max_seq_length"], "pooling": f["pooling"], "prefixes": self.prefixes,
            "pad_token_id": f["pad_token_id"], "inputs": f["inputs"],
            "variants": {variant: {"file": VARIANT_FILES[variant], "status": "accepted"}},
        }

    def remove(self, variant: str) -> None:
        for p in self.path.glob(VARIANT_FILES[variant] + "*"):
            p.unlink()


def fp32_entry(reference: Reference) -> dict[str, Any]:
    return {"file": VARIANT_FILES["fp32"], "status": "accepted", "device": "cpu, gpu", "quality": reference.quality,
            "relative_loss": 0.0, "measured_on": "cpu"}


def _cuda_usable() -> bool:
    import onnxruntime as ort

    from eft.serving.backends import gpu_present

    return "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()


def build_variants(folder: ExportFolder, onnx_spec: Any, config: Any, reference: Reference,
                   progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The int8 and fp16 variants the spec asks for, each built, measured and judged (name -> manifest entry)."""
    from eft import onnx_export as ox

    gpu = _cuda_usable()
    builder = _VariantBuilder(folder, config, reference, onnx_spec.max_quality_loss, progress)
    wanted = [("int8", onnx_spec.int8, ox.quantize_int8, "cpu"), ("fp16", onnx_spec.fp16, ox.convert_fp16, "gpu")]
    variants: dict[str, dict[str, Any]] = {}
    for name, enabled, make, target in wanted:
        if not enabled:
            continue
        progress(f"building the {name} variant")
        device = "cuda" if (name == "fp16" and gpu) else "cpu"
        variants[name] = builder.build(name, make, target, device)
    return variants


@dataclass
class _VariantBuilder:
    """Builds a variant from the folder's fp32 graph, measures it and judges it against the fp32 reference."""

    folder: ExportFolder
    config: Any  # the encoder's Hugging Face config: heads and hidden size for ONNX Runtime's fusions
    reference: Reference
    max_loss: float
    progress: Callable[[str], None]

    def build(self, name: str, make: Callable, target: str, device: str) -> dict[str, Any]:
        """The variant's manifest entry; `target` is the device it is meant for, `device` where it is measured."""
        from eft.onnx_export import cosine_rows

        try:
            how = make(self.folder.file("fp32"), self.folder.file(name), self.config)
            backend = self.folder.open(name, device)
            cos = cosine_rows(self.reference.embeddings, backend.embed_texts(self.reference.texts))
            self.progress(f"measuring {METRIC} of {name} on {device}")
            quality = self.reference.measure(backend)
            backend.close()
        except Exception as exc:  # a variant that cannot be built or run is recorded, never served
            return self._failed(name, target, exc)
        base, value = self.reference.score, quality[METRIC]
        status, rel, reason = judge(base, value, self.max_loss)
        entry = {"file": VARIANT_FILES[name], "status": status, "device": target, "quality": quality,
                 "delta": round(value - base, 6), "relative_loss": rel, "measured_on": device,
                 "cosine_vs_fp32": {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)},
                 **how}
        if status == "rejected":
            self._reject(name, entry, reason)
        self.progress(f"{name}: {METRIC} {value:.4f} vs fp32 {base:.4f} ({-rel:+.3%}): {status}")
        return entry

    def _reject(self, name: str, entry: dict[str, Any], reason: str | None) -> None:
        """Keep the numbers and the checksum of what was rejected; remove the file so nothing can serve it."""
        from eft.serving.manifest import file_entry

        entry.update(reason=reason, rejected_sha256=file_entry(self.folder.file(name))["sha256"], file=None)
        self.folder.remove(name)

    def _failed(self, name: str, target: str, exc: Exception) -> dict[str, Any]:
        entry = {"file": None, "status": "failed", "device": target,
                 "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        log.warning("variant %s failed: %s", name, entry["reason"])
        self.folder.remove(name)
        return entry
