"""The reconcile decision as one pure function: ``plan(resource, children, settings, now) -> Plan``.

Level-based: the next action is computed from the spec, the status the operator wrote before and the
child objects that exist right now (summaries from the operator's watch caches), never from the event
that woke the operator up. Whatever crashed or restarted in between, calling ``plan`` again converges.

Stage runs are identified by *fingerprints*: a stage's fingerprint hashes the spec sections that stage
depends on (eft.stage_defs, hashed by eft.fingerprint) and its upstream stages' fingerprints (plus the retrain token on
the stage a retrain starts from). The Job of a stage is named ``<name>-<stage>-<fingerprint>``, so

* a finished stage is never re-run: its Job exists (or status remembers it) under the wanted name;
* a spec change re-runs exactly the stages whose fingerprint changed (the earliest affected one and
  everything downstream), under new Job names that never collide with the old ones;
* a restarted operator recomputes the same names and finds the Jobs it created (a 409 is adoption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from eft.controller import builders as b
from eft.controller.settings import Settings
from eft.fingerprint import job_fingerprints
from eft.spec import STAGES, EmbeddingFinetuneSpec, describe_validation_error
from eft.stage_reports import EvaluateReport, ExportReport

CONDITION_TYPES = ("Progressing", "Succeeded", "Failed", "QualityGatePassed", "Queued", "Ready")
MESSAGE_MAX = 1024


# ----------------------------------------------------------------------------- summaries

def _controller_uid(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def summarize_job(body: dict[str, Any]) -> dict[str, Any]:
    meta, spec, st = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    labels = meta.get("labels") or {}
    true = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in true:
        state = "Succeeded"
    elif "Failed" in true:
        state = "Failed"
    elif spec.get("suspend"):
        state = "Queued"
    else:
        state = "Running"
    failed = true.get("Failed") or {}
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner": _controller_uid(meta),
        "stage": labels.get(b.STAGE_LABEL),
        "fingerprint": labels.get(b.FINGERPRINT_LABEL),
        "state": state,
        "active": st.get("active") or 0,
        "failed": st.get("failed") or 0,
        "succeeded": st.get("succeeded") or 0,
        "startTime": st.get("startTime"),
        "completionTime": st.get("completionTime") or failed.get("lastTransitionTime"),
        "reason": failed.get("reason"),
        "conditionMessage": failed.get("message"),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


def summarize_pod(body: dict[str, Any]) -> dict[str, Any]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    labels = meta.get("labels") or {}
    term: dict[str, Any] = {}
    for cs in st.get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if t:
            term = t
            if cs.get("name") == "stage":
                break
    unscheduled = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"
                        and c.get("status") == "False" and c.get("reason") == "Unschedulable"), None)
    return {
        "name": meta.get("name"),
        "job": labels.get(b.JOB_NAME_LABEL) or labels.get("job-name"),
        "phase": st.get("phase"),
        "unschedulable": (unscheduled.get("message") or "unschedulable") if unscheduled else None,
        "message": (term.get("message") or "").strip() or None,
        "exitCode": term.get("exitCode"),
        "reason": term.get("reason"),
        "finishedAt": term.get("finishedAt"),
    }


def summarize_deployment(body: dict[str, Any]) -> dict[str, Any]:
    meta, spec, st = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    tmpl = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner": _controller_uid(meta),
        "hash": (meta.get("annotations") or {}).get(b.HASH_ANNOTATION),
        "digest": tmpl.get(b.DIGEST_ANNOTATION),
        "generation": meta.get("generation") or 0,
        "observedGeneration": st.get("observedGeneration") or 0,
        "replicas": spec.get("replicas", 1),
        "statusReplicas": st.get("replicas") or 0,
        "updated": st.get("updatedReplicas") or 0,
        "ready": st.get("readyReplicas") or 0,
        "available": st.get("availableReplicas") or 0,
        "deleting": bool(meta.get("deletionTimestamp")),
    }


def summarize_object(body: dict[str, Any]) -> dict[str, Any]:
    """ConfigMaps, Services, PersistentVolumeClaims: identity, ownership, desired-hash."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner": _controller_uid(meta),
        "owners": [dict(r) for r in meta.get("ownerReferences") or []],
        "hash": (meta.get("annotations") or {}).get(b.HASH_ANNOTATION),
        "component": labels.get(b.COMPONENT_LABEL),
        "resourceVersion": meta.get("resourceVersion"),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


