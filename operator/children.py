"""What exists in the cluster for one EmbeddingFinetune: compact summaries of its child objects.

The watch caches (kopf indices, see handlers.py) hold these summaries rather than whole objects, and
``plan`` reads nothing else; the stage reports a pod's termination message carries are read here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eft.controller import builders as b
from eft.stage_reports import EvaluateReport, ExportReport


def controller_uid(meta: dict[str, Any]) -> str | None:
    """The uid in the controller owner reference of an object's metadata."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _job_state(spec: dict[str, Any], true: dict[str, dict[str, Any]]) -> str:
    if "Complete" in true:
        return "Succeeded"
    if "Failed" in true:
        return "Failed"
    return "Queued" if spec.get("suspend") else "Running"  # Kueue admits a Job by unsuspending it


def summarize_job(body: dict[str, Any]) -> dict[str, Any]:
    meta, spec, st = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    labels = meta.get("labels") or {}
    true = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    failed = true.get("Failed") or {}
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner": controller_uid(meta),
        "stage": labels.get(b.STAGE_LABEL),
        "fingerprint": labels.get(b.FINGERPRINT_LABEL),
        "state": _job_state(spec, true),
        "active": st.get("active") or 0,
        "failed": st.get("failed") or 0,
        "succeeded": st.get("succeeded") or 0,
        "startTime": st.get("startTime"),
        "completionTime": st.get("completionTime") or failed.get("lastTransitionTime"),
        "reason": failed.get("reason"),
        "conditionMessage": failed.get("message"),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


def _termination(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage container's last termination (another container's when the stage one has none)."""
    term: dict[str, Any] = {}
    for cs in statuses:
        t = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if t:
            term = t
            if cs.get("name") == "stage":
                break
    return term


def _unschedulable(conditions: list[dict[str, Any]]) -> str | None:
    """The scheduler's message when the pod fits no node."""
    c = next((c for c in conditions if c.get("type") == "PodScheduled" and c.get("status") == "False"
              and c.get("reason") == "Unschedulable"), None)
    return (c.get("message") or "unschedulable") if c else None


# Container waiting reasons that never clear by themselves: a missing Secret/ConfigMap key, a bad image.
STUCK_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
                           "InvalidImageName", "ErrImageNeverPull"})


def _stuck_container(statuses: list[dict[str, Any]]) -> str | None:
    """The kubelet's words when a container of the pod cannot start (a Secret the spec names is missing...)."""
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    return None


def summarize_pod(body: dict[str, Any]) -> dict[str, Any]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    labels = meta.get("labels") or {}
    term = _termination(st.get("containerStatuses") or [])
    return {
        "name": meta.get("name"),
        "job": labels.get(b.JOB_NAME_LABEL) or labels.get("job-name"),
        "phase": st.get("phase"),
        "unschedulable": _unschedulable(st.get("conditions") or []),
        "stuck": _stuck_container((st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])),
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
        "owner": controller_uid(meta),
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
    """ConfigMaps, Services, PersistentVolumeClaims, PodDisruptionBudgets, HorizontalPodAutoscalers,
    NetworkPolicies: identity, ownership, desired-hash."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner": controller_uid(meta),
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
    disruption_budgets: list[dict[str, Any]] = field(default_factory=list)  # policy/v1 PodDisruptionBudgets
    autoscalers: list[dict[str, Any]] = field(default_factory=list)  # autoscaling/v2 HorizontalPodAutoscalers
    network_policies: list[dict[str, Any]] = field(default_factory=list)


def live(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The summary named ``name``, unless that object is being deleted."""
    return next((o for o in items if o.get("name") == name and not o.get("deleting")), None)


def evaluate_report(message: str | None) -> EvaluateReport | None:
    """The evaluate pod's termination message, read with the model the stage writes it with."""
    return EvaluateReport.parse(message)


def export_digest(message: str | None) -> str | None:
    """status.modelDigest: the export pod's digest of the exported model folder."""
    report = ExportReport.parse(message)
    return report.model_digest if report is not None else None
