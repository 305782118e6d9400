"""The serving part of a reconcile: the Deployment and Service of the exported model, and Ready.

Once every stage succeeded the model is rolled out (or the reason it cannot be is reported); while a
run is in progress the model of an earlier run keeps being served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def _current(changes: Changes, efr: dict[str, Any], children: Children) -> _Current:
    name = b.serving_name(efr["metadata"]["name"])
    dep, svc = live(children.deployments, name), live(children.services, name)
    return _Current(dep, svc, dep if changes.owns(dep) else None)


def rwo_multi_replica(spec: EmbeddingFinetuneSpec) -> bool:
    return spec.serving.replicas > 1 and "ReadWriteMany" not in spec.workspace.access_modes


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
    for obj, kind in ((cur.deployment, "Deployment"), (cur.service, "Service")):
        if changes.owns(obj):
            changes.delete(kind, obj)
    message = "pipeline complete (serving disabled)"
    return (Step("Succeeded", message, Condition(_PROGRESSING, "False", "Completed", message)),
            Serving(Condition(_READY, "False", "ServingDisabled", "serving.enabled is false"), None, None))


def _multi_replica_blocked(efr: dict[str, Any], spec: EmbeddingFinetuneSpec, cur: _Current) -> tuple[Step, Serving]:
    # every serving pod mounts the workspace: a ReadWriteOnce volume attaches to one node only
    message = (f"serving.replicas={spec.serving.replicas} needs a ReadWriteMany workspace, but "
               f"workspace.accessModes is {','.join(spec.workspace.access_modes)}: set serving.replicas to 1 or use "
               "a ReadWriteMany claim (workspace.accessModes / workspace.existingClaim)")
    endpoint = b.serving_endpoint(efr, spec) if cur.service is not None and cur.mine is not None else None
    return (Step("Blocked", message, Condition(_PROGRESSING, "False", "ReadWriteOnceMultiReplica", message)),
            Serving(Condition(_READY, "False", "ReadWriteOnceMultiReplica", message), endpoint,
                    cur.mine.get("digest") if cur.mine else None))


def _roll_out(changes: Changes, efr: dict[str, Any], spec: EmbeddingFinetuneSpec, settings: Settings, model: str,
              cur: _Current) -> tuple[Step, Serving]:
    desired = b.build_serving_deployment(efr, spec, settings, model)
    changes.ensure(b.build_serving_service(efr, spec), cur.service)
    changes.ensure(desired, cur.deployment)
    endpoint = b.serving_endpoint(efr, spec)
    rolled = rolled_out(cur.mine, desired, spec.serving.replicas)
    step, ready = _rollout_state(changes.blockers, rolled, cur.mine, spec.serving.replicas, model, endpoint)
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
