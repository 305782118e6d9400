"""The kopf wiring (handlers.py), through kopf's own registry, matching, indexing and handler execution.

kopf runs these steps itself in a live operator: its registry picks the handlers whose resource and label
filters match an object, its indexer fills the indices before any handler runs, and its executor calls a
handler with the keyword arguments of the cause (the indices included). The tests drive those same entry
points, so a handler that asks for a keyword kopf does not pass, or a filter that lets the wrong objects
through, fails here rather than in a cluster.
"""


from __future__ import annotations

import asyncio
import logging

import kopf
import pytest
from kopf._core.actions import execution, lifecycles, progression
from kopf._core.engines.activities import run_activity
from kopf._core.engines.indexing import IndexingMemory, OperatorIndexers, index_resource
from kopf._core.intents.causes import Activity, detect_watching_cause

from eft.controller import builders as b
from eft.controller import handlers as h
from eft.controller.children import summarize_job, summarize_object, summarize_pod
from eft.controller.controller import INDEX_NAMES, Controller, WorkQueue
from eft.spec import API_GROUP, API_VERSION, PLURAL
from tests.unit.operator.factories import SETTINGS

LOG = logging.getLogger("tests.handlers")

EFT = kopf.Resource(API_GROUP, API_VERSION, PLURAL, kind="EmbeddingFinetune")
JOBS = kopf.Resource("batch", "v1", "jobs", kind="Job")
PODS = kopf.Resource("", "v1", "pods", kind="Pod")
CONFIGMAPS = kopf.Resource("", "v1", "configmaps", kind="ConfigMap")
CLAIMS = kopf.Resource("", "v1", "persistentvolumeclaims", kind="PersistentVolumeClaim")
DEPLOYMENTS = kopf.Resource("apps", "v1", "deployments", kind="Deployment")
SERVICES = kopf.Resource("", "v1", "services", kind="Service")
CHILDREN = {"jobs": JOBS, "pods": PODS, "configmaps": CONFIGMAPS, "claims": CLAIMS, "deployments": DEPLOYMENTS,
            "services": SERVICES}
EVERY_RESOURCE = [EFT, *CHILDREN.values()]

MANAGED = {b.MANAGED_BY_LABEL: b.MANAGED_BY}
STAGE_POD = {**MANAGED, b.STAGE_LABEL: kopf.PRESENT}


# ----------------------------------------------------------------------------- what kopf runs it with


class RecordingQueue(WorkQueue):
    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[str, str]] = []

    def add(self, key):
        self.added.append(key)
        super().add(key)


def _controller() -> Controller:
    c = Controller(SETTINGS, kube_factory=lambda: pytest.fail("the handlers must not call the API"))
    c.queue = RecordingQueue()
    return c


class StubController:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


def _body(name="demo-train-abc", *, namespace="ns", labels=None, **extra):
    return {"apiVersion": "v1", "kind": "Object", "metadata": {
        "name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels if labels is not None else {
            **MANAGED, b.INSTANCE_LABEL: "demo"}}, **extra}


async def _deliver(resource, raw, event_type, memo, indexers=None) -> list[str]:
    """One watch event through kopf's matching and executor, as its watch-stream processing does it.
    Returns the ids of the handlers that ran; a handler's exception fails the test."""
    indexers = indexers if indexers is not None else _indexers()
    cause = detect_watching_cause(raw_event={"type": event_type, "object": raw}, body=kopf.Body(raw),
                                  resource=resource, indices=indexers.indices, logger=LOG, patch=kopf.Patch(),
                                  memo=memo)
    matched = h.registry._watching.get_handlers(cause=cause)
    outcomes = await execution.execute_handlers_once(
        lifecycle=lifecycles.all_at_once, settings=kopf.OperatorSettings(), handlers=matched, cause=cause,
        state=progression.State.from_scratch().with_handlers(matched), default_errors=execution.ErrorsMode.IGNORED)
    for outcome in outcomes.values():
        if outcome.exception is not None:
            raise outcome.exception
    return [x.id for x in matched]


def _indexers() -> OperatorIndexers:
    indexers = OperatorIndexers()
    indexers.ensure(h.registry._indexing.get_all_handlers())
    return indexers


async def _index(indexers, resource, raw, event_type="ADDED") -> None:
    await index_resource(indexers=indexers, registry=h.registry, settings=kopf.OperatorSettings(), resource=resource,
                         raw_event={"type": event_type, "object": raw}, memory=IndexingMemory(), logger=LOG,
                         memo=kopf.Memo(), body=kopf.Body(raw))


# ----------------------------------------------------------------------------- what is registered


