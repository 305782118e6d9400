"""The children every stage needs: the spec ConfigMap and the workspace claim (through plan)."""


from __future__ import annotations

from eft.controller.children import Children
from eft.controller.plan import plan
from tests.unit.operator.factories import NOW, SETTINGS, UID, children_through, cond, efr, kinds


def test_plan_retention_policy_moves_the_claim_owner():
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    ch = children_through(body, "ingest", "Running")
    p = plan(body, ch, SETTINGS, NOW)
    so = [a for a in p.actions if a.verb == "set-owners"]
    assert so and so[0].owners[0]["uid"] == UID
    ch.claims[0]["owners"] = so[0].owners
    ch.claims[0]["owner"] = UID
    assert not [a for a in plan(body, ch, SETTINGS, NOW).actions if a.verb == "set-owners"]
    retain = efr()
    p = plan(retain, ch, SETTINGS, NOW)
    assert [a.owners for a in p.actions if a.verb == "set-owners"] == [[]]


def test_plan_existing_claim_and_foreign_children():
    body = efr({"workspace": {"existingClaim": "shared"}})
    p = plan(body, Children(), SETTINGS, NOW)
    assert ("create", "PersistentVolumeClaim") not in kinds(p)
    vols = p.actions[-1].obj["spec"]["template"]["spec"]["volumes"]
    assert vols[0]["persistentVolumeClaim"]["claimName"] == "shared"
    ch = Children(configmaps=[{"name": "demo-spec", "uid": "x", "owner": "another", "hash": "h", "deleting": False}])
    p = plan(efr(), ch, SETTINGS, NOW)
    assert kinds(p, "create") == [("create", "PersistentVolumeClaim")]  # no Job while a child conflicts
    assert cond(p.status, "Progressing")["reason"] == "ChildConflict" and p.requeue_after


def test_plan_updates_the_spec_configmap_when_the_spec_changes():
    body = efr()
    ch = children_through(body, "ingest", "Running")
    new = efr({"serving": {"replicas": 1, "port": 8080}}, generation=2)
    assert ("update", "ConfigMap") in kinds(plan(new, ch, SETTINGS, NOW))
    assert ("update", "ConfigMap") not in kinds(plan(body, ch, SETTINGS, NOW))


def test_a_workspace_claim_controlled_by_another_object_blocks_the_stages():
    """A claim of that name with someone else's controller reference is neither reused nor re-owned."""
    foreign = {"name": "demo-workspace", "uid": "p", "owner": "another", "owners": [{"uid": "another",
                                                                                      "controller": True}],
               "hash": None, "deleting": False, "resourceVersion": "4"}
    body = efr({"workspace": {"retentionPolicy": "Delete"}})
    p = plan(body, Children(claims=[foreign]), SETTINGS, NOW)
    assert kinds(p) == [("create", "ConfigMap")]
    prog = cond(p.status, "Progressing")
    assert prog["reason"] == "ChildConflict" and "PersistentVolumeClaim demo-workspace belongs to another" in \
        prog["message"]


def test_a_retained_claim_without_owner_is_reused():
    """Retain (the default) leaves a claim of an earlier EmbeddingFinetune ownerless: it is used as it is."""
    body = efr()
    ch = children_through(body, "ingest", "Running")
    assert ch.claims[0]["owner"] is None
    assert not [a for a in plan(body, ch, SETTINGS, NOW).actions if a.kind == "PersistentVolumeClaim"]
    assert cond(plan(body, ch, SETTINGS, NOW).status, "Progressing")["reason"] == "StageRunning"
    ch.claims[0]["owners"] = [{"uid": "someone", "controller": False}]
    delete = efr({"workspace": {"retentionPolicy": "Delete"}})
    owners = next(a.owners for a in plan(delete, ch, SETTINGS, NOW).actions if a.verb == "set-owners")
    assert [o["uid"] for o in owners] == ["someone", UID]  # other owners are kept
