"""The stage Jobs of a reconcile: superseded runs go, the current stage is reported or started."""

from __future__ import annotations

from typing import Any

from eft.controller import builders as b
from eft.controller.actions import Changes
from eft.controller.children import Children, live
from eft.controller.conditions import Condition, ConditionType
from eft.controller.gate import Gate
from eft.controller.settings import Settings
from eft.controller.stage_runs import StageRun
from eft.controller.status import trim
from eft.controller.step import Step
from eft.spec import STAGES, EmbeddingFinetuneSpec

_PROGRESSING = ConditionType.PROGRESSING


def delete_superseded(changes: Changes, run: StageRun, spec: EmbeddingFinetuneSpec, children: Children) -> None:
    """Jobs of an older fingerprint: a running one goes at once, a finished one when its stage re-runs
    (so `kubectl logs` of the last run keeps working until then) or the pipeline is complete; also the
    rendezvous Services of multi-node training runs other than this one's."""
    wanted = set(run.wanted.values())
    for j in run.jobs:
        if j["name"] in wanted or j.get("deleting"):
            continue
        running = j["state"] in ("Running", "Queued")
        stage = j.get("stage")
        replaced = stage in run.wanted and (run.wanted[stage] in run.live or stage == run.current)
        if running or replaced or run.current is None:
            changes.delete("Job", j)
    rendezvous = b.rendezvous_service_name(run.wanted["train"]) if b.is_multi_node(spec, "train") else None
    for svc in children.services:
        if (svc.get("component") == "rendezvous" and changes.owns(svc) and svc["name"] != rendezvous
                and not svc.get("deleting")):
            changes.delete("Service", svc)


def next_stage(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings,
               run: StageRun, gate: Gate, children: Children) -> Step:
    """The current stage (run.current is set): report its Job, say what holds it, or start it."""
    assert run.current is not None
    return (stage_in_flight(run.current, run.entries[run.current], spec, children)
            or stage_held(changes, spec, run.current, gate)
            or start_stage(changes, efr, spec, settings, run, children))


def stage_in_flight(stage: str, entry: dict[str, Any], spec: EmbeddingFinetuneSpec,
                    children: Children) -> Step | None:
    """The current stage's Job exists: failed, waiting for admission or running."""
    if entry["phase"] == "Failed":
        message = f"stage {stage} failed: {entry.get('message') or 'see the Job'}"
        return Step("Failed", message, Condition(_PROGRESSING, "False", "StageFailed", message),
                    failed=Condition(ConditionType.FAILED, "True", "StageFailed", message))
    if entry["phase"] == "Queued":
        message = f"stage {stage}: Job {entry['job']} is suspended, waiting for admission" + (
            f" by Kueue queue {spec.queue_name}" if spec.queue_name else "")
        return Step("Queued", message, Condition(_PROGRESSING, "True", "Queued", message),
                    queued=Condition(ConditionType.QUEUED, "True", "WaitingForAdmission", message))
    if entry["phase"] == "Running":
        progressing = running_condition(stage, entry, children.pods.get(entry["job"]) or [])
        return Step("Running", progressing.message, progressing)
    return None


def running_condition(stage: str, entry: dict[str, Any], pods: list[dict[str, Any]]) -> Condition:
    """Progressing of a stage whose Job runs: running, waiting for a node that fits, or a container that cannot
    start (a missing Secret or image)."""
    stuck = next((p["unschedulable"] for p in pods if p.get("unschedulable") and p.get("phase") == "Pending"), None)
    if stuck:
        # a GPU stage on a cluster without GPUs waits here forever: say so, with the scheduler's words
        return Condition(_PROGRESSING, "True", "Unschedulable", f"stage {stage}: its pod cannot be scheduled: "
                         f"{trim(stuck)} (scheduling.stages.{stage}.gpus / training.gpusPerNode / resources set "
                         "what it asks for)")
    cannot_start = next((p["stuck"] for p in pods if p.get("stuck") and p.get("phase") == "Pending"), None)
    if cannot_start:
        # e.g. a Secret the spec names that does not exist in this namespace: it waits until someone creates it
        return Condition(_PROGRESSING, "True", "ContainerCannotStart", f"stage {stage}: its container cannot "
                         f"start: {trim(cannot_start)}")
    attempt = f", attempt {entry['attempts']})" if entry.get("attempts", 1) > 1 else ")"
    return Condition(_PROGRESSING, "True", "StageRunning", f"stage {stage} running (Job {entry['job']}{attempt}")


def stage_held(changes: Changes, spec: EmbeddingFinetuneSpec, stage: str, gate: Gate) -> Step | None:
    """Why the current stage may not start yet, if anything holds it."""
    if changes.blockers:
        message = "; ".join(changes.blockers)
        return Step("Running", message, Condition(_PROGRESSING, "False", "ChildConflict", message), requeue=10.0)
    if stage == "export" and gate.blocks_shipping:
        message = (f"quality gate failed: {gate.condition.message}; the model is not exported or served (set "
                   "evaluation.gate.override to ship anyway)")
        return Step("Failed", message, Condition(_PROGRESSING, "False", "QualityGateFailed", message),
                    failed=Condition(ConditionType.FAILED, "True", "QualityGateFailed", message))
    if stage == "export" and gate.waiting_for_metrics:
        message = "waiting for the evaluate stage's metrics"
        return Step("Running", message, Condition(_PROGRESSING, "True", "WaitingForMetrics", message), requeue=2.0)
    if b.is_multi_node(spec, stage) and "ReadWriteMany" not in spec.workspace.access_modes:
        message = (f"training.nodes={spec.training.nodes} needs a ReadWriteMany workspace (every training pod "
                   f"mounts it), but workspace.accessModes is {','.join(spec.workspace.access_modes)}")
        return Step("Blocked", message, Condition(_PROGRESSING, "False", "ReadWriteOnceMultiNode", message))
    if spec.suspend:
        message = f"suspended before stage {stage} (spec.suspend)"
        return Step("Suspended", message, Condition(_PROGRESSING, "False", "Suspended", message))
    return None


def start_stage(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings,
                run: StageRun, children: Children) -> Step:
    """Create the current stage's Job (and, first, the rendezvous Service of multi-node training)."""
    stage = run.current
    assert stage is not None
    job, fp = run.wanted[stage], run.fingerprints[stage]
    if b.is_multi_node(spec, stage):
        changes.ensure(b.build_rendezvous_service(efr, stage, fp),
                       live(children.services, b.rendezvous_service_name(job)), update=False)
    force = forced_by_retrain(efr["metadata"].get("annotations") or {}, stage)
    changes.create(b.build_stage_job(efr, spec, stage, fp, settings, force=force))
    message = f"starting stage {stage} (Job {job})"
    return Step("Running", message, Condition(_PROGRESSING, "True", "StageStarting", message))


def forced_by_retrain(annotations: dict[str, str], stage: str) -> bool:
    """The retrain annotation re-runs its stage (retrain-from, else the first) even when its output is
    up to date in the workspace: the stage gets --force."""
    if not annotations.get(b.RETRAIN_ANNOTATION):
        return False
    start = annotations.get(b.RETRAIN_FROM_ANNOTATION)
    return stage == (start if start in STAGES else STAGES[0])