def test_indices_are_the_ones_the_controller_reads_one_per_child_kind():
    by_id = {x.id: x for x in h.registry._indexing.get_all_handlers()}
    assert sorted(by_id) == sorted(INDEX_NAMES)
    want = {"eft_jobs": (JOBS, MANAGED), "eft_stage_pods": (PODS, STAGE_POD), "eft_configmaps": (CONFIGMAPS, MANAGED),
            "eft_claims": (CLAIMS, MANAGED), "eft_deployments": (DEPLOYMENTS, MANAGED),
            "eft_services": (SERVICES, MANAGED)}
    for index, (resource, labels) in want.items():
        handler = by_id[index]
        assert [r for r in EVERY_RESOURCE if handler.selector.check(r)] == [resource], index
        assert dict(handler.labels) == labels, index


def test_event_triggers_watch_the_resource_and_every_child_kind():
    by_id = {x.id: x for x in h.registry._watching.get_all_handlers()}
    assert sorted(by_id) == sorted(["on_embeddingfinetune", *(f"enqueue-owner-of-{r[-1]}"
                                                               for r in h.CHILD_RESOURCES.values())])
    resource = by_id["on_embeddingfinetune"]
    assert [r for r in EVERY_RESOURCE if resource.selector.check(r)] == [EFT]
    assert resource.labels is None  # every EmbeddingFinetune, whoever made it
    for name, child in CHILDREN.items():
        trigger = by_id[f"enqueue-owner-of-{child.plural}"]
        assert [r for r in EVERY_RESOURCE if trigger.selector.check(r)] == [child]
        assert dict(trigger.labels) == (STAGE_POD if name == "pods" else MANAGED)


def test_no_timers_daemons_changing_handlers_or_webhooks():
    """Timers and daemons would put a finalizer on every EmbeddingFinetune, and on.create/update/resume
    handlers kopf's progress annotations: the resync is the controller's own task instead."""
    assert h.registry._spawning.get_all_handlers() == []
    assert h.registry._changing.get_all_handlers() == []
    assert h.registry._webhooks.get_all_handlers() == []
    assert not h.registry._spawning.has_handlers(EFT) and not h.registry._changing.has_handlers(EFT)


def test_activities_log_in_start_and_stop():
    assert [x.fn for x in h.registry._activities.get_handlers(Activity.AUTHENTICATION)] == [h._login]
    assert [x.fn for x in h.registry._activities.get_handlers(Activity.STARTUP)] == [h._startup]
    assert [x.fn for x in h.registry._activities.get_handlers(Activity.CLEANUP)] == [h._cleanup]


# ----------------------------------------------------------------------------- what the handlers do


def test_startup_configures_kopf_and_starts_the_controller():
    settings, stub = kopf.OperatorSettings(), StubController()
    asyncio.run(run_activity(lifecycle=lifecycles.all_at_once, registry=h.registry, settings=settings,
                             activity=Activity.STARTUP, indices=_indexers().indices, memo=kopf.Memo(controller=stub)))
    assert stub.calls == ["start"]
    selectors = settings.watching.label_selectors
    for name, child in CHILDREN.items():
        want = f"{h.MANAGED_SELECTOR},{b.STAGE_LABEL}" if name == "pods" else "app.kubernetes.io/managed-by=eft-operator"
        assert list(selectors.collect(child)) == [want], name
    assert list(selectors.collect(EFT)) == []
    assert settings.posting.enabled is False and settings.peering.standalone is True
    assert settings.scanning.disabled is True
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (270, 300)
    assert settings.networking.request_timeout == 60


def test_cleanup_stops_the_controller():
    stub = StubController()
    asyncio.run(run_activity(lifecycle=lifecycles.all_at_once, registry=h.registry, settings=kopf.OperatorSettings(),
                             activity=Activity.CLEANUP, indices=_indexers().indices, memo=kopf.Memo(controller=stub)))
    assert stub.calls == ["stop"]


def test_login_goes_through_the_official_clients_loaders(monkeypatch):
    seen = {}

    def login_via_client(**kwargs):
        seen.update(kwargs)
        return kopf.ConnectionInfo(server="https://k8s.example", token="t")

    monkeypatch.setattr(kopf, "login_via_client", login_via_client)
    results = asyncio.run(run_activity(lifecycle=lifecycles.all_at_once, registry=h.registry,
                                       settings=kopf.OperatorSettings(), activity=Activity.AUTHENTICATION,
                                       indices=_indexers().indices, memo=kopf.Memo()))
    assert [r.server for r in results.values()] == ["https://k8s.example"]
    assert "logger" in seen and "settings" in seen  # kopf's activity kwargs, passed on


