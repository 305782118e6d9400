"""The serving part of a reconcile: the Deployment and Service of the exported model, and Ready.

Once every stage succeeded the model is rolled out (or the reason it cannot be is reported); while a
run is in progress the model of an earlier run keeps being served. Next to the Deployment, for shared
clusters: a PodDisruptionBudget whenever more than one serving pod can run, and the optional
HorizontalPodAutoscaler and NetworkPolicy (serving.autoscaling, serving.networkPolicy); each is deleted
again when no longer wanted. The Deployment of an autoscaled model is created at minReplicas and its
replica count is the autoscaler's from then on (never part of an update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from eft.controller import builders as b
from eft.controller.actions import Changes
from eft.controller.children import Children, export_digest, live
from eft.controller.conditions import Condition, ConditionType
from eft.controller.settings import Settings
from eft.controller.stage_runs import StageRun
from eft.controller.step import Step
from eft.spec import EmbeddingFinetuneSpec

_READY, _PROGRESSING = ConditionType.READY, ConditionType.PROGRESSING


@dataclass(frozen=True)
class Serving:
    ready: Condition
    endpoint: str | None  # status.endpoint
    digest: str | None  # status.modelDigest: the model the serving pods run


@dataclass(frozen=True)
class _Current:
    deployment: dict[str, Any] | None  # the serving Deployment of that name, whoever owns it
    service: dict[str, Any] | None
    mine: dict[str, Any] | None  # the Deployment when this EmbeddingFinetune owns it
    disruption_budget: dict[str, Any] | None = None
    autoscaler: dict[str, Any] | None = None
    network_policy: dict[str, Any] | None = None


def _current(changes: Changes, efr: dict[str, Any], children: Children) -> _Current:
    name = b.serving_name(efr["metadata"]["name"])
    dep, svc = live(children.deployments, name), live(children.services, name)
    return _Current(dep, svc, dep if changes.owns(dep) else None, live(children.disruption_budgets, name),
                    live(children.autoscalers, name), live(children.network_policies, name))


# (kind, the builder of the desired object or None when unwanted, the live summary in _Current)
_Extra = tuple[str, Callable[[dict[str, Any], EmbeddingFinetuneSpec], dict[str, Any] | None], str]
_BEFORE_PODS: tuple[_Extra, ...] = (("NetworkPolicy", b.build_serving_network_policy, "network_policy"),)
_AFTER_PODS: tuple[_Extra, ...] = (
    ("PodDisruptionBudget", b.build_serving_disruption_budget, "disruption_budget"),
    ("HorizontalPodAutoscaler", b.build_serving_autoscaler, "autoscaler"),
)


def rwo_multi_replica(spec: EmbeddingFinetuneSpec) -> bool:
    """More than one serving pod can run (serving.replicas, or autoscaling.maxReplicas) on a ReadWriteOnce
    workspace."""
    return spec.serving.max_replicas() > 1 and "ReadWriteMany" not in spec.workspace.access_modes


def _ensure_extras(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, cur: _Current,
                   extras: tuple[_Extra, ...]) -> None:
    """Create or update each wanted object; delete the ones this EmbeddingFinetune owns that are unwanted."""
    for kind, build, attr in extras:
        desired, current = build(efr, spec), getattr(cur, attr)
        if desired is not None:
            changes.ensure(desired, current)
        elif changes.owns(current):
            changes.delete(kind, current)


def serving_during_run(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec,
                       children: Children) -> Serving:
    """A run is in progress: whatever serves keeps serving the earlier run's model."""
    cur = _current(changes, efr, children)
    digest = cur.mine.get("digest") if cur.mine else None
    if cur.mine is not None:
        ready = Condition(_READY, "False", "ServingPreviousModel", f"serving the previous model "
                          f"({digest or 'unknown digest'}) until the pipeline completes for the current spec")
    elif spec.serving.enabled:
        ready = Condition(_READY, "False", "NotDeployed", "the model is served once every stage succeeded")
    else:
        ready = Condition(_READY, "False", "ServingDisabled", "serving.enabled is false")
    endpoint = b.serving_endpoint(efr, spec) if changes.owns(cur.service) and spec.serving.enabled else None
    return Serving(ready, endpoint, digest)


def serve(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings, run: StageRun,
          children: Children) -> tuple[Step, Serving]:
    """Every stage succeeded: serve the exported model (or remove serving, or say why it cannot be)."""
    cur = _current(changes, efr, children)
    if not spec.serving.enabled:
        return _serving_disabled(changes, cur)
    if rwo_multi_replica(spec):
        return _multi_replica_blocked(efr, spec, cur)
    model = export_digest(run.entries["export"].get("message")) or f"run-{run.fingerprints['export']}"
    return _roll_out(changes, efr, spec, settings, model, cur)


