"""The controller (apply, adoption, status, events) against an in-memory API, and its work queue."""


from __future__ import annotations

import copy

import pytest

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.plan import plan
from eft.fingerprint import job_fingerprints
from tests.unit.operator.factories import NOW, SETTINGS, efr, parsed


class FakeKube:
    """In-memory stand-in for eft.controller.kube.Kube: create/get/replace/patch/delete by (kind, name)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.requests = 0

    def _key(self, kind, name):
        return (kind, name)

    def create(self, obj):
        from eft.controller.kube import KubeError

        self.requests += 1
        kind = obj["kind"]
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"] + str(self.requests)
        self.calls.append(("create", kind, name))
        if (kind, name) in self.objects:
            raise KubeError(409, "Conflict", {"message": "already exists"})
        stored = copy.deepcopy(obj)
        stored["metadata"].update({"name": name, "uid": f"uid-{kind}-{name}", "resourceVersion": "1"})
        self.objects[(kind, name)] = stored
        return stored

    def get(self, kind, ns, name):
        self.requests += 1
        self.calls.append(("get", kind, name))
        return copy.deepcopy(self.objects[(kind, name)])

    def replace(self, obj):
        self.requests += 1
        self.calls.append(("replace", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    def patch(self, kind, ns, name, patch, sub=None, content_type=None):
        self.requests += 1
        self.calls.append(("patch", kind, name if not sub else f"{name}/{sub}"))
        return {"metadata": {"resourceVersion": "5"}}

    def delete(self, kind, ns, name, uid=None, propagation="Background"):
        self.requests += 1
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, name), None)


def _controller(fake):
    from eft.controller.controller import Controller

    c = Controller(SETTINGS, kube_factory=lambda: fake)
    c.kube = fake
    return c


def test_controller_reconcile_writes_children_status_and_events():
    import asyncio

    fake = FakeKube()
    c = _controller(fake)
    body = efr()
    c.resources[("ns", "demo")] = body
    asyncio.run(c.reconcile(("ns", "demo")))
    made = [x for x in fake.calls if x[0] == "create"]
    assert [k for _, k, _ in made] == ["ConfigMap", "PersistentVolumeClaim", "Job"]
    assert ("patch", "EmbeddingFinetune", "demo/status") in fake.calls
    # the status this process wrote is used until the watch shows a newer resource version
    assert c.current_body(("ns", "demo"))["status"]["phase"] == "Running"


def test_controller_adopts_on_409_and_never_duplicates():
    import asyncio

    fake = FakeKube()
    c = _controller(fake)
    body = efr()
    c.resources[("ns", "demo")] = body
    asyncio.run(c.reconcile(("ns", "demo")))  # caches are empty: it creates
    n_jobs = sum(1 for k in fake.objects if k[0] == "Job")
    asyncio.run(c.reconcile(("ns", "demo")))  # caches still empty (watch lag): 409 -> adopt
    assert sum(1 for k in fake.objects if k[0] == "Job") == n_jobs == 1
    assert ("get", "Job", b.job_name("demo", "ingest", job_fingerprints(parsed(body))["ingest"])) in fake.calls


def test_controller_refuses_to_adopt_a_foreign_object():

    from eft.controller.controller import _Blocked

    fake = FakeKube()
    fake.objects[("ConfigMap", "demo-spec")] = {"kind": "ConfigMap", "metadata": {
        "name": "demo-spec", "uid": "x", "ownerReferences": [{"uid": "someone", "controller": True}]}}
    c = _controller(fake)
    with pytest.raises(_Blocked):
        c._apply(efr(), plan(efr(), Children(), SETTINGS, NOW).actions[0])
    # a retained workspace claim of an earlier resource with the same name is reused
    fake.objects[("PersistentVolumeClaim", "demo-workspace")] = {"kind": "PersistentVolumeClaim", "metadata": {
        "name": "demo-workspace", "uid": "p", "resourceVersion": "3",
        "labels": {b.INSTANCE_LABEL: "demo", b.NAME_LABEL: "eft"}}}
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    act = next(a for a in plan(body, Children(), SETTINGS, NOW).actions if a.kind == "PersistentVolumeClaim")
    c._apply(body, act)
    assert ("patch", "PersistentVolumeClaim", "demo-workspace") in fake.calls


def test_work_queue_deduplicates_and_serialises_keys():
    import asyncio

    from eft.controller.controller import WorkQueue

    async def scenario():
        q = WorkQueue()
        q.add(("a", "1"))
        q.add(("a", "1"))
        assert len(q) == 1
        key = await q.get()
        q.add(key)  # while in flight: remembered, not handed out twice
        assert len(q) == 0
        q.done(key)
        assert len(q) == 1
        q.add_after(("b", "2"), 0.01)
        await asyncio.sleep(0.05)
        assert len(q) == 2

    asyncio.run(scenario())
