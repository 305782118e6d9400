"""The run workspace and the stage contract.

Layout (one folder per run: the PVC in a cluster, ./eft-workspace/<name> locally)::

    <root>/
      spec.yaml              the resolved spec of the last run (for humans)
      <stage>/               final output of a stage, present only when complete
        manifest.json        status, fingerprint, inputs, outputs, counts, timings, versions
      .work/<stage>/         scratch that survives a crash (SDG journal, training checkpoints)
      .tmp/<stage>-<pid>/    output being written; renamed into <root>/<stage> when complete

A stage never writes its final folder in place: it fills a temporary folder and the runner swaps it
in with renames, so a stage killed at any point leaves either the old complete output or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (except the manifest), keyed by relative path."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def combined_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def work_dir(self, stage: str) -> Path:
        """Scratch that survives crashes (journals, checkpoints); cleared when the stage completes."""
        d = self.root / ".work" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def manifest(self, stage: str) -> dict[str, Any] | None:
        p = self.stage_dir(stage) / MANIFEST
        if not p.is_file():
            return None
        try:
            m = read_json(p)
        except (OSError, json.JSONDecodeError):
            return None
        return m if isinstance(m, dict) and m.get("status") == "succeeded" else None

    def new_tmp_dir(self, stage: str) -> Path:
        base = self.root / ".tmp"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base, prefix=f"{stage}-"))

    def publish(self, stage: str, tmp_dir: Path) -> Path:
        """Swap a completed temporary folder into place as the stage's output."""
        final = self.stage_dir(stage)
        old = None
        if final.exists():
            old = self.root / ".tmp" / f"{stage}-old-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
        os.replace(tmp_dir, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def clean_stale_tmp(self) -> None:
        """Remove leftovers of killed runs (never a published stage folder)."""
        base = self.root / ".tmp"
        if base.is_dir():
            for p in base.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@dataclass
class StageResult:
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # One line published to the caller (Kubernetes termination message), e.g. headline metrics.
    summary: str | None = None
