"""The chart's tenant roles (templates/tenant-rbac.yaml) as rendered: three ClusterRoles aggregated into the
built-in view, edit and admin roles, so namespace users get EmbeddingFinetunes the way they get Deployments,
and nobody but the operator writes their status. The real authorizer's answer is tests/apiserver/test_tenant_rbac.py."""

from __future__ import annotations

import pytest
import yaml

from eft.spec import API_GROUP, PLURAL
from tests.support.helm import CASE_IDS, CASES, CHART, by_kind, render
from tests.support.paths import REPO

AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete", "deletecollection"]  # Kubernetes' own `Write` verbs
STATUS = f"{PLURAL}/status"
# Kubernetes' built-in roles (bootstrappolicy/policy.go): `<name>` aggregates every role labelled
# aggregate-to-<name>, and carries these aggregate-to-* labels itself: view -> edit -> admin.
BUILT_IN = {"view": {"edit"}, "edit": {"admin"}, "admin": set()}


def tenant_roles(docs: list[dict]) -> dict[str, dict]:
    """level (view/edit/admin) -> the tenant ClusterRole, by its name's suffix."""
    out = {}
    for d in by_kind(docs, "ClusterRole"):
        name = d["metadata"]["name"]
        for level in BUILT_IN:
            if name.endswith(f"-tenant-{level}"):
                out[level] = d
    return out


def aggregate_labels(role: dict) -> dict[str, str]:
    return {k: v for k, v in role["metadata"]["labels"].items() if k.startswith(AGGREGATE)}


def pairs(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule, flattened."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def effective(tenant: dict[str, dict]) -> dict[str, set]:
    """What the built-in view/edit/admin hold of EmbeddingFinetunes once the clusterrole-aggregation
    controller filled them: the union of the rules of every role labelled for them, built-in roles included."""
    sources = [({k.removeprefix(AGGREGATE) for k, v in aggregate_labels(r).items() if v == "true"},
                pairs(r.get("rules") or [])) for r in tenant.values()]

    def rules_of(built_in: str) -> set:
        out = set()
        for targets, rules in sources:
            if built_in in targets:
                out |= rules
        for inner, carries in BUILT_IN.items():
            if built_in in carries:
                out |= rules_of(inner)
        return out

    return {b: rules_of(b) for b in BUILT_IN}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {cid: render(helm, case) for cid, case in zip(CASE_IDS, CASES)}


@pytest.fixture(scope="module")
def default_roles(rendered) -> dict[str, dict]:
    return tenant_roles(rendered["default"])


def test_crd_group_and_plural_are_the_specs():
    """The template spells eft.ai / embeddingfinetunes; they are the CRD's, which has a status subresource
    (so update/patch of the main resource cannot set .status)."""
    crd = yaml.safe_load((REPO / "crds" / "embeddingfinetune.yaml").read_text())
    assert crd["spec"]["group"] == API_GROUP and crd["spec"]["names"]["plural"] == PLURAL
    assert crd["spec"]["scope"] == "Namespaced"
    assert all("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])


def test_values_default_to_creating_tenant_roles():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["tenantRoles"] == {"create": True}


def test_three_roles_named_after_the_release(rendered, default_roles):
    (sa,) = by_kind(rendered["default"], "ServiceAccount")
    fullname = sa["metadata"]["name"]  # the release's full name
    assert {lvl: r["metadata"]["name"] for lvl, r in default_roles.items()} == {
        lvl: f"{fullname}-tenant-{lvl}" for lvl in ("view", "edit", "admin")}
    for role in default_roles.values():
        labels = role["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "eft"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "eft"
        assert "namespace" not in role["metadata"]  # cluster-scoped
        assert "aggregationRule" not in role  # sources of aggregation, not aggregated themselves


def test_fullname_override_names_the_roles(helm):
    roles = tenant_roles(render(helm, extra=["--set", "fullnameOverride=acme"]))
    assert sorted(r["metadata"]["name"] for r in roles.values()) == [
        "acme-tenant-admin", "acme-tenant-edit", "acme-tenant-view"]


def test_each_role_aggregates_into_exactly_its_built_in_role(default_roles):
    for level, role in default_roles.items():
        assert aggregate_labels(role) == {f"{AGGREGATE}{level}": "true"}, role["metadata"]


def test_rules(default_roles):
    assert default_roles["view"]["rules"] == [
        {"apiGroups": [API_GROUP], "resources": [PLURAL, STATUS], "verbs": READ}]
    assert default_roles["edit"]["rules"] == [
        {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": WRITE}]
    # admin = edit for EmbeddingFinetunes (nothing of theirs grants rights to others): no rules of its own
    assert not default_roles["admin"].get("rules")


def test_no_status_write_and_nothing_beyond_embeddingfinetunes(default_roles):
    for level, role in default_roles.items():
        for group, resource, verb in pairs(role.get("rules") or []):
            assert group == API_GROUP, (level, group)
            assert resource in (PLURAL, STATUS), (level, resource)  # no finalizers, no other kinds
            assert "*" not in (group, resource, verb)
            if resource == STATUS:
                assert verb in READ, f"tenant-{level} may {verb} {STATUS}: only the operator writes status"
        for rule in role.get("rules") or []:
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule


def test_view_within_edit_within_admin_after_aggregation(default_roles):
    """The built-in roles as the aggregation controller fills them: view reads, edit = view + spec writes,
    admin = edit; each (resource, verb) is granted by exactly one tenant role (no overlap to drift apart)."""
    got = effective(default_roles)
    read = {(API_GROUP, r, v) for r in (PLURAL, STATUS) for v in READ}
    write = {(API_GROUP, PLURAL, v) for v in WRITE}
    assert got["view"] == read
    assert got["edit"] == read | write
    assert got["admin"] == got["edit"]
    assert got["view"] < got["edit"] <= got["admin"]
    all_pairs = [p for role in default_roles.values() for p in sorted(pairs(role.get("rules") or []))]
    assert len(all_pairs) == len(set(all_pairs)), "a right granted by two tenant roles"


@pytest.mark.parametrize("case", CASE_IDS)
def test_rendered_in_every_values_case(rendered, case):
    """Independent of rbac.create (the operator's own RBAC) and of watchNamespaces: the roles give rights
    only where a RoleBinding to view/edit/admin already exists."""
    roles = tenant_roles(rendered[case])
    assert sorted(roles) == ["admin", "edit", "view"], case
    assert roles["edit"]["rules"] == tenant_roles(rendered["default"])["edit"]["rules"]


def test_create_false_renders_none(helm, rendered):
    docs = render(helm, extra=["--set", "tenantRoles.create=false"])
    assert not tenant_roles(docs)
    assert not [d for d in docs if any(k.startswith(AGGREGATE) for k in d["metadata"].get("labels", {}))]
    # the rest of the chart is unchanged
    default = [d for d in rendered["default"] if d not in tenant_roles(rendered["default"]).values()]
    assert docs == default


def test_lint_with_tenant_roles_off(helm):
    proc = helm("lint", "--strict", str(CHART), "--set", "tenantRoles.create=false")
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("bad", ["tenantRoles.creat=true", "tenantRoles.create=yes"])
def test_values_schema_rejects(helm, bad):
    proc = helm("template", "eft", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0
    assert "schema" in proc.stderr, proc.stderr
