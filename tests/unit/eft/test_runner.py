"""The local runner and the stage contract: skip when up to date, re-run on changed config,
--from/--until, atomic publication when a stage is killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from eft.pipeline import StageInputMissing, execute_stage, select_stages
from eft.runner import run_pipeline
from eft.spec import load_spec
from eft.workspace import Workspace

WORDS = ["zebra", "violin", "glacier", "copper", "saffron", "lantern", "orbit", "harbor", "quartz", "meadow"]


@pytest.fixture
def project(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, w in enumerate(WORDS):
        (docs / f"{w}.md").write_text(
            f"# The {w} manual\n\n" + " ".join(
                f"The {w} unit {j} needs a {WORDS[(i + j) % len(WORDS)]} adapter rated at {j * 11} volts." for j in range(8)
            ))
    spec = {"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune", "metadata": {"name": "tiny"},
            "spec": {"corpus": {"path": "./docs", "chunking": {"maxTokens": 64, "overlapTokens": 8}},
                     "sdg": {"questionsPerChunk": 2}, "split": {"validation": 0.1, "test": 0.2}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return tmp_path, path


def statuses(outcomes):
    return {o.stage: o.status for o in outcomes}


def test_skip_rerun_and_from_until(project, tmp_path):
    root, spec_path = project
    ws = root / "ws"
    efr = load_spec(spec_path)
    first = run_pipeline(efr, ws, until="prepare")
    assert statuses(first) == {"ingest": "ran", "sdg": "ran", "prepare": "ran"}
    before = {s: json.loads((ws / s / "manifest.json").read_text())["finishedAt"] for s in ("ingest", "sdg", "prepare")}

    second = run_pipeline(efr, ws, until="prepare")
    assert statuses(second) == {"ingest": "skipped", "sdg": "skipped", "prepare": "skipped"}
    after = {s: json.loads((ws / s / "manifest.json").read_text())["finishedAt"] for s in ("ingest", "sdg", "prepare")}
    assert before == after

    # A mining change re-runs prepare only.
    efr.spec.mining.negatives = 2
    third = run_pipeline(efr, ws, until="prepare")
    assert statuses(third) == {"ingest": "skipped", "sdg": "skipped", "prepare": "ran"}
    rows = [json.loads(x) for x in (ws / "prepare" / "train.jsonl").read_text().splitlines()]
    assert all(len(r["negatives"]) == 2 for r in rows)

    # Touching a corpus file re-runs ingest, but identical output leaves sdg and prepare skipped.
    doc = root / "docs" / "zebra.md"
    os.utime(doc, (time.time() + 5, time.time() + 5))
    fourth = run_pipeline(efr, ws, until="prepare")
    assert statuses(fourth) == {"ingest": "ran", "sdg": "skipped", "prepare": "skipped"}

    # Editing a document changes the chunks: everything downstream re-runs.
    doc.write_text(doc.read_text() + " A brand new sentence about zebra maintenance schedules.")
    fifth = run_pipeline(efr, ws, until="sdg")
    assert statuses(fifth) == {"ingest": "ran", "sdg": "ran"}

    only = run_pipeline(efr, ws, start="prepare", until="prepare")
    assert statuses(only) == {"prepare": "ran"}
    forced = run_pipeline(efr, ws, start="sdg", until="sdg", force=True)
    assert statuses(forced) == {"sdg": "ran"}


def test_select_stages_rejects_bad_ranges():
    assert select_stages("sdg", "prepare") == ["sdg", "prepare"]
    with pytest.raises(ValueError, match="comes after"):
        select_stages("train", "sdg")
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages("bogus", None)


def test_missing_upstream_is_a_clear_error(project):
    root, spec_path = project
    with pytest.raises(StageInputMissing, match="needs the output of stage 'ingest'"):
        execute_stage(load_spec(spec_path), Workspace(root / "empty"), "sdg")


def test_stage_killed_midway_leaves_no_partial_output(project):
    root, spec_path = project
    ws = root / "ws"
    run_pipeline(load_spec(spec_path), ws, until="sdg")
    cmd = [sys.executable, "-m", "eft.cli", "stage", "prepare", "--spec", str(spec_path), "--workspace", str(ws)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill once the stage has started writing its temporary folder.
    deadline = time.time() + 60
    while time.time() < deadline and not any((ws / ".tmp").glob("prepare-*")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ws / "prepare").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "EFT_TERMINATION_LOG": str(root / "term")})
    assert done.returncode == 0, done.stderr
    assert json.loads((ws / "prepare" / "manifest.json").read_text())["status"] == "succeeded"
    assert "training rows" in (root / "term").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "up to date, skipped" in again.stdout


def test_failed_stage_writes_termination_message(project):
    root, spec_path = project
    term = root / "termination"
    r = subprocess.run([sys.executable, "-m", "eft.cli", "stage", "sdg", "--spec", str(spec_path),
                        "--workspace", str(root / "nothing")], capture_output=True, text=True,
                       env={**os.environ, "EFT_TERMINATION_LOG": str(term)})
    # a missing upstream output: re-running unchanged cannot fix it, so the permanent exit code (no Job retry)
    from eft.pipeline import EXIT_PERMANENT

    assert r.returncode == EXIT_PERMANENT
    assert "needs the output of stage 'ingest'" in term.read_text()
    assert "Traceback" not in r.stderr


def test_eft_run_cli_prints_summary_table(project):
    root, spec_path = project
    r = subprocess.run([sys.executable, "-m", "eft.cli", "run", str(spec_path), "--workspace", str(root / "w"),
                        "--until", "sdg"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(l.split() == ["stage", "status", "seconds", "counts"] for l in lines), r.stdout
    assert any(l.startswith("ingest") and " ran " in l for l in lines)
    assert any(l.startswith("sdg") and "questions=" in l for l in lines)


def test_non_zero_rank_does_not_publish(project, monkeypatch):
    """Under torchrun every rank runs the stage; only rank 0 publishes the workspace output."""
    root, spec_path = project
    ws = Workspace(root / "ranked")
    monkeypatch.setenv("RANK", "1")
    m = execute_stage(load_spec(spec_path), ws, "ingest")
    assert m["status"] == "worker" and not ws.stage_dir("ingest").exists()
    monkeypatch.setenv("RANK", "0")
    assert execute_stage(load_spec(spec_path), ws, "ingest")["status"] == "succeeded"
    assert ws.manifest("ingest") is not None
