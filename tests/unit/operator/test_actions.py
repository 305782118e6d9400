"""Changes: the actions a plan collects for the children, and the blockers that stop it."""


from __future__ import annotations

from eft.controller import builders as b
from eft.controller.actions import Action, Changes
from tests.unit.operator.factories import UID, efr, parsed


def _configmap():
    body = efr()
    return b.build_spec_configmap(body, parsed(body))


def test_ensure_creates_updates_or_blocks():
    desired = _configmap()
    want = desired["metadata"]["annotations"][b.HASH_ANNOTATION]
    created = Changes(UID)
    created.ensure(desired, None)
    assert created.actions == [Action("create", "ConfigMap", "demo-spec", desired)] and not created.blockers
    same = Changes(UID)
    same.ensure(desired, {"name": "demo-spec", "owner": UID, "hash": want})
    assert same.actions == [] and same.blockers == []
    changed = Changes(UID)
    changed.ensure(desired, {"name": "demo-spec", "owner": UID, "hash": "old"})
    assert [str(a) for a in changed.actions] == ["update ConfigMap/demo-spec"]
    kept = Changes(UID)
    kept.ensure(desired, {"name": "demo-spec", "owner": UID, "hash": "old"}, update=False)
    assert kept.actions == []
    foreign = Changes(UID)
    foreign.ensure(desired, {"name": "demo-spec", "owner": "another", "hash": want})
    assert foreign.actions == [] and foreign.blockers == [
        "ConfigMap demo-spec exists but is not owned by this EmbeddingFinetune"]


def test_delete_and_set_owners_carry_their_preconditions():
    c = Changes(UID)
    c.delete("Job", {"name": "demo-train-old", "uid": "job-uid"})
    c.set_owners("PersistentVolumeClaim", {"name": "demo-workspace", "resourceVersion": "7"}, [])
    assert c.actions == [Action("delete", "Job", "demo-train-old", uid="job-uid"),
                         Action("set-owners", "PersistentVolumeClaim", "demo-workspace", owners=[],
                                resource_version="7")]
    assert c.owns({"owner": UID}) and not c.owns({"owner": "x"}) and not c.owns(None)
