"""The generated CRD enforced by a real API server: schema, CEL cross-field rules, immutable fields,
defaults, printer columns and kubectl explain."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from eft.spec import EmbeddingFinetuneSpec
from tests.unit.eft.test_crd import INVALID, VALID, _merge
from tests.unit.eft.test_reference import explain_path, reference_descriptions


def _manifest(name, spec):
    return {"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def installed(control_plane):
    from tests.support.kubelet import wait_for
    from tests.support.operator_harness import install_crd

    install_crd(control_plane)
    # An established CRD reaches the OpenAPI document kubectl explain reads a moment later.
    wait_for(lambda: control_plane.kubectl("explain", "eft", check=False).returncode == 0, timeout=30,
             what="kubectl explain to know the EmbeddingFinetune")
    return control_plane


@pytest.mark.kube
def test_api_server_defaults_and_printer_columns(installed, kube_namespace):
    cp = installed
    cp.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(_manifest("defaults", {})))
    got = json.loads(cp.kubectl("get", "eft", "defaults", "-n", kube_namespace, "-o", "json").stdout)
    spec = got["spec"]
    assert spec["training"]["preset"] == "measured" and spec["corpus"]["chunking"]["maxTokens"] == 256
    assert "epochs" not in spec["training"]  # the preset's: left unset, so a later change of preset applies
    assert spec["evaluation"]["k"] == [1, 5, 10, 100] and spec["workspace"]["accessModes"] == ["ReadWriteOnce"]
    assert EmbeddingFinetuneSpec.model_validate(spec) == EmbeddingFinetuneSpec()
    header = cp.kubectl("get", "embeddingfinetunes", "-n", kube_namespace).stdout.splitlines()[0]
    for col in ("PHASE", "STAGE", "BASE NDCG@10", "TUNED NDCG@10", "ENDPOINT", "AGE"):
        assert col in header
    assert "defaults" in cp.kubectl("get", "ml", "-n", kube_namespace).stdout  # category


@pytest.mark.kube
def test_api_server_rejects_invalid_specs_with_field_paths(installed, kube_namespace):
    cp = installed
    failures = []
    for i, (patch, field, _) in enumerate(INVALID):
        r = cp.kubectl("apply", "-n", kube_namespace, "-f", "-", check=False,
                       input=json.dumps(_manifest(f"bad-{i}", _merge(VALID, patch))))
        if r.returncode == 0 or field not in r.stderr:
            failures.append((patch, field, r.returncode, r.stderr.strip()))
    assert not failures, "\n".join(map(str, failures))
    # unknown fields are rejected (kubectl's strict field validation), names must be DNS labels
    r = cp.kubectl("apply", "-n", kube_namespace, "-f", "-", check=False,
                   input=json.dumps(_manifest("typo", {"trainig": {"epochs": 2}})))
    assert r.returncode != 0 and 'unknown field "spec.trainig"' in r.stderr
    r = cp.kubectl("apply", "-n", kube_namespace, "-f", "-", check=False,
                   input=json.dumps(_manifest("my.model", {})))
    assert r.returncode != 0 and "metadata.name" in r.stderr
    cp.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(_manifest("good", VALID)))


@pytest.mark.kube
def test_immutable_fields(installed, kube_namespace):
    cp = installed
    spec = {"baseModel": {"name": "bundled"}, "workspace": {"size": "5Gi"}}
    cp.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(_manifest("frozen", spec)))
    for patch, field in (({"workspace": {"size": "10Gi"}}, "spec.workspace.size"),
                         ({"workspace": {"storageClassName": "fast"}}, "spec.workspace.storageClassName"),
                         ({"workspace": {"existingClaim": "other"}}, "spec.workspace.existingClaim"),
                         ({"workspace": {"accessModes": ["ReadWriteMany"]}}, "spec.workspace.accessModes"),
                         ({"baseModel": {"name": "intfloat/e5-base-v2"}}, "spec.baseModel.name")):
        r = cp.kubectl("patch", "eft", "frozen", "-n", kube_namespace, "--type=merge", "-p",
                       json.dumps({"spec": patch}), check=False)
        assert r.returncode != 0 and field in r.stderr and "immutable" in r.stderr, (patch, r.stderr)
    # mutable: retention policy, training, serving
    cp.kubectl("patch", "eft", "frozen", "-n", kube_namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"workspace": {"retentionPolicy": "Delete"}, "training": {"epochs": 5},
                  "serving": {"replicas": 2}}}))


@pytest.mark.kube
def test_kubectl_explain_is_useful(installed):
    cp = installed
    out = cp.kubectl("explain", "embeddingfinetune.spec.training").stdout
    assert "Contrastive fine-tuning" in out and "batchSize" in out and "epochs" in out
    out = cp.kubectl("explain", "eft.spec.workspace.retentionPolicy").stdout
    assert "What happens to a created PVC" in out
    out = cp.kubectl("explain", "eft.status.conditions").stdout
    assert "QualityGatePassed" in out


def _explained_description(out: str) -> str:
    """The DESCRIPTION section of `kubectl explain` output, whitespace-normalised (it is wrapped and indented)."""
    lines = out.splitlines()
    start = lines.index("DESCRIPTION:") + 1
    body = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break  # the next section (FIELDS:, ENUM:, ...)
        body.append(line)
    return " ".join(" ".join(body).split())


@pytest.mark.kube
def test_kubectl_explain_prints_the_reference_text(installed):
    """Every row of docs/reference.md: `kubectl explain eft.spec.<field>` shows the row's description."""
    cp = installed
    expected = reference_descriptions()

    def explain(path):
        return path, _explained_description(cp.kubectl("explain", explain_path(path)).stdout)

    with ThreadPoolExecutor(4) as pool:
        shown = dict(pool.map(explain, expected))
    differ = [(p, expected[p], shown[p]) for p in expected if shown[p] != " ".join(expected[p].split())]
    assert not differ, "\n".join(map(str, differ))
