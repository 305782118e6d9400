"""Serving on shared clusters: the PodDisruptionBudget, HorizontalPodAutoscaler and NetworkPolicy of the serving
pods (builders, the plan's create/update/delete of them, the Deployment's replicas under the autoscaler), the
spec rules of serving.autoscaling, and the kopf indices and RBAC rules of the new kinds."""


from __future__ import annotations

import pytest

from eft.controller import builders as b
from eft.controller import handlers as h
from eft.controller.actions import Action
from eft.controller.children import Children, summarize_object
from eft.controller.kube import RESOURCES
from eft.controller.plan import plan
from eft.controller.rbac import cluster_role_rules
from eft.spec import SpecError, parse_document
from tests.unit.operator.factories import (
    NOW,
    SETTINGS,
    UID,
    cond,
    deployment_summary,
    efr,
    kinds,
    model_digest_of,
    parsed,
    serving_children,
)
from tests.unit.operator.test_controller import FakeKube, _controller

RWX = {"accessModes": ["ReadWriteMany"]}
CPU = {"requests": {"cpu": "500m"}}
AUTO = {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
        "resources": CPU}
SERVE = b.serving_name("demo")
EXTRA_KINDS = ("PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy")


def _body(serving: dict | None = None, **spec):
    return efr({"serving": serving or {}, "workspace": RWX, **spec})


def _owned_and_labelled(obj, body):
    meta = obj["metadata"]
    assert meta["name"] == SERVE and meta["namespace"] == "ns"
    assert meta["ownerReferences"] == [b.owner_reference(body)] and meta["ownerReferences"][0]["controller"]
    # the operator watches what it made by these labels (handlers.MANAGED_SELECTOR) and keys its caches by instance
    assert meta["labels"] == b.common_labels("demo", "serving")
    assert meta["annotations"][b.HASH_ANNOTATION] == b.object_hash(obj)


def _summary(obj, owner=UID, uid=None):
    """The kopf index summary of a built object as the API server would return it."""
    raw = {"metadata": {**obj["metadata"], "uid": uid or f"uid-{obj['kind']}", "resourceVersion": "7"}}
    if owner != UID:
        raw["metadata"]["ownerReferences"] = [{**obj["metadata"]["ownerReferences"][0], "uid": owner}]
    return summarize_object(raw)


# ----------------------------------------------------------------------------- builders


def test_disruption_budget_only_when_more_than_one_pod_can_run():
    for serving in ({}, {"replicas": 1}, {"replicas": 0}, {"enabled": False, "replicas": 3},
                    {"replicas": 3, "autoscaling": {"enabled": True, "maxReplicas": 1}, "resources": CPU}):
        body = _body(serving)
        assert b.build_serving_disruption_budget(body, parsed(body)) is None, serving
    for serving in ({"replicas": 2}, {"replicas": 1, **AUTO}):
        body = _body(serving)
        assert b.build_serving_disruption_budget(body, parsed(body)) is not None, serving


def test_disruption_budget_shape_selects_the_serving_pods():
    body = _body({"replicas": 3})
    spec = parsed(body)
    pdb = b.build_serving_disruption_budget(body, spec)
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    _owned_and_labelled(pdb, body)
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    dep = b.build_serving_deployment(body, spec, SETTINGS, "sha256:0")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == dep["spec"]["selector"]["matchLabels"] == b.serving_selector("demo")
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_autoscaler_shape():
    body = _body({"replicas": 1, **AUTO})
    hpa = b.build_serving_autoscaler(body, parsed(body))
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    _owned_and_labelled(hpa, body)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 60}}}]
    defaults = _body({"autoscaling": {"enabled": True}, "resources": CPU})
    d = b.build_serving_autoscaler(defaults, parsed(defaults))["spec"]
    assert (d["minReplicas"], d["maxReplicas"], d["metrics"][0]["resource"]["target"]["averageUtilization"]) == (
        1, 3, 70)


def test_autoscaler_absent_when_disabled():
    for serving in ({}, {"replicas": 4}, {**AUTO, "enabled": False}):
        body = _body(serving)
        assert b.build_serving_autoscaler(body, parsed(body)) is None, serving


def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler():
    body = _body(AUTO)
    dep = b.build_serving_deployment(body, parsed(body), SETTINGS, "sha256:0")
    assert "replicas" not in dep["spec"]
    fixed = _body({"replicas": 2})
    assert b.build_serving_deployment(fixed, parsed(fixed), SETTINGS, "sha256:0")["spec"]["replicas"] == 2
    # the replica bounds are the autoscaler's: changing them does not roll the Deployment
    other = _body({**AUTO, "autoscaling": {**AUTO["autoscaling"], "maxReplicas": 9}})
    assert (b.build_serving_deployment(other, parsed(other), SETTINGS, "sha256:0")["metadata"]["annotations"]
            == dep["metadata"]["annotations"])


