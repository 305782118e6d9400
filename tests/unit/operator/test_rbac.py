"""The operator's RBAC rules: no wildcards, and every verb the plan uses is allowed."""


from __future__ import annotations

import pytest
from eft.controller.rbac import cluster_role_rules


def test_rbac_rules_have_no_wildcards():
    rules = cluster_role_rules()
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
    res = {(g, x) for r in rules for g in r["apiGroups"] for x in r["resources"]}
    for needed in (("batch", "jobs"), ("", "pods"), ("", "configmaps"), ("", "persistentvolumeclaims"),
                   ("", "services"), ("apps", "deployments"), ("", "events"), ("eft.ai", "embeddingfinetunes"),
                   ("eft.ai", "embeddingfinetunes/status")):
        assert needed in res


@pytest.mark.parametrize("verb_kind", ["create", "update", "delete", "set-owners"])
def test_every_planned_verb_is_allowed_by_rbac(verb_kind):
    """Each (verb, kind) the plan can emit maps to an RBAC verb the rules grant."""
    need = {"create": "create", "update": "update", "delete": "delete", "set-owners": "patch"}[verb_kind]
    kinds_for = {"create": ["ConfigMap", "PersistentVolumeClaim", "Job", "Service", "Deployment"],
                 "update": ["ConfigMap", "Service", "Deployment"], "delete": ["Job", "Service", "Deployment"],
                 "set-owners": ["PersistentVolumeClaim"]}[verb_kind]
    plural = {"ConfigMap": ("", "configmaps"), "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
              "Job": ("batch", "jobs"), "Service": ("", "services"), "Deployment": ("apps", "deployments")}
    rules = cluster_role_rules()
    for k in kinds_for:
        g, r = plural[k]
        assert any(g in x["apiGroups"] and r in x["resources"] and need in x["verbs"] for x in rules), (k, need)
