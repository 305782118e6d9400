"""The local backend: runs a spec's stages in order in one process, skipping the up-to-date ones.

The operator (eft.controller) is the other backend: it runs the same stages, one Kubernetes Job each,
through the same `eft stage NAME` entry point over the same workspace layout.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from eft.settings import StageSettings
from eft.pipeline import StageFailed, execute_stage, is_up_to_date, select_stages
from eft.spec import EmbeddingFinetune, dump_manifest
from eft.workspace import Workspace

log = logging.getLogger("eft.runner")


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran | skipped | failed | not-run
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def default_workspace(efr: EmbeddingFinetune) -> Path:
    return Path("eft-workspace") / efr.name


def run_pipeline(
    efr: EmbeddingFinetune,
    workspace: Path | None = None,
    start: str | None = None,
    until: str | None = None,
    force: bool = False,
    out: TextIO = sys.stderr,
    settings: StageSettings | None = None,
) -> list[StageOutcome]:
    settings = settings or StageSettings.from_env()
    ws = Workspace(workspace or default_workspace(efr))
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.clean_stale_tmp()
    (ws.root / "spec.yaml").write_text(yaml.safe_dump(dump_manifest(efr), sort_keys=False), encoding="utf-8")
    stages = select_stages(start, until)
    outcomes: list[StageOutcome] = []
    print(f"eft: workspace {ws.root}", file=out)
    for i, name in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {name}"
        if not force and is_up_to_date(efr, ws, name):
            m = ws.manifest(name) or {}
            print(f"{head}: up to date, skipped", file=out)
            outcomes.append(StageOutcome(name, "skipped", 0.0, m.get("counts", {}), "up to date"))
            continue
        print(f"{head}: running", file=out, flush=True)
        t0 = time.perf_counter()
        try:
            manifest = execute_stage(efr, ws, name, settings=settings,
                                     progress=lambda msg, n=name: print(f"  {n}: {msg}", file=out, flush=True))
        except StageFailed as exc:
            outcomes.append(StageOutcome(name, "failed", time.perf_counter() - t0, {}, exc.message))
            outcomes.extend(StageOutcome(s, "not-run") for s in stages[i:])
            print(f"{head}: FAILED: {exc.message}", file=out)
            break
        secs = time.perf_counter() - t0
        outcomes.append(StageOutcome(name, "ran", secs, manifest.get("counts", {}), manifest.get("summary") or ""))
        print(f"{head}: done in {secs:.1f}s", file=out)
    return outcomes


def summary_table(outcomes: list[StageOutcome]) -> str:
    """A fixed-width table: stage, status, seconds, the stage's headline counts."""
    rows = [("stage", "status", "seconds", "counts")]
    for o in outcomes:
        counts = ", ".join(f"{k}={v}" for k, v in list(o.counts.items())[:6])
        if o.status == "failed":
            counts = o.message
        rows.append((o.stage, o.status, f"{o.seconds:.1f}" if o.status == "ran" else "-", counts))
    width = shutil.get_terminal_size((120, 20)).columns
    w = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = []
    for r in rows:
        line = f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}"
        lines.append(line if len(line) <= max(width, 80) else line[: max(width, 80) - 1] + "…")
    lines.insert(1, "-" * min(max(len(x) for x in lines), max(width, 80)))
    return "\n".join(lines)