def test_network_policy_admits_only_the_allowed_clients_on_the_serving_port():
    body = _body({"port": 8080, "networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {
        "app": "rag"}}}})
    np = b.build_serving_network_policy(body, parsed(body))
    assert (np["apiVersion"], np["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    _owned_and_labelled(np, body)
    s = np["spec"]
    assert s["podSelector"] == {"matchLabels": b.serving_selector("demo")} and s["policyTypes"] == ["Ingress"]
    # one rule: from pods labelled app=rag of the policy's own namespace (no namespaceSelector), TCP 8080 only
    assert s["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "rag"}}}],
                             "ports": [{"protocol": "TCP", "port": 8080}]}]
    assert "egress" not in s


def test_network_policy_allowed_namespaces_and_defaults():
    body = _body({"networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {"app": "rag"}},
                                    "allowedNamespaces": {"matchLabels": {"team": "search"}}}})
    (rule,) = b.build_serving_network_policy(body, parsed(body))["spec"]["ingress"]
    # one peer holding both selectors: pods labelled app=rag *in* namespaces labelled team=search
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "rag"}},
                             "namespaceSelector": {"matchLabels": {"team": "search"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    every = _body({"networkPolicy": {"enabled": True}})
    (rule,) = b.build_serving_network_policy(every, parsed(every))["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {}}}]  # every pod of the resource's namespace
    for off in (_body(), _body({"enabled": False, "networkPolicy": {"enabled": True}})):
        assert b.build_serving_network_policy(off, parsed(off)) is None


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("serving, message", [
    ({"autoscaling": {"enabled": True}}, "set serving.resources.requests.cpu"),
    ({"autoscaling": {"enabled": True}, "resources": {"limits": {"cpu": "1"}}}, "set serving.resources.requests.cpu"),
    ({"autoscaling": {"enabled": True}, "resources": {"requests": {"memory": "1Gi"}}}, "requests.cpu"),
    ({"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}, "minReplicas (4) must be <= maxReplicas (2)"),
    ({"autoscaling": {"minReplicas": 0}}, "serving.autoscaling.minReplicas"),
    ({"autoscaling": {"targetCPUUtilizationPercentage": 0}}, "targetCPUUtilizationPercentage"),
    ({"networkPolicy": {"allowedClients": {"matchLabels": {"app": "-bad-"}}}}, "matchLabels.app"),
])
def test_spec_refuses_bad_autoscaling_and_network_policy(serving, message):
    with pytest.raises(SpecError) as err:
        parse_document({"serving": serving})
    assert message in str(err.value)


def test_spec_accepts_autoscaling_with_a_cpu_request():
    spec = parse_document({"serving": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 3},
                                       "resources": {"requests": {"cpu": 2}}}}).spec
    assert spec.serving.autoscaling.min_replicas == spec.serving.max_replicas() == 3
    # a disabled autoscaler needs no request, and its bounds are only checked against each other
    assert parse_document({"serving": {"autoscaling": {"maxReplicas": 1}}}).spec.serving.max_replicas() == 1


# ----------------------------------------------------------------------------- the plan


def _extras(ch, body, *builders):
    spec = parsed(body)
    for build in builders:
        obj = build(body, spec)
        attr = {"PodDisruptionBudget": "disruption_budgets", "HorizontalPodAutoscaler": "autoscalers",
                "NetworkPolicy": "network_policies"}[obj["kind"]]
        getattr(ch, attr).append(_summary(obj))
    return ch


def test_plan_creates_a_disruption_budget_for_several_replicas():
    body = _body({"replicas": 2})
    p = plan(body, serving_children(body, svc=False), SETTINGS, NOW)
    assert kinds(p) == [("create", "Service"), ("create", "Deployment"), ("create", "PodDisruptionBudget")]
    pdb = next(a.obj for a in p.actions if a.kind == "PodDisruptionBudget")
    assert pdb == b.build_serving_disruption_budget(body, parsed(body))
    one = _body({"replicas": 1})
    assert not [k for k in kinds(plan(one, serving_children(one, svc=False), SETTINGS, NOW)) if k[1] in EXTRA_KINDS]


def test_plan_autoscaled_creates_the_autoscaler_and_the_deployment_at_min_replicas():
    body = _body({"replicas": 1, **AUTO})
    p = plan(body, serving_children(body, svc=False), SETTINGS, NOW)
    assert kinds(p) == [("create", "Service"), ("create", "Deployment"), ("create", "PodDisruptionBudget"),
                        ("create", "HorizontalPodAutoscaler")]
    dep = next(a.obj for a in p.actions if a.kind == "Deployment")
    desired = b.build_serving_deployment(body, parsed(body), SETTINGS, model_digest_of(body))
    assert dep["spec"]["replicas"] == 2  # minReplicas, not serving.replicas
    # the hash is the desired one (without replicas): the created object is never "out of date"
    assert dep["metadata"]["annotations"][b.HASH_ANNOTATION] == desired["metadata"]["annotations"][b.HASH_ANNOTATION]


def test_plan_autoscaled_never_touches_the_replica_count():
    """The autoscaler scaled the Deployment to 4: no update, and Ready once those 4 are ready."""
    body = _body(AUTO)
    dep = {**deployment_summary(body, ready=4), "replicas": 4, "statusReplicas": 4}
    ch = _extras(serving_children(body, dep), body, b.build_serving_disruption_budget, b.build_serving_autoscaler)
    p = plan(body, ch, SETTINGS, NOW)
    assert p.actions == []
    assert p.status["phase"] == "Serving" and cond(p.status, "Ready")["status"] == "True"
    rolling = {**dep, "ready": 3, "available": 3, "updated": 3}
    p = plan(body, ch_with(ch, rolling), SETTINGS, NOW)
    assert p.status["phase"] == "Deploying" and "3/4 replicas ready" in p.status["message"]


def ch_with(ch: Children, dep) -> Children:
    return Children(**{**ch.__dict__, "deployments": [dep]})


def test_plan_back_to_one_replica_deletes_the_budget_and_the_autoscaler():
    auto = _body(AUTO)
    body = _body({"replicas": 1})
    dep = {**deployment_summary(auto, ready=2), "replicas": 2}
    ch = _extras(serving_children(body, dep), auto, b.build_serving_disruption_budget, b.build_serving_autoscaler)
    p = plan(body, ch, SETTINGS, NOW)
    assert sorted(kinds(p)) == [("delete", "HorizontalPodAutoscaler"), ("delete", "PodDisruptionBudget"),
                                ("update", "Deployment")]
    update = next(a for a in p.actions if a.verb == "update")
    assert update.obj["spec"]["replicas"] == 1  # serving.replicas is the Deployment's again
    deleted = {a.uid for a in p.actions if a.verb == "delete"}
    assert deleted == {"uid-PodDisruptionBudget", "uid-HorizontalPodAutoscaler"}


def test_plan_serving_disabled_deletes_every_serving_object():
    on = _body({"replicas": 2, "networkPolicy": {"enabled": True}})
    body = _body({"enabled": False, "replicas": 2, "networkPolicy": {"enabled": True}})
    ch = _extras(serving_children(body, deployment_summary(on, ready=2)), on, b.build_serving_disruption_budget,
                 b.build_serving_network_policy)
    p = plan(body, ch, SETTINGS, NOW)
    assert sorted(kinds(p)) == sorted([("delete", "Deployment"), ("delete", "Service"),
                                       ("delete", "PodDisruptionBudget"), ("delete", "NetworkPolicy")])
    assert p.status["phase"] == "Succeeded" and cond(p.status, "Ready")["reason"] == "ServingDisabled"


def test_plan_network_policy_comes_before_the_pods_and_follows_the_spec():
    body = _body({"networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {"app": "rag"}}}})
    p = plan(body, serving_children(body, svc=False), SETTINGS, NOW)
    assert kinds(p) == [("create", "NetworkPolicy"), ("create", "Service"), ("create", "Deployment")]
    # allowedClients changed: the policy is updated in place
    old = _body({"networkPolicy": {"enabled": True, "allowedClients": {"matchLabels": {"app": "old"}}}})
    ch = _extras(serving_children(body, deployment_summary(body, ready=1)), old, b.build_serving_network_policy)
    p = plan(body, ch, SETTINGS, NOW)
    assert kinds(p) == [("update", "NetworkPolicy")]
    assert p.actions[0].obj["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app": "rag"}
    # turned off: deleted
    off = _body()
    p = plan(off, ch, SETTINGS, NOW)
    assert [k for k in kinds(p) if k[1] != "ConfigMap"] == [("delete", "NetworkPolicy")]  # (the spec file changed)


def test_plan_leaves_foreign_objects_alone_and_reports_a_conflict():
    body = _body({"replicas": 2})
    ch = serving_children(body, deployment_summary(body, ready=2))
    ch.disruption_budgets = [_summary(b.build_serving_disruption_budget(body, parsed(body)), owner="someone")]
    p = plan(body, ch, SETTINGS, NOW)
    assert p.actions == [] and p.status["phase"] == "Blocked"
    assert "PodDisruptionBudget demo-serve exists but is not owned" in p.status["message"]
    # not wanted any more: someone else's object of that name is not deleted
    one = _body({"replicas": 1})
    ch1 = serving_children(one, deployment_summary(one, ready=1))
    ch1.disruption_budgets = ch.disruption_budgets
    assert plan(one, ch1, SETTINGS, NOW).actions == []


def test_plan_rwo_blocks_autoscaling_beyond_one_replica():
    body = efr({"serving": AUTO})
    p = plan(body, serving_children(body, svc=False), SETTINGS, NOW)
    assert not [k for k in kinds(p) if k[1] in ("Deployment", *EXTRA_KINDS)]
    ready = cond(p.status, "Ready")
    assert ready["reason"] == "ReadWriteOnceMultiReplica" and p.status["phase"] == "Blocked"
    assert "serving.autoscaling.maxReplicas=5 needs a ReadWriteMany workspace" in ready["message"]
    assert "set serving.autoscaling.maxReplicas to 1" in ready["message"]
    single = efr({"serving": {**AUTO, "autoscaling": {"enabled": True, "maxReplicas": 1}}})
    p = plan(single, serving_children(single, svc=False), SETTINGS, NOW)
    assert ("create", "HorizontalPodAutoscaler") in kinds(p) and ("create", "PodDisruptionBudget") not in kinds(p)


# ----------------------------------------------------------------------------- the controller's update


def test_update_of_an_autoscaled_deployment_keeps_the_live_replica_count():
    fake = FakeKube()
    c = _controller(fake)
    body = _body(AUTO)
    desired = b.build_serving_deployment(body, parsed(body), SETTINGS, "sha256:new")
    live = b.build_serving_deployment(body, parsed(body), SETTINGS, "sha256:old")
    live["metadata"].update({"uid": "dep", "resourceVersion": "9"})
    live["spec"]["replicas"] = 4  # the autoscaler's
    fake.objects[("Deployment", SERVE)] = live
    c._apply(body, Action("update", "Deployment", SERVE, desired))
    stored = fake.objects[("Deployment", SERVE)]
    assert stored["spec"]["replicas"] == 4 and stored["metadata"]["resourceVersion"] == "9"
    assert stored["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == "sha256:new"
    # not autoscaled: the spec's count is written
    fixed = _body({"replicas": 2})
    c._apply(fixed, Action("update", "Deployment", SERVE, b.build_serving_deployment(fixed, parsed(fixed), SETTINGS,
                                                                                        "sha256:new")))
    assert fake.objects[("Deployment", SERVE)]["spec"]["replicas"] == 2


# ----------------------------------------------------------------------------- watches and RBAC


def test_the_new_kinds_are_watched_indexed_and_allowed():
    resources = {"disruption_budgets": ("policy", "v1", "poddisruptionbudgets"),
                 "autoscalers": ("autoscaling", "v2", "horizontalpodautoscalers"),
                 "network_policies": ("networking.k8s.io", "v1", "networkpolicies")}
    indexed = {x.id: x for x in h.registry._indexing.get_all_handlers()}
    triggers = {x.id for x in h.registry._watching.get_all_handlers()}
    rules = cluster_role_rules()
    for field, res in resources.items():
        assert h.CHILD_RESOURCES[field] == res
        index = indexed[f"eft_{field}"]
        assert dict(index.labels) == h.MANAGED
        assert f"enqueue-owner-of-{res[-1]}" in triggers
        assert hasattr(Children(), field)
        group = res[0] if len(res) == 3 else ""
        granted = {v for r in rules if group in r["apiGroups"] and res[-1] in r["resources"] for v in r["verbs"]}
        assert granted == {"get", "list", "watch", "create", "update", "delete"}, res
    for kind, (prefix, plural) in (("PodDisruptionBudget", ("/apis/policy/v1", "poddisruptionbudgets")),
                                   ("HorizontalPodAutoscaler", ("/apis/autoscaling/v2", "horizontalpodautoscalers")),
                                   ("NetworkPolicy", ("/apis/networking.k8s.io/v1", "networkpolicies"))):
        assert RESOURCES[kind] == (prefix, plural)


def test_controller_reads_the_new_indices_into_children():
    c = _controller(FakeKube())
    key = ("ns", "demo")
    pdb = {"name": SERVE, "uid": "p"}
    c.indices = {"eft_disruption_budgets": {key: [pdb]}, "eft_autoscalers": {key: [{"name": SERVE, "uid": "h"}]},
                 "eft_network_policies": {key: [{"name": SERVE, "uid": "n"}]}}
    ch = c.children(*key)
    assert ch.disruption_budgets == [pdb] and ch.autoscalers[0]["uid"] == "h" and ch.network_policies[0]["uid"] == "n"