@dataclass
class Children:
    """What exists in the cluster for one EmbeddingFinetune (summaries, see summarize_*)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by Job name
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Action:
    verb: str  # create | update | delete | set-owners
    kind: str
    name: str
    obj: dict[str, Any] | None = None
    uid: str | None = None  # delete precondition
    owners: list[dict[str, Any]] | None = None
    resource_version: str | None = None

    def __str__(self) -> str:
        return f"{self.verb} {self.kind}/{self.name}"


@dataclass
class Plan:
    actions: list[Action]
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (Normal|Warning, Reason, message)
    requeue_after: float | None = None


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def evaluate_report(message: str | None) -> EvaluateReport | None:
    """The evaluate pod's termination message, read with the model the stage writes it with."""
    return EvaluateReport.parse(message)


def export_digest(message: str | None) -> str | None:
    """status.modelDigest: the export pod's digest of the exported model folder."""
    report = ExportReport.parse(message)
    return report.model_digest if report is not None else None


def _trim(msg: str | None) -> str | None:
    if msg is None:
        return None
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= MESSAGE_MAX else msg[: MESSAGE_MAX - 3] + "..."


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((o for o in items if o.get("name") == name and not o.get("deleting")), None)


def _stage_message(job: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    if job["state"] == "Succeeded":
        done = [p for p in pods if p.get("phase") == "Succeeded" and p.get("message")]
    elif job["state"] == "Failed":
        done = [p for p in pods if p.get("phase") == "Failed" and p.get("message")]
    else:
        return None
    if done:
        done.sort(key=lambda p: (p.get("finishedAt") or "", p.get("name") or ""))
        return done[-1]["message"]
    if job["state"] == "Failed":
        return " ".join(x for x in (job.get("reason"), job.get("conditionMessage")) if x) or None
    return None


def _owners_key(refs: list[dict[str, Any]]) -> list[tuple]:
    return sorted((r.get("uid"), bool(r.get("controller"))) for r in refs)


def _ensure(actions: list[Action], blockers: list[str], desired: dict[str, Any],
            current: dict[str, Any] | None, uid: str, update: bool = True) -> None:
    kind, name = desired["kind"], desired["metadata"]["name"]
    if current is None:
        actions.append(Action("create", kind, name, desired))
    elif current.get("owner") != uid:
        blockers.append(f"{kind} {name} exists but is not owned by this EmbeddingFinetune")
    elif update and current.get("hash") != desired["metadata"].get("annotations", {}).get(b.HASH_ANNOTATION):
        actions.append(Action("update", kind, name, desired))


def rwo_multi_replica(spec: EmbeddingFinetuneSpec) -> bool:
    return spec.serving.replicas > 1 and "ReadWriteMany" not in spec.workspace.access_modes


def plan(efr: dict[str, Any], children: Children, settings: Settings, now: datetime,
         ignored_uids: frozenset[str] | set[str] = frozenset()) -> Plan:
    meta = efr["metadata"]
    name, uid = meta["name"], meta["uid"]
    generation = meta.get("generation") or 1
    annotations = meta.get("annotations") or {}
    old = efr.get("status") or {}
    nows = iso(now)
    actions: list[Action] = []
    blockers: list[str] = []
    requeue: float | None = None

    try:
        spec = EmbeddingFinetuneSpec.model_validate(efr.get("spec") or {})
    except ValidationError as err:
        message = "invalid spec: " + "; ".join(describe_validation_error(err, prefix="spec"))
        status = _status(old, generation, nows, phase="Failed", stage=old.get("stage"), message=message,
                         stages=old.get("stages") or [], metrics=old.get("metrics"), endpoint=old.get("endpoint"),
                         digest=old.get("modelDigest"), conditions={
                             "Progressing": ("False", "InvalidSpec", message),
                             "Succeeded": ("False", "InvalidSpec", message),
                             "Failed": ("True", "InvalidSpec", message),
                             "QualityGatePassed": ("Unknown", "NotEvaluated", "the spec is invalid"),
                             "Queued": ("False", "NotQueued", "no Job is waiting"),
                             "Ready": ("False", "InvalidSpec", message),
                         })
        return Plan([], status, transition_events(old, status), None)

    # ---- shared children: the spec ConfigMap and the workspace claim
    _ensure(actions, blockers, b.build_spec_configmap(efr, spec), _find(children.configmaps, b.spec_configmap_name(name)),
            uid)
    if not spec.workspace.existing_claim:
        desired_claim = b.build_workspace_claim(efr, spec)
        claim = _find(children.claims, desired_claim["metadata"]["name"])
        if claim is None:
            actions.append(Action("create", "PersistentVolumeClaim", desired_claim["metadata"]["name"], desired_claim))
        elif claim.get("owner") not in (None, uid):
            blockers.append(f"PersistentVolumeClaim {claim['name']} belongs to another object (a deleted "
                            "EmbeddingFinetune of the same name?)")
        else:
            want = b.desired_claim_owners(efr, spec, claim.get("owners") or [])
            if _owners_key(want) != _owners_key(claim.get("owners") or []):
                actions.append(Action("set-owners", "PersistentVolumeClaim", claim["name"], owners=want,
                                      resource_version=claim.get("resourceVersion")))

    # ---- stages
    fps = job_fingerprints(spec, annotations.get(b.RETRAIN_ANNOTATION),
                             annotations.get(b.RETRAIN_FROM_ANNOTATION))
    wanted = {s: b.job_name(name, s, fps[s]) for s in STAGES}
    jobs = [j for j in children.jobs if j.get("owner") == uid and j.get("uid") not in ignored_uids]
    live = {j["name"]: j for j in jobs if not j.get("deleting")}
    old_stages = {e.get("name"): e for e in old.get("stages") or []}
    entries: dict[str, dict[str, Any]] = {}
    for s in STAGES:
        jn = wanted[s]
        job = live.get(jn)
        prev = old_stages.get(s) if (old_stages.get(s) or {}).get("job") == jn else None
        e: dict[str, Any] = {"name": s, "job": jn}
        if job is not None:
            e["phase"] = job["state"]
            attempts = job["failed"] + (1 if job["active"] or job["succeeded"] else 0)
            if attempts:
                e["attempts"] = attempts
            if job.get("startTime"):
                e["startTime"] = job["startTime"]
            if job["state"] in ("Succeeded", "Failed") and job.get("completionTime"):
                e["completionTime"] = job["completionTime"]
            msg = _stage_message(job, children.pods.get(jn) or [])
            if msg is None and prev is not None and prev.get("phase") == job["state"]:
                msg = prev.get("message")
            if msg:
                e["message"] = _trim(msg)
        elif prev is not None and prev.get("phase") == "Succeeded":
            e = dict(prev)  # finished earlier; its Job was deleted since (the output is in the workspace)
        else:
            e["phase"] = "Pending"
        entries[s] = e

    current = next((s for s in STAGES if entries[s]["phase"] != "Succeeded"), None)

    # ---- superseded Jobs (an older fingerprint of a stage)
    wanted_names = set(wanted.values())
    stale = [j for j in jobs if j["name"] not in wanted_names and not j.get("deleting")]
    for j in stale:
        running = j["state"] in ("Running", "Queued")
        replaced = j.get("stage") in wanted and (wanted[j["stage"]] in live or j.get("stage") == current)
        if running or replaced or current is None:
            actions.append(Action("delete", "Job", j["name"], uid=j.get("uid")))
    rdv_wanted = b.rendezvous_service_name(wanted["train"]) if b.is_multi_node(spec, "train") else None
    for svc in children.services:
        if (svc.get("component") == "rendezvous" and svc.get("owner") == uid and svc["name"] != rdv_wanted
                and not svc.get("deleting")):
            actions.append(Action("delete", "Service", svc["name"], uid=svc.get("uid")))

    # ---- metrics and quality gate (from the evaluate pod's termination message)
    ev = entries["evaluate"]
    report = evaluate_report(ev.get("message")) if ev["phase"] == "Succeeded" else None
    metrics = report.metrics() if report is not None else None
    waiting_metrics = False
    if ev["phase"] == "Succeeded" and report is None and not ev.get("message"):
        done_at = _parse_time(ev.get("completionTime"))
        if done_at is None or (now - done_at).total_seconds() < settings.metrics_grace_seconds:
            waiting_metrics = True
    gate_blocks = report is not None and report.blocks_shipping()
    if ev["phase"] != "Succeeded":
        gate = ("Unknown", "NotEvaluated", "the evaluate stage of the current run has not finished")
    elif report is not None and report.gate == "passed":
        gate = ("True", "Passed", _gate_message(report))
    elif report is not None and report.gate == "overridden":
        gate = ("False", "Overridden", _gate_message(report) + "; shipped anyway (gate.override)")
    elif report is not None:
        gate = ("False", "BelowThreshold", _gate_message(report))
    elif waiting_metrics:
        gate = ("Unknown", "WaitingForMetrics", "waiting for the evaluate pod's termination message")
    else:
        gate = ("Unknown", "MetricsUnavailable",
                "the evaluate stage reported no gate outcome (termination message missing or not JSON)")

    # ---- next step of the pipeline
    phase, stage_col, message = "Running", current or "export", ""
    progressing = ("True", "StageRunning", "")
    failed = ("False", "NoFailure", "no stage failed")
    queued = ("False", "NotQueued", "no Job is waiting for admission")
    if current is not None:
        e = entries[current]
        if e["phase"] == "Failed":
            phase = "Failed"
            message = f"stage {current} failed: {e.get('message') or 'see the Job'}"
            progressing = ("False", "StageFailed", message)
            failed = ("True", "StageFailed", message)
        elif e["phase"] == "Queued":
            phase = "Queued"
            message = f"stage {current}: Job {e['job']} is suspended, waiting for admission" + (
                f" by Kueue queue {spec.queue_name}" if spec.queue_name else "")
            progressing = ("True", "Queued", message)
            queued = ("True", "WaitingForAdmission", message)
        elif e["phase"] == "Running":
            progressing = _running_stage(current, e, children.pods.get(e["job"]) or [])
            message = progressing[2]
        elif blockers:
            message = "; ".join(blockers)
            progressing = ("False", "ChildConflict", message)
            requeue = 10.0
        elif current == "export" and gate_blocks:
            phase = "Failed"
            message = f"quality gate failed: {gate[2]}; the model is not exported or served (set " \
                      "evaluation.gate.override to ship anyway)"
            progressing = ("False", "QualityGateFailed", message)
            failed = ("True", "QualityGateFailed", message)
        elif current == "export" and waiting_metrics:
            message = "waiting for the evaluate stage's metrics"
            progressing = ("True", "WaitingForMetrics", message)
            requeue = 2.0
        elif b.is_multi_node(spec, current) and "ReadWriteMany" not in spec.workspace.access_modes:
            phase = "Blocked"
            message = (f"training.nodes={spec.training.nodes} needs a ReadWriteMany workspace (every training pod "
                       f"mounts it), but workspace.accessModes is {','.join(spec.workspace.access_modes)}")
            progressing = ("False", "ReadWriteOnceMultiNode", message)
        elif spec.suspend:
            phase = "Suspended"
            message = f"suspended before stage {current} (spec.suspend)"
            progressing = ("False", "Suspended", message)
        else:
            fp = fps[current]
            if b.is_multi_node(spec, current):
                _ensure(actions, blockers, b.build_rendezvous_service(efr, current, fp),
                        _find(children.services, b.rendezvous_service_name(wanted[current])), uid, update=False)
            force = bool(annotations.get(b.RETRAIN_ANNOTATION)) and current == (
                annotations.get(b.RETRAIN_FROM_ANNOTATION) if annotations.get(b.RETRAIN_FROM_ANNOTATION) in STAGES
                else STAGES[0])
            actions.append(Action("create", "Job", wanted[current],
                                  b.build_stage_job(efr, spec, current, fp, settings, force=force)))
            message = f"starting stage {current} (Job {wanted[current]})"
            progressing = ("True", "StageStarting", message)

    # ---- serving
    serving_name = b.serving_name(name)
    dep = _find(children.deployments, serving_name)
    svc = _find(children.services, serving_name)
    dep_mine = dep if dep is not None and dep.get("owner") == uid else None
    endpoint = None
    digest = dep_mine.get("digest") if dep_mine else None
    ready: tuple[str, str, str]
    if current is None:
        stage_col = "serving" if spec.serving.enabled else "export"
        model_digest = export_digest(entries["export"].get("message")) or f"run-{fps['export']}"
        if not spec.serving.enabled:
            for obj, kind in ((dep, "Deployment"), (svc, "Service")):
                if obj is not None and obj.get("owner") == uid:
                    actions.append(Action("delete", kind, obj["name"], uid=obj.get("uid")))
            phase, message = "Succeeded", "pipeline complete (serving disabled)"
            ready = ("False", "ServingDisabled", "serving.enabled is false")
            progressing = ("False", "Completed", message)
            digest = None
        elif rwo_multi_replica(spec):
            modes = ",".join(spec.workspace.access_modes)
            message = (f"serving.replicas={spec.serving.replicas} needs a ReadWriteMany workspace, but "
                       f"workspace.accessModes is {modes}: set serving.replicas to 1 or use a ReadWriteMany "
                       "claim (workspace.accessModes / workspace.existingClaim)")
            phase = "Blocked"
            ready = ("False", "ReadWriteOnceMultiReplica", message)
            progressing = ("False", "ReadWriteOnceMultiReplica", message)
            if svc is not None and dep_mine is not None:
                endpoint = b.serving_endpoint(efr, spec)
        else:
            desired_dep = b.build_serving_deployment(efr, spec, settings, model_digest)
            desired_svc = b.build_serving_service(efr, spec)
            _ensure(actions, blockers, desired_svc, svc, uid)
            _ensure(actions, blockers, desired_dep, dep, uid)
            endpoint = b.serving_endpoint(efr, spec)
            want = spec.serving.replicas
            rolled = (dep_mine is not None
                      and dep_mine.get("hash") == desired_dep["metadata"]["annotations"][b.HASH_ANNOTATION]
                      and dep_mine["observedGeneration"] >= dep_mine["generation"]
                      and dep_mine["updated"] == want and dep_mine["ready"] == want
                      and dep_mine["available"] == want and dep_mine["statusReplicas"] == want)
            if blockers:
                phase, message = "Blocked", "; ".join(blockers)
                ready = ("False", "ChildConflict", message)
                progressing = ("False", "ChildConflict", message)
                requeue = 10.0
            elif rolled and want == 0:
                # a Deployment at zero replicas is "rolled out", but nothing answers at the endpoint
                phase = "Succeeded"
                message = (f"pipeline complete; model {model_digest} is deployed with serving.replicas 0: no pod "
                           f"serves it at {endpoint} until serving.replicas is raised")
                ready = ("False", "ScaledToZero", message)
                progressing = ("False", "Completed", message)
            elif rolled:
                phase = "Serving"
                message = f"serving model {model_digest} at {endpoint}"
                ready = ("True", "ModelServing", message)
                progressing = ("False", "Completed", message)
            else:
                phase = "Deploying"
                have = dep_mine["ready"] if dep_mine else 0
                message = f"rolling out model {model_digest}: {have}/{want} replicas ready"
                ready = ("False", "Deploying", message)
                progressing = ("True", "Deploying", message)
            digest = digest if not rolled else model_digest
    else:
        if dep_mine is not None:
            ready = ("False", "ServingPreviousModel",
                     f"serving the previous model ({digest or 'unknown digest'}) until the pipeline completes for "
                     "the current spec")
        elif spec.serving.enabled:
            ready = ("False", "NotDeployed", "the model is served once every stage succeeded")
        else:
            ready = ("False", "ServingDisabled", "serving.enabled is false")
        if svc is not None and svc.get("owner") == uid and spec.serving.enabled:
            endpoint = b.serving_endpoint(efr, spec)

    succeeded = ("True", "PipelineCompleted", "every stage succeeded") if current is None else (
        ("False", failed[1], failed[2]) if failed[0] == "True" else ("False", "InProgress",
                                                                    f"next stage: {current}"))
    if metrics is None:
        metrics = old.get("metrics")  # keep the served model's numbers until the new run's evaluate reports
    status = _status(old, generation, nows, phase=phase, stage=stage_col, message=message,
                     stages=[entries[s] for s in STAGES], metrics=metrics, endpoint=endpoint, digest=digest,
                     conditions={
                         "Progressing": progressing,
                         "Succeeded": succeeded,
                         "Failed": failed,
                         "QualityGatePassed": gate,
                         "Queued": queued,
                         "Ready": ready,
                     })
    return Plan(actions, status, transition_events(old, status), requeue)


def _running_stage(stage: str, entry: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str, str]:
    """The Progressing condition of a stage whose Job runs: running, or waiting for a node that fits."""
    stuck = next((p["unschedulable"] for p in pods if p.get("unschedulable") and p.get("phase") == "Pending"), None)
    if stuck:
        # a GPU stage on a cluster without GPUs waits here forever: say so, with the scheduler's words
        return ("True", "Unschedulable", f"stage {stage}: its pod cannot be scheduled: {_trim(stuck)} (scheduling."
                f"stages.{stage}.gpus / training.gpusPerNode / resources set what it asks for)")
    attempt = f", attempt {entry['attempts']})" if entry.get("attempts", 1) > 1 else ")"
    return ("True", "StageRunning", f"stage {stage} running (Job {entry['job']}{attempt}")


def _gate_message(r: EvaluateReport) -> str:
    base = r.gate_base if r.gate_base is not None else r.base_ndcg10
    tuned = r.gate_tuned if r.gate_tuned is not None else r.tuned_ndcg10
    if base is None or tuned is None:
        return f"gate {r.gate} on {r.gate_metric} ({r.gate_dataset})"
    change = f" ({r.relative_improvement:+.1%}" if r.relative_improvement is not None else " ("
    required = f", required >= {r.required:+.1%})" if r.required is not None else ")"
    return f"{r.gate_metric} on {r.gate_dataset}: base {base:.4f}, tuned {tuned:.4f}{change}{required}"


def _status(old: dict[str, Any], generation: int, now: str, *, phase: str, stage: str | None, message: str,
            stages: list[dict[str, Any]], metrics: dict[str, Any] | None, endpoint: str | None,
            digest: str | None, conditions: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    conds = []
    for ctype in CONDITION_TYPES:
        st, reason, msg = conditions[ctype]
        prev = old_conds.get(ctype)
        ltt = prev.get("lastTransitionTime") if prev and prev.get("status") == st and prev.get(
            "lastTransitionTime") else now
        conds.append({"type": ctype, "status": st, "reason": reason, "message": _trim(msg) or "",
                      "lastTransitionTime": ltt, "observedGeneration": generation})
    out: dict[str, Any] = {"observedGeneration": generation, "phase": phase}
    if stage:
        out["stage"] = stage
    if message:
        out["message"] = _trim(message)
    out["stages"] = stages
    if metrics:
        out["metrics"] = metrics
    if endpoint:
        out["endpoint"] = endpoint
    if digest:
        out["modelDigest"] = digest
    out["conditions"] = conds
    return out


def transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One Event per transition between the status the operator wrote last and the new one."""
    events: list[tuple[str, str, str]] = []
    old_stages = {e.get("name"): e for e in old.get("stages") or []}
    for e in new.get("stages") or []:
        o = old_stages.get(e["name"]) or {}
        before = o.get("phase") if o.get("job") == e.get("job") else None
        ph = e.get("phase")
        if ph == before or ph == "Pending":
            continue
        s, job = e["name"], e.get("job")
        if ph == "Running":
            events.append(("Normal", "StageStarted", f"stage {s} started (Job {job})"))
        elif ph == "Queued":
            events.append(("Normal", "StageQueued", f"stage {s}: Job {job} is waiting for admission (suspended)"))
        elif ph == "Succeeded":
            events.append(("Normal", "StageSucceeded", f"stage {s} succeeded" + (
                f": {e['message']}" if e.get("message") else "")))
        elif ph == "Failed":
            events.append(("Warning", "StageFailed", f"stage {s} failed after {e.get('attempts', 1)} attempt(s)"
                           + (f": {e['message']}" if e.get("message") else "")))
    oc = {c.get("type"): c for c in old.get("conditions") or []}
    nc = {c.get("type"): c for c in new.get("conditions") or []}
    old_phase, phase = old.get("phase"), new.get("phase")
    stage = new.get("stage") or ""
    if phase != old_phase:
        if phase == "Suspended":
            events.append(("Normal", "Suspended", new.get("message") or f"suspended before stage {stage}"))
        elif old_phase == "Suspended":
            events.append(("Normal", "Resumed", f"resumed at stage {stage}"))
        if phase in ("Running", "Queued") and old_phase in ("Serving", "Succeeded", "Deploying", "Blocked", "Failed"):
            events.append(("Normal", "Retraining", f"spec or retrain annotation changed: re-running from stage "
                                                   f"{stage}"))
        if phase == "Deploying":
            events.append(("Normal", "Deploying", new.get("message") or "rolling out the model"))
        elif phase == "Serving":
            events.append(("Normal", "Ready", new.get("message") or "serving"))
        elif phase == "Succeeded":
            events.append(("Normal", "Completed", new.get("message") or "pipeline complete"))
        elif phase == "Blocked":
            events.append(("Warning", nc.get("Ready", {}).get("reason") or "Blocked", new.get("message") or ""))
        elif phase == "Failed":
            reason = nc.get("Failed", {}).get("reason")
            if reason in ("InvalidSpec", "QualityGateFailed"):
                events.append(("Warning", reason, f"stage {stage}: {new.get('message') or ''}"))
    p_old, p_new = oc.get("Progressing") or {}, nc.get("Progressing") or {}
    if p_new.get("reason") == "Unschedulable" and p_old.get("reason") != "Unschedulable":
        events.append(("Warning", "Unschedulable", p_new.get("message") or ""))
    g_old, g_new = oc.get("QualityGatePassed") or {}, nc.get("QualityGatePassed") or {}
    if (g_new.get("status"), g_new.get("reason")) != (g_old.get("status"), g_old.get("reason")):
        if g_new.get("status") == "True":
            events.append(("Normal", "QualityGatePassed", f"stage evaluate: {g_new.get('message')}"))
        elif g_new.get("reason") == "Overridden":
            events.append(("Warning", "QualityGateOverridden", f"stage evaluate: {g_new.get('message')}"))
        elif g_new.get("reason") == "MetricsUnavailable":
            events.append(("Warning", "MetricsUnavailable", f"stage evaluate: {g_new.get('message')}"))
    return events