def test_an_embeddingfinetune_event_records_the_body_and_enqueues_its_key():
    c = _controller()
    eft = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "EmbeddingFinetune",
           "metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "labels": {"team": "x"}},
           "spec": {"training": {"epochs": 2}}}

    async def scenario():
        for event_type in (None, "ADDED", "MODIFIED"):  # resume (initial listing), create, update
            assert await _deliver(EFT, eft, event_type, kopf.Memo(controller=c)) == ["on_embeddingfinetune"]
        assert c.queue.added == [("ns", "demo")] * 3 and len(c.queue) == 1
        assert c.resources[("ns", "demo")] == {**eft, "status": None}
        await _deliver(EFT, eft, "DELETED", kopf.Memo(controller=c))
        assert ("ns", "demo") not in c.resources and c.queue.added == [("ns", "demo")] * 3

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", sorted(CHILDREN))
def test_a_child_event_enqueues_its_owner(kind):
    c = _controller()
    labels = {**MANAGED, b.INSTANCE_LABEL: "demo", **({b.STAGE_LABEL: "train"} if kind == "pods" else {})}
    ran = asyncio.run(_deliver(CHILDREN[kind], _body(labels=labels), "MODIFIED", kopf.Memo(controller=c)))
    assert ran == [f"enqueue-owner-of-{CHILDREN[kind].plural}"]
    assert c.queue.added == [("ns", "demo")]


def test_child_events_outside_the_filters_enqueue_nothing():
    c = _controller()
    memo = kopf.Memo(controller=c)

    async def scenario():
        # not made by the operator: kopf's label filter does not even call the trigger
        assert await _deliver(JOBS, _body(labels={b.INSTANCE_LABEL: "demo"}), "ADDED", memo) == []
        # a managed pod that is not a stage pod (no stage label)
        assert await _deliver(PODS, _body(labels={**MANAGED, b.INSTANCE_LABEL: "demo"}), "ADDED", memo) == []
        # managed but without an instance label: the trigger runs, there is no owner to enqueue
        assert await _deliver(SERVICES, _body(labels=dict(MANAGED)), "ADDED", memo) == ["enqueue-owner-of-services"]

    asyncio.run(scenario())
    assert c.queue.added == []


def test_indices_hold_summaries_by_owner_and_reach_the_controller():
    """kopf indexes the children, then hands the indices to the handlers; the controller plans from them."""
    job = _body("demo-train-abc", labels={**MANAGED, b.INSTANCE_LABEL: "demo", b.STAGE_LABEL: "train"},
                spec={"suspend": False}, status={"active": 1})
    pod = _body("demo-train-abc-x", labels={**MANAGED, b.INSTANCE_LABEL: "demo", b.STAGE_LABEL: "train",
                                             b.JOB_NAME_LABEL: "demo-train-abc"}, status={"phase": "Running"})
    cm = _body("demo-spec")
    other = _body("other-spec", labels={**MANAGED, b.INSTANCE_LABEL: "other"})
    c = _controller()
    eft = {"metadata": {"name": "demo", "namespace": "ns", "uid": "u1"}, "spec": {}}

    async def scenario():
        indexers = _indexers()
        for resource, raw in ((JOBS, job), (PODS, pod), (CONFIGMAPS, cm), (CONFIGMAPS, other)):
            await _index(indexers, resource, raw)
        assert list(indexers.indices["eft_jobs"][("ns", "demo")]) == [summarize_job(job)]
        assert list(indexers.indices["eft_stage_pods"][("ns", "demo-train-abc")]) == [summarize_pod(pod)]
        await _deliver(EFT, eft, "ADDED", kopf.Memo(controller=c), indexers)
        ch = c.children("ns", "demo")
        assert ch.jobs == [summarize_job(job)] and ch.pods == {"demo-train-abc": [summarize_pod(pod)]}
        assert ch.configmaps == [summarize_object(cm)] and ch.claims == [] and ch.services == []
        await _index(indexers, JOBS, job, "DELETED")
        assert c.children("ns", "demo").jobs == []

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", sorted(CHILDREN))
def test_every_index_takes_what_kopf_passes_and_keys_by_owner(kind):
    """An index handler that asks for a keyword kopf does not pass fails in kopf, silently: nothing is indexed."""
    labels = {**MANAGED, b.INSTANCE_LABEL: "demo", b.STAGE_LABEL: "train", b.JOB_NAME_LABEL: "demo-train-abc"}
    raw = _body("demo-child", labels=labels, spec={}, status={})
    index = {"pods": "eft_stage_pods"}.get(kind, f"eft_{kind}")
    key = ("ns", "demo-train-abc") if kind == "pods" else ("ns", "demo")

    async def scenario():
        indexers = _indexers()
        await _index(indexers, CHILDREN[kind], raw)
        return {k: list(v) for k, v in indexers.indices[index].items()}

    indexed = asyncio.run(scenario())
    assert list(indexed) == [key] and len(indexed[key]) == 1 and indexed[key][0]["name"] == "demo-child"


def test_a_pod_without_a_job_label_is_not_indexed():
    pod = _body("stray", labels={**MANAGED, b.INSTANCE_LABEL: "demo", b.STAGE_LABEL: "train"})

    async def scenario():
        indexers = _indexers()
        await _index(indexers, PODS, pod)
        return dict(indexers.indices["eft_stage_pods"])

    assert asyncio.run(scenario()) == {}