def _serving_disabled(changes: Changes, cur: _Current) -> tuple[Step, Serving]:
    for obj, kind in ((cur.autoscaler, "HorizontalPodAutoscaler"), (cur.disruption_budget, "PodDisruptionBudget"),
                      (cur.deployment, "Deployment"), (cur.service, "Service"),
                      (cur.network_policy, "NetworkPolicy")):
        if changes.owns(obj):
            changes.delete(kind, obj)
    message = "pipeline complete (serving disabled)"
    return (Step("Succeeded", message, Condition(_PROGRESSING, "False", "Completed", message)),
            Serving(Condition(_READY, "False", "ServingDisabled", "serving.enabled is false"), None, None))


def _multi_replica_blocked(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, cur: _Current) -> tuple[Step, Serving]:
    # every serving pod mounts the workspace: a ReadWriteOnce volume attaches to one node only
    if spec.serving.autoscaling.enabled:
        what, fix = (f"serving.autoscaling.maxReplicas={spec.serving.autoscaling.max_replicas}",
                     "set serving.autoscaling.maxReplicas to 1")
    else:
        what, fix = f"serving.replicas={spec.serving.replicas}", "set serving.replicas to 1"
    message = (f"{what} needs a ReadWriteMany workspace, but workspace.accessModes is "
               f"{','.join(spec.workspace.access_modes)}: {fix} or use a ReadWriteMany claim "
               "(workspace.accessModes / workspace.existingClaim)")
    endpoint = b.serving_endpoint(efr, spec) if cur.service is not None and cur.mine is not None else None
    return (Step("Blocked", message, Condition(_PROGRESSING, "False", "ReadWriteOnceMultiReplica", message)),
            Serving(Condition(_READY, "False", "ReadWriteOnceMultiReplica", message), endpoint,
                    cur.mine.get("digest") if cur.mine else None))


def _roll_out(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings, model: str,
              cur: _Current) -> tuple[Step, Serving]:
    desired = b.build_serving_deployment(efr, spec, settings, model)
    auto = spec.serving.autoscaling
    # the pods are never reachable from outside the allowed clients: the NetworkPolicy comes first
    _ensure_extras(changes, efr, spec, cur, _BEFORE_PODS)
    changes.ensure(b.build_serving_service(efr, spec), cur.service)
    if auto.enabled and cur.deployment is None:
        # created at minReplicas; the hash (of the object without replicas) stays the desired one
        created = {**desired, "spec": {**desired["spec"], "replicas": auto.min_replicas}}
        changes.ensure(created, None)
    else:
        changes.ensure(desired, cur.deployment)
    _ensure_extras(changes, efr, spec, cur, _AFTER_PODS)
    endpoint = b.serving_endpoint(efr, spec)
    want = spec.serving.replicas
    if auto.enabled:
        want = cur.mine["replicas"] if cur.mine is not None else auto.min_replicas  # the autoscaler's count
    rolled = rolled_out(cur.mine, desired, want)
    step, ready = _rollout_state(changes.blockers, rolled, cur.mine, want, model, endpoint)
    digest = model if rolled else (cur.mine.get("digest") if cur.mine else None)
    return step, Serving(ready, endpoint, digest)


def rolled_out(mine: dict[str, Any] | None, desired: dict[str, Any], replicas: int) -> bool:
    """The Deployment runs the desired template, every replica updated, ready and available."""
    return (mine is not None
            and mine.get("hash") == desired["metadata"]["annotations"][b.HASH_ANNOTATION]
            and mine["observedGeneration"] >= mine["generation"]
            and mine["updated"] == replicas and mine["ready"] == replicas
            and mine["available"] == replicas and mine["statusReplicas"] == replicas)


def _rollout_state(blockers: list[str], rolled: bool, mine: dict[str, Any] | None, want: int, model: str,
                   endpoint: str) -> tuple[Step, Condition]:
    if blockers:
        message = "; ".join(blockers)
        return (Step("Blocked", message, Condition(_PROGRESSING, "False", "ChildConflict", message), requeue=10.0),
                Condition(_READY, "False", "ChildConflict", message))
    if rolled and want == 0:
        # a Deployment at zero replicas is "rolled out", but nothing answers at the endpoint
        message = (f"pipeline complete; model {model} is deployed with serving.replicas 0: no pod serves it at "
                   f"{endpoint} until serving.replicas is raised")
        return (Step("Succeeded", message, Condition(_PROGRESSING, "False", "Completed", message)),
                Condition(_READY, "False", "ScaledToZero", message))
    if rolled:
        message = f"serving model {model} at {endpoint}"
        return (Step("Serving", message, Condition(_PROGRESSING, "False", "Completed", message)),
                Condition(_READY, "True", "ModelServing", message))
    message = f"rolling out model {model}: {mine['ready'] if mine else 0}/{want} replicas ready"
    return (Step("Deploying", message, Condition(_PROGRESSING, "True", "Deploying", message)),
            Condition(_READY, "False", "Deploying", message))
