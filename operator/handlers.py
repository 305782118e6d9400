"""kopf wiring: caches (kopf indices) of the children, and thin event handlers that enqueue a reconcile.

* ``@kopf.index`` on Jobs, stage pods, ConfigMaps, PVCs, Deployments, Services, PodDisruptionBudgets,
  HorizontalPodAutoscalers and NetworkPolicies the operator made
  (server-side label selector ``app.kubernetes.io/managed-by=eft-operator``): compact summaries keyed by
  (namespace, instance). kopf fills every index before it calls any handler, so a restarted operator
  never plans from a half-listed cache.
* ``@kopf.on.event`` on EmbeddingFinetunes covers resume (the initial listing, ``type`` None), create
  (ADDED) and update (MODIFIED): each records the body and enqueues the key; deletion forgets it.
* ``@kopf.on.event`` on the children enqueues their owner, so a finished Job is acted on at once.
* The periodic resync (a plain asyncio task of the controller) is the timer. kopf's per-object
  ``@kopf.timer``/``@kopf.daemon`` would put a finalizer on every resource (deletion would then hang
  whenever the operator is down) and cost an extra PATCH per object, so it is not used.

The handlers never patch the resource: nothing of kopf's bookkeeping (annotations, finalizers) lands on
EmbeddingFinetunes; the operator's only writes are the children, ``status`` and Events.
"""

from __future__ import annotations

from typing import Any

import kopf

from eft.controller import builders as b
from eft.controller.controller import Controller
from eft.controller.children import summarize_deployment, summarize_job, summarize_object, summarize_pod
from eft.spec import API_GROUP, API_VERSION, PLURAL

registry = kopf.OperatorRegistry()

MANAGED = {b.MANAGED_BY_LABEL: b.MANAGED_BY}
MANAGED_SELECTOR = f"{b.MANAGED_BY_LABEL}={b.MANAGED_BY}"
STAGE_POD_SELECTOR = f"{MANAGED_SELECTOR},{b.STAGE_LABEL}"

CHILD_RESOURCES = {
    "jobs": ("batch", "v1", "jobs"),
    "pods": ("v1", "pods"),
    "configmaps": ("v1", "configmaps"),
    "claims": ("v1", "persistentvolumeclaims"),
    "deployments": ("apps", "v1", "deployments"),
    "services": ("v1", "services"),
    "disruption_budgets": ("policy", "v1", "poddisruptionbudgets"),
    "autoscalers": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "network_policies": ("networking.k8s.io", "v1", "networkpolicies"),
}


def _controller(memo: Any) -> Controller:
    return memo["controller"] if isinstance(memo, dict) else memo.controller


def _instance_key(namespace: str, labels: dict[str, str]) -> tuple[str, str | None]:
    return (namespace, labels.get(b.INSTANCE_LABEL))


@kopf.on.login(registry=registry)
def _login(**kwargs: Any):
    """In-cluster ServiceAccount or $KUBECONFIG, through the official client's loaders."""
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
async def _startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # Only what the operator made is watched (server-side selectors); kopf posts no Events of its own
    # (the controller posts one per transition) and runs without peering objects.
    for res in CHILD_RESOURCES.values():
        settings.watching.label_selectors[res] = STAGE_POD_SELECTOR if res[-1] == "pods" else MANAGED_SELECTOR
    settings.posting.enabled = False
    settings.peering.standalone = True
    # No cluster-scoped discovery watches (CRDs, namespaces): RBAC stays namespaced-resource only. The
    # CRD must exist when the operator starts; watched namespaces are the ones given (or all).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.request_timeout = 60
    await _controller(memo).start()


@kopf.on.cleanup(registry=registry)
async def _cleanup(memo: Any, **_: Any) -> None:
    await _controller(memo).stop()


# ----------------------------------------------------------------------------- caches


@kopf.index(*CHILD_RESOURCES["jobs"], labels=MANAGED, registry=registry)
def eft_jobs(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any):
    return {_instance_key(namespace, labels): summarize_job(_raw(body))}


@kopf.index(*CHILD_RESOURCES["pods"], labels={**MANAGED, b.STAGE_LABEL: kopf.PRESENT}, registry=registry)
def eft_stage_pods(namespace: str, body: kopf.Body, **_: Any):
    s = summarize_pod(_raw(body))
    return {(namespace, s["job"]): s} if s["job"] else None


@kopf.index(*CHILD_RESOURCES["deployments"], labels=MANAGED, registry=registry)
def eft_deployments(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any):
    return {_instance_key(namespace, labels): summarize_deployment(_raw(body))}


def _object_index(kind: str) -> None:
    """The cache of one kind summarized by summarize_object (identity, owners, desired hash), named eft_<kind>."""
    def index(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any):
        return {_instance_key(namespace, labels): summarize_object(_raw(body))}

    index.__name__ = index.__qualname__ = f"eft_{kind}"
    kopf.index(*CHILD_RESOURCES[kind], labels=MANAGED, registry=registry, id=f"eft_{kind}")(index)


for _kind in ("configmaps", "claims", "services", "disruption_budgets", "autoscalers", "network_policies"):
    _object_index(_kind)


def _raw(body: kopf.Body) -> dict[str, Any]:
    return {k: body.get(k) for k in ("metadata", "spec", "status")}


# ----------------------------------------------------------------------------- triggers


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
async def on_embeddingfinetune(event: dict[str, Any], body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Resume (initial listing), create and update all lead to the same level-based reconcile."""
    c = _controller(memo)
    c.bind_indices(kwargs)
    c.observe(event.get("type"), {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")})


def _child_trigger(resource: tuple[str, ...], labels_filter: dict[str, Any]):
    async def trigger(namespace: str, labels: dict[str, str], memo: Any, **kwargs: Any) -> None:
        c = _controller(memo)
        c.bind_indices(kwargs)
        instance = labels.get(b.INSTANCE_LABEL)
        if instance:
            c.enqueue((namespace, instance))

    trigger.__name__ = f"on_{resource[-1]}"
    kopf.on.event(*resource, labels=labels_filter, registry=registry, id=f"enqueue-owner-of-{resource[-1]}")(trigger)
    return trigger


for _name, _res in CHILD_RESOURCES.items():
    _child_trigger(_res, {**MANAGED, b.STAGE_LABEL: kopf.PRESENT} if _name == "pods" else MANAGED)
