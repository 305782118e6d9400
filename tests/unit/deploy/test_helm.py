"""The Helm chart (helm/eft-operator) as rendered: lint, values schema, RBAC = operator/rbac.py, the
settings the operator reads. The API-server side (server-side apply, a real helm install) is in
tests/apiserver/test_helm.py."""

from __future__ import annotations

import json
import os
import tomllib

import pytest
import yaml

from tests.support.helm import CASE_IDS, CASES, CHART, values_args, by_kind, deployment, render
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    """Every case rendered once (helm template is the slow part)."""
    return {cid: render(helm, case) for cid, case in zip(CASE_IDS, CASES)}


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


# --------------------------------------------------------------------------- chart metadata


def test_chart_version_and_app_version_follow_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == version
    assert chart["appVersion"] == version


def test_chart_crd_is_the_generated_crd():
    """One source: the chart's crds/ holds crds/embeddingfinetune.yaml (a symlink to it)."""
    files = sorted(p.name for p in (CHART / "crds").iterdir())
    assert files == ["embeddingfinetune.yaml"]
    chart_crd = CHART / "crds" / "embeddingfinetune.yaml"
    source = REPO / "crds" / "embeddingfinetune.yaml"
    if chart_crd.is_symlink():
        assert chart_crd.resolve() == source.resolve()
    assert chart_crd.read_bytes() == source.read_bytes()


def test_helm_renders_the_generated_crd(helm):
    shown = [d for d in yaml.safe_load_all(helm("show", "crds", str(CHART)).stdout) if d]
    assert shown == [yaml.safe_load((REPO / "crds" / "embeddingfinetune.yaml").read_text())]


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_helm_lint(helm, values):
    proc = helm("lint", "--strict", str(CHART), *values_args(values))
    assert "0 chart(s) failed" in proc.stdout


# --------------------------------------------------------------------------- rendering


def operator_docs(docs: list[dict]) -> list[dict]:
    """The operator's own objects: without the tenant roles (tests/unit/deploy/test_tenant_roles.py)."""
    return [d for d in docs if not d["metadata"]["name"].endswith(("-tenant-view", "-tenant-edit", "-tenant-admin"))]


def test_default_render(rendered):
    docs = operator_docs(rendered["default"])
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "eft-system"
        assert d["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"

    dep = deployment(docs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (sa,) = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/eft-ai/eft-operator:0.1.0"
    assert c["command"] == ["eft"] and c["args"][0] == "operator"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # the liveness probe hits kopf's liveness endpoint, where `eft operator --liveness` serves it
    probe = c["livenessProbe"]["httpGet"]
    (port,) = [p for p in c["ports"] if p["name"] == probe["port"]]
    assert f"--liveness=http://0.0.0.0:{port['containerPort']}{probe['path']}" in c["args"]
    assert probe["path"] == "/healthz"

    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "ClusterRole")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "eft-system"}]


def test_cluster_role_rules_are_exactly_the_operators(rendered):
    from eft.controller.rbac import cluster_role_rules

    (role,) = by_kind(operator_docs(rendered["default"]), "ClusterRole")
    assert role["rules"] == cluster_role_rules()


def test_namespaced_mode_gets_a_role_per_watched_namespace(rendered):
    from eft.controller.rbac import cluster_role_rules

    docs = operator_docs(rendered["namespaced"])
    watched = ci_values("namespaced")["operator"]["watchNamespaces"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    (sa,) = by_kind(docs, "ServiceAccount")
    for role in roles:
        assert role["rules"] == cluster_role_rules()
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                  "namespace": "eft-system"}]
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args


@pytest.mark.parametrize("case", CASE_IDS)
def test_no_wildcards_in_any_rule(rendered, case):
    for d in rendered[case]:
        for rule in d.get("rules", []):
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(key, []), (case, d["kind"], rule)
            assert not rule.get("nonResourceURLs"), rule


def test_existing_service_account_mode_creates_no_rbac(rendered):
    docs = operator_docs(rendered["existing-serviceaccount"])
    assert [d["kind"] for d in docs] == ["Deployment"]
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "eft-operator-managed"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"


def _operator_settings(dep: dict, monkeypatch):
    """The Settings `eft operator` builds from the rendered container's args and environment."""
    from eft.controller import main as operator_main

    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["eft"] and c["args"][0] == "operator"
    for k in list(os.environ):
        if k.startswith("EFT_"):
            monkeypatch.delenv(k)
    for e in c["env"]:
        assert "value" in e, e  # plain values only: the operator reads them at start-up
        monkeypatch.setenv(e["name"], e["value"])
    args = operator_main.build_parser().parse_args(c["args"][1:])
    return args, operator_main.settings_from_args(args)


