"""The privilege model (operator/README.md): an EmbeddingFinetune lets its author do nothing a pod of their own
in their namespace could not. Every object the operator builds for a spec that names every Secret, claim,
ConfigMap and ServiceAccount it can is checked: same namespace, only the named objects, no host access."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from eft.controller import builders as b
from eft.spec import STAGES, SpecError, parse_document
from tests.unit.operator.factories import SETTINGS, efr, parsed

NAMED = {
    "baseModel": {"existingClaim": "models", "hfTokenSecret": {"name": "hf", "key": "token"}},
    "corpus": {"existingClaim": "docs", "credentialsSecret": "s3-creds"},
    "sdg": {"backend": "openai", "openai": {"baseURL": "https://llm.example/v1",
                                           "apiKeySecret": {"name": "llm", "key": "key"}}},
    "scheduling": {"serviceAccountName": "trainer", "imagePullSecrets": ["regcred"], "priorityClassName": "batch"},
    "workspace": {"existingClaim": "shared", "accessModes": ["ReadWriteMany"]},
    "training": {"nodes": 2},
    "serving": {"replicas": 2},
}
SECRETS = {"hf", "s3-creds", "llm", "regcred"}
CLAIMS = {"models", "docs", "shared"}


def every_object(body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = parsed(body)
    objs = [b.build_spec_configmap(body, spec), b.build_workspace_claim(body, spec),
            b.build_serving_deployment(body, spec, SETTINGS, "sha256:0"), b.build_serving_service(body, spec),
            b.build_rendezvous_service(body, "train", "0123abcd")]
    objs += [b.build_stage_job(body, spec, stage, "0123abcd", SETTINGS) for stage in STAGES]
    return objs


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("Job", "Deployment")]


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


@pytest.fixture(scope="module")
def objects():
    return every_object(efr(NAMED))


def test_every_object_is_in_the_resources_namespace(objects):
    assert {o["metadata"]["namespace"] for o in objects} == {"ns"}
    assert not [k for o in objects for k, _ in walk(o) if k == "namespace" and _ != "ns"]


def test_pods_reference_only_the_objects_the_spec_names(objects):
    pods = pod_specs(objects)
    secrets = {v["name"] for p in pods for k, v in walk(p) if k in ("secretKeyRef", "secretRef", "secret")}
    secrets |= {s["name"] for p in pods for s in p.get("imagePullSecrets", [])}
    assert secrets == SECRETS
    claims = {v["claimName"] for p in pods for k, v in walk(p) if k == "persistentVolumeClaim"}
    assert claims == CLAIMS
    config_maps = {v["name"] for p in pods for k, v in walk(p) if k in ("configMap", "configMapRef", "configMapKeyRef")}
    assert config_maps == {b.spec_configmap_name("demo")}
    assert {p.get("serviceAccountName") for p in pods} <= {"trainer", None}


def test_no_pod_gets_host_access_or_privileges(objects):
    for pod in pod_specs(objects):
        assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers", "nodeName"} & set(pod), pod
        volumes = {k for v in pod.get("volumes", []) for k in v if k != "name"}
        assert volumes <= {"persistentVolumeClaim", "configMap", "emptyDir"}, volumes
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "hostPort" not in str(c.get("ports", []))


@pytest.mark.parametrize(("spec", "field"), [
    ({"sdg": {"openai": {"apiKeySecret": {"name": "team-b/llm", "key": "key"}}}}, "spec.sdg.openai.apiKeySecret.name"),
    ({"sdg": {"openai": {"apiKeySecret": {"name": "llm", "key": "key", "namespace": "team-b"}}}},
     "spec.sdg.openai.apiKeySecret.namespace"),
    ({"workspace": {"existingClaim": "team-b/shared"}}, "spec.workspace.existingClaim"),
    ({"corpus": {"configMap": "../docs"}}, "spec.corpus.configMap"),
    ({"scheduling": {"imagePullSecrets": ["team-b/regcred"]}}, "spec.scheduling.imagePullSecrets[0]"),
])
def test_another_namespaces_objects_cannot_be_named(spec, field):
    with pytest.raises(SpecError) as exc:
        parse_document(spec)
    assert [p.split(":")[0] for p in exc.value.problems] == [field]
