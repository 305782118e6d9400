"""The run of the pipeline the spec asks for, and how far it got: one status.stages entry per stage.

Stage runs are identified by fingerprints (eft.fingerprint): the Job of a stage is
``<name>-<stage>-<fingerprint>``, so a Job under the wanted name is this run's, any other is superseded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.status import trim
from eft.fingerprint import job_fingerprints
from eft.spec import STAGES, EmbeddingFinetuneSpec


@dataclass(frozen=True)
class StageRun:
    fingerprints: dict[str, str]  # stage -> fingerprint
    wanted: dict[str, str]  # stage -> the name of its Job in this run
    jobs: list[dict[str, Any]]  # every Job of this EmbeddingFinetune (summaries), superseded ones included
    live: dict[str, dict[str, Any]]  # Jobs not being deleted, by name
    entries: dict[str, dict[str, Any]]  # stage -> its status.stages entry
    current: str | None  # the first stage that has not succeeded; None once all have

    @property
    def stages(self) -> list[dict[str, Any]]:
        return [self.entries[s] for s in STAGES]


def stage_run(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, children: Children,
              ignored_uids: frozenset[str] | set[str] = frozenset()) -> StageRun:
    meta = efr["metadata"]
    annotations = meta.get("annotations") or {}
    fps = job_fingerprints(spec, annotations.get(b.RETRAIN_ANNOTATION), annotations.get(b.RETRAIN_FROM_ANNOTATION))
    wanted = {s: b.job_name(meta["name"], s, fps[s]) for s in STAGES}
    jobs = [j for j in children.jobs if j.get("owner") == meta["uid"] and j.get("uid") not in ignored_uids]
    live = {j["name"]: j for j in jobs if not j.get("deleting")}
    old = {e.get("name"): e for e in (efr.get("status") or {}).get("stages") or []}
    entries = {}
    for s in STAGES:
        prev = old.get(s) if (old.get(s) or {}).get("job") == wanted[s] else None
        entries[s] = stage_entry(s, wanted[s], live.get(wanted[s]), children.pods.get(wanted[s]) or [], prev)
    current = next((s for s in STAGES if entries[s]["phase"] != "Succeeded"), None)
    return StageRun(fps, wanted, jobs, live, entries, current)


def stage_entry(stage: str, job_name: str, job: dict[str, Any] | None, pods: list[dict[str, Any]],
                prev: dict[str, Any] | None) -> dict[str, Any]:
    """The status.stages entry of a stage from its Job (``prev``: the entry written before, same Job)."""
    if job is None:
        if prev is not None and prev.get("phase") == "Succeeded":
            return dict(prev)  # finished earlier; its Job was deleted since (the output is in the workspace)
        return {"name": stage, "job": job_name, "phase": "Pending"}
    e: dict[str, Any] = {"name": stage, "job": job_name, "phase": job["state"]}
    attempts = job["failed"] + (1 if job["active"] or job["succeeded"] else 0)
    if attempts:
        e["attempts"] = attempts
    if job.get("startTime"):
        e["startTime"] = job["startTime"]
    if job["state"] in ("Succeeded", "Failed") and job.get("completionTime"):
        e["completionTime"] = job["completionTime"]
    msg = stage_message(job, pods)
    if msg is None and prev is not None and prev.get("phase") == job["state"]:
        msg = prev.get("message")  # the pod that said it is gone; keep what it said
    if msg:
        e["message"] = trim(msg)
    return e


def stage_message(job: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """A finished Job's message: its last pod's termination message, else the Job's failure reason."""
    if job["state"] not in ("Succeeded", "Failed"):
        return None
    done = [p for p in pods if p.get("phase") == job["state"] and p.get("message")]
    if done:
        done.sort(key=lambda p: (p.get("finishedAt") or "", p.get("name") or ""))
        return done[-1]["message"]
    if job["state"] == "Failed":
        return " ".join(x for x in (job.get("reason"), job.get("conditionMessage")) if x) or None
    return None