@pytest.mark.parametrize("case", CASE_IDS)
def test_rendered_settings_are_what_the_operator_reads(rendered, case, monkeypatch):
    """Every EFT_* variable the chart sets is read by operator/settings.py (or main.py), and the
    operator's own argument parsing turns the rendered container into the configured Settings."""
    dep = deployment(rendered[case])
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    operator_src = (REPO / "operator" / "settings.py").read_text() + (REPO / "operator" / "main.py").read_text()
    unread = sorted(n for n in env if n.startswith("EFT_") and f'"{n}"' not in operator_src)
    assert not unread, f"the chart sets {unread}, which the operator never reads"

    args, settings = _operator_settings(dep, monkeypatch)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if case != "default":
        values = _merge(values, ci_values(case))
    d = values["defaults"]
    default_tag = "0.1.0-cpu" if d["imageFlavour"] == "cpu" else "0.1.0"  # images/build.py's tags
    assert settings.image == f"{d['stageImage']['repository']}:{d['stageImage']['tag'] or default_tag}"
    assert settings.serving_image == f"{d['servingImage']['repository']}:{d['servingImage']['tag'] or default_tag}"
    assert settings.image_pull_policy == (d["imagePullPolicy"] or None)
    assert settings.run_as_user == d["runAsUser"]
    assert settings.workers == values["operator"]["workers"]
    assert settings.resync_seconds == values["operator"]["resyncSeconds"]
    assert settings.metrics_grace_seconds == values["operator"]["metricsGraceSeconds"]
    assert settings.namespaces == tuple(values["operator"]["watchNamespaces"])
    assert args.liveness == f"http://0.0.0.0:{values['operator']['livenessPort']}/healthz"
    assert args.verbose is values["operator"]["verbose"]
    # scheduling defaults travel as JSON
    for name, key in (("EFT_DEFAULT_NODE_SELECTOR", "nodeSelector"), ("EFT_DEFAULT_TOLERATIONS", "tolerations"),
                      ("EFT_GPU_STAGE_RESOURCES", "gpuStageResources")):
        assert json.loads(env[name]) == d[key] if d[key] else name not in env
    assert env.get("EFT_GPU_RESOURCE", "") == d["gpuResourceName"]
    assert settings.default_node_selector == d["nodeSelector"]
    assert settings.default_tolerations == d["tolerations"]
    assert settings.gpu_resource == (d["gpuResourceName"] or "nvidia.com/gpu")
    assert settings.gpu_stage_resources == d["gpuStageResources"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_gpu_defaults(rendered):
    docs = rendered["gpu-defaults"]
    pod = deployment(docs)["spec"]["template"]["spec"]
    # the operator pod itself follows the operator-pod values, not the stage defaults
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/system": "true"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert json.loads(env["EFT_DEFAULT_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
    assert json.loads(env["EFT_GPU_STAGE_RESOURCES"])["requests"]["memory"] == "32Gi"


def test_gpu_defaults_reach_the_stage_jobs(rendered, monkeypatch):
    """The operator configured by the gpu-defaults chart puts its scheduling defaults on the Jobs of a
    spec that leaves them open, and a spec's own values still win."""
    from eft.controller.builders import build_stage_job

    from eft.spec import parse_document

    _, settings = _operator_settings(deployment(rendered["gpu-defaults"]), monkeypatch)
    values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), ci_values("gpu-defaults"))["defaults"]
    efr = {"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune",
           "metadata": {"name": "gpu", "namespace": "ml", "uid": "u-1"}}
    spec = parse_document({}).spec
    train = build_stage_job(efr, spec, "train", "abc123", settings)["spec"]["template"]["spec"]
    assert train["tolerations"] == values["tolerations"]
    assert train["nodeSelector"] == values["nodeSelector"] if values["nodeSelector"] else "nodeSelector" not in train
    res = train["containers"][0]["resources"]
    gpu = values["gpuResourceName"] or "nvidia.com/gpu"
    assert res["limits"][gpu] == 1 and res["requests"]["memory"] == "32Gi"
    ingest = build_stage_job(efr, spec, "ingest", "abc123", settings)["spec"]["template"]["spec"]
    assert gpu not in ingest["containers"][0]["resources"].get("limits", {})
    own = parse_document({"scheduling": {"tolerations": [{"key": "mine", "operator": "Exists"}]}}).spec
    mine = build_stage_job(efr, own, "train", "abc123", settings)["spec"]["template"]["spec"]
    assert mine["tolerations"] == [{"key": "mine", "operator": "Exists"}]


def test_operator_application_values_render(helm, tmp_path):
    """gitops/argocd/operator-application.yaml's Helm values pass the chart's schema."""
    app = yaml.safe_load((REPO / "gitops" / "argocd" / "operator-application.yaml").read_text())
    h = app["spec"]["source"]["helm"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(h["valuesObject"]))
    docs = render(helm, values, release=h["releaseName"], namespace=app["spec"]["destination"]["namespace"])
    assert deployment(docs)["metadata"]["namespace"] == "eft-system"


def test_custom_images(rendered):
    docs = rendered["custom-images"]
    pod = deployment(docs)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/mirror/eft-operator:0.1.0-r2"
    assert c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-example-com"}]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["EFT_IMAGE"] == "registry.example.com/mirror/eft-stages:0.1.0-cu128"
    assert env["EFT_SERVING_IMAGE"] == "registry.example.com/mirror/eft-server:0.1.0-trt"
    assert env["EFT_RUN_AS_USER"] == "2000"


@pytest.mark.parametrize("bad", [
    "operator.wrkers=2",                    # typo
    "defaults.imagePullPolicy=Sometimes",   # not an imagePullPolicy
    "operator.watchNamespaces[0]=Team_A",   # not a namespace name
    "defaults.runAsUser=0",                 # root
    "image.repository=",                    # empty
])
def test_values_schema_rejects(helm, bad):
    proc = helm("template", "eft", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0
    assert "schema" in proc.stderr, proc.stderr
