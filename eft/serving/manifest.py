"""The exported model's own manifest (``export/model-manifest.json``) and its checksum verification.

It is distinct from the pipeline's ``export/manifest.json`` (written by the runner for every stage): the
runner's manifest says how the stage ran; this one says what the served model *is* — files and their
sha256, dimension, maximum length, pooling, prefixes, the default served name, the ONNX variants with
their measured quality, the TensorRT engine. The file name must not be ``manifest.json``: the runner's
output digest skips every file of that name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eft.workspace import sha256_file

MODEL_MANIFEST = "model-manifest.json"
FORMAT = "eft.export/v1"


class ModelRefused(Exception):
    """The model folder cannot be served; the message is one line meant for humans."""


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def files_of(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: file_entry(root / n) for n in sorted(set(names))}


def is_export_dir(path: Path) -> bool:
    return (Path(path) / MODEL_MANIFEST).is_file()


def load_manifest(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / MODEL_MANIFEST
    if not p.is_file():
        raise ModelRefused(f"{model_dir}: no {MODEL_MANIFEST} (not an eft export folder)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRefused(f"{p}: unreadable manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else None
        raise ModelRefused(f"{p}: not an eft export manifest (format {got!r}, expected {FORMAT!r})")
    for key in ("files", "dimension", "max_seq_length", "variants"):
        if key not in m:
            raise ModelRefused(f"{p}: manifest lacks {key!r}")
    return m


def verify_files(root: Path, files: dict[str, Any], what: str = "model file") -> int:
    """Check size and sha256 of every listed file; raise ModelRefused on the first mismatch. Returns bytes read."""
    total = 0
    root = Path(root)
    for rel, entry in sorted(files.items()):
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise ModelRefused(f"manifest lists a path outside the model folder: {rel}")
        p = root / rel
        if not p.is_file():
            raise ModelRefused(f"{what} {p} is missing (listed in {MODEL_MANIFEST})")
        size = p.stat().st_size
        want_size = entry.get("bytes")
        if want_size is not None and size != want_size:
            kind = "truncated" if size < want_size else "larger than exported"
            raise ModelRefused(f"{what} {p} is {kind}: {size} bytes, the manifest says {want_size}; "
                               "refusing to serve it (re-run the export stage or restore the file)")
        got = sha256_file(p)
        if got != entry.get("sha256"):
            raise ModelRefused(f"{what} {p} does not match its sha256 in {MODEL_MANIFEST} "
                               f"(expected {str(entry.get('sha256'))[:16]}..., got {got[:16]}...): it was modified "
                               "or corrupted; refusing to serve it (re-run the export stage or restore the file)")
        total += size
    return total


def verify_export(model_dir: Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the manifest and verify every file it lists. Returns the manifest."""
    m = manifest or load_manifest(model_dir)
    verify_files(Path(model_dir), m["files"])
    return m


def source_model_dir(model_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """The PyTorch (sentence-transformers) model the export came from, if recorded and present."""
    src = (manifest.get("source") or {}).get("path")
    if not src:
        return None
    p = Path(src) if os.path.isabs(src) else (Path(model_dir) / src)
    return p.resolve()
