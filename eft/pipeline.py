"""Stage plan and the runner that executes one stage under the stage contract.

Every stage is a module in eft.stages exposing ``run(ctx: StageContext) -> StageResult``. It reads its
inputs from upstream stage folders (``ctx.input(name)``), writes only into ``ctx.out`` (a temporary
folder published atomically when it returns) and may keep crash-surviving scratch in ``ctx.work``.
A stage may also define ``input_fingerprint(spec) -> str`` for inputs outside the workspace.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from eft.fingerprint import workspace_fingerprint
from eft.settings import StageSettings
from eft.spec import STAGES, EmbeddingFinetune
from eft.stage_defs import STAGE_DEFS
from eft.workspace import MANIFEST, StageResult, Workspace, combined_digest, digest_tree, write_json_atomic

log = logging.getLogger("eft")




# Exit codes of `eft stage NAME`: the operator's Jobs fail at once on a permanent failure (their
# podFailurePolicy) and retry anything else (a crash, an OOM kill) up to backoffLimit.
EXIT_RETRYABLE = 1
EXIT_PERMANENT = 3


class StageFailed(Exception):
    """A stage could not complete; the message is one line meant for humans (and the pod's termination log).

    ``retryable``: whether running the stage again as it is could succeed. A failure the stage diagnosed
    itself (bad input, a missing upstream output, a refused model) is not: only a change fixes it. An
    unexpected crash is (a node going away, a transient read error): Kubernetes retries it.
    """

    def __init__(self, stage: str, message: str, retryable: bool = False):
        self.stage = stage
        self.message = message
        self.retryable = retryable
        super().__init__(f"{stage}: {message}")


class StageInputMissing(StageFailed):
    pass


@dataclass
class StageContext:
    efr: EmbeddingFinetune
    workspace: Workspace
    stage: str
    out: Path
    work: Path
    progress: Callable[[str], None]
    settings: StageSettings = field(default_factory=StageSettings.from_env)

    @property
    def spec(self):
        return self.efr.spec

    def input(self, stage: str) -> Path:
        d = self.workspace.stage_dir(stage)
        if self.workspace.manifest(stage) is None:
            raise StageInputMissing(self.stage, f"needs the output of stage '{stage}', which is missing: run it first")
        return d

    def input_manifest(self, stage: str) -> dict[str, Any]:
        self.input(stage)
        return self.workspace.manifest(stage) or {}


def read_stage_jsonl(path: Path, stage: str) -> list[dict]:
    """Rows of a jsonl file written by an upstream stage; a bad line fails `stage` with its line number."""
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise StageFailed(stage, f"{path} line {i} is not JSON: {exc.msg}") from None
    return rows


def load_stage_module(name: str):
    return importlib.import_module(STAGE_DEFS[name].module)


def fingerprint(efr: EmbeddingFinetune, ws: Workspace, name: str) -> dict[str, Any]:
    """What a stage's output depends on here (eft.fingerprint.workspace_fingerprint)."""
    upstream = {}
    for up in STAGE_DEFS[name].upstream:
        m = ws.manifest(up)
        upstream[up] = m.get("outputsDigest") if m else None
    return workspace_fingerprint(efr.spec, name, upstream, getattr(load_stage_module(name), "input_fingerprint", None))


def is_up_to_date(efr: EmbeddingFinetune, ws: Workspace, name: str) -> bool:
    m = ws.manifest(name)
    if m is None:
        return False
    try:
        return m.get("fingerprint") == fingerprint(efr, ws, name)
    except StageFailed:
        return False


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("eft", "torch", "transformers", "sentence-transformers", "faiss-cpu", "onnxruntime", "beir"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute_stage(efr: EmbeddingFinetune, ws: Workspace, name: str, progress: Callable[[str], None] | None = None,
                  settings: StageSettings | None = None) -> dict[str, Any]:
    """Run one stage now (no up-to-date check) and publish its output. Returns the manifest.

    ``settings``: how this machine runs it (default: read from the environment)."""
    if name not in STAGE_DEFS:
        raise StageFailed(name, f"unknown stage; choose from {', '.join(STAGES)}")
    d = STAGE_DEFS[name]
    for up in d.upstream:
        if ws.manifest(up) is None:
            raise StageInputMissing(name, f"needs the output of stage '{up}', which is missing: run it first")
    fp = fingerprint(efr, ws, name)
    mod = load_stage_module(name)
    tmp = ws.new_tmp_dir(name)
    ctx = StageContext(efr, ws, name, tmp, ws.work_dir(name), progress or (lambda msg: log.info("[%s] %s", name, msg)),
                       settings or StageSettings.from_env())
    started, t0 = _now(), time.perf_counter()
    try:
        result: StageResult = mod.run(ctx)
    except StageFailed:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.exception("stage %s crashed", name)
        raise StageFailed(name, f"{type(exc).__name__}: {exc}", retryable=True) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0") or 0) != 0:
        # torchrun worker of a multi-GPU stage: rank 0 alone publishes the output.
        shutil.rmtree(tmp, ignore_errors=True)
        return {"stage": name, "status": "worker", "seconds": round(seconds, 3), "counts": result.counts,
                "summary": result.summary}
    outputs = digest_tree(tmp)
    manifest = {
        "stage": name,
        "status": "succeeded",
        "fingerprint": fp,
        "outputs": outputs,
        "outputsDigest": combined_digest(outputs),
        "counts": result.counts,
        "details": result.details,
        "summary": result.summary,
        "startedAt": started,
        "finishedAt": _now(),
        "seconds": round(seconds, 3),
        "versions": _versions(),
        "host": platform.node(),
    }
    write_json_atomic(tmp / MANIFEST, manifest)
    ws.publish(name, tmp)
    shutil.rmtree(ws.root / ".work" / name, ignore_errors=True)
    return manifest


def select_stages(start: str | None, until: str | None) -> list[str]:
    for s in (start, until):
        if s is not None and s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    i = STAGES.index(start) if start else 0
    j = STAGES.index(until) if until else len(STAGES) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --until {until}")
    return list(STAGES[i : j + 1])


def write_termination_message(text: str, path: str) -> None:
    """Kubernetes shows this file's content as the container's termination message (one line, < 4 KiB)."""
    p = Path(path)
    if not p.parent.is_dir() or (not p.exists() and path == "/dev/termination-log"):
        return
    try:
        p.write_text(text.replace("\n", " ")[:4000], encoding="utf-8")
    except OSError:
        pass
