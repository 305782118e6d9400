"""The built-in sample corpus: Kubernetes API reference pages generated from the installed `kubernetes` client.

The client's models carry the API's field documentation (the same text `kubectl explain` prints), so
every machine that has eft installed can build the corpus without a download and without copying anyone's
text into this repository. One document per API type: its description, then one section per field.
The set is a fixed list of workload, batch, networking and storage types — a domain full of "close but
wrong" look-alikes (Job vs CronJob fields, probes, the many *Spec types) that suits an embedding tuner.
"""

from __future__ import annotations

import re
from typing import Iterator

from eft.stages.ingest_readers import Document

# Type name (kubernetes.client.models class) -> API group/version shown in the title.
KUBERNETES_TYPES: dict[str, str] = {
    **{t: "core/v1" for t in (
        "V1Pod", "V1PodSpec", "V1Container", "V1ContainerPort", "V1Probe", "V1HTTPGetAction", "V1ExecAction",
        "V1Lifecycle", "V1ResourceRequirements", "V1SecurityContext", "V1PodSecurityContext", "V1Volume",
        "V1VolumeMount", "V1EnvVar", "V1EnvVarSource", "V1ConfigMap", "V1Secret", "V1Service", "V1ServiceSpec",
        "V1ServicePort", "V1PersistentVolumeClaimSpec", "V1PersistentVolumeSpec", "V1Toleration", "V1Affinity",
        "V1NodeAffinity", "V1PodAffinityTerm", "V1ServiceAccount", "V1Namespace", "V1NodeSpec", "V1NodeStatus",
        "V1PodStatus", "V1ContainerStatus", "V1ContainerStateTerminated", "V1Event", "V1LimitRangeItem",
        "V1ResourceQuotaSpec", "V1TopologySpreadConstraint", "V1EmptyDirVolumeSource", "V1HostPathVolumeSource",
    )},
    **{t: "apps/v1" for t in (
        "V1DeploymentSpec", "V1DeploymentStrategy", "V1RollingUpdateDeployment", "V1DeploymentStatus",
        "V1StatefulSetSpec", "V1DaemonSetSpec", "V1ReplicaSetSpec",
    )},
    **{t: "batch/v1" for t in (
        "V1JobSpec", "V1JobStatus", "V1CronJobSpec", "V1PodFailurePolicy", "V1PodFailurePolicyRule",
        "V1SuccessPolicy",
    )},
    "V1IngressSpec": "networking.k8s.io/v1",
    "V1NetworkPolicySpec": "networking.k8s.io/v1",
    "V1HorizontalPodAutoscalerSpec": "autoscaling/v1",
    "V1PodDisruptionBudgetSpec": "policy/v1",
    "V1StorageClass": "storage.k8s.io/v1",
    "V1PolicyRule": "rbac.authorization.k8s.io/v1",
    "V1CustomResourceDefinitionSpec": "apiextensions.k8s.io/v1",
}

_CAMEL_BOUNDARY = re.compile(r"_([a-z0-9])")


def _camel(name: str) -> str:
    return _CAMEL_BOUNDARY.sub(lambda m: m.group(1).upper(), name)


def _field_docs(cls) -> list[tuple[str, str]]:
    """(wire name, description) per field; pydantic models (client >= 35) or the older property docstrings."""
    out: list[tuple[str, str]] = []
    fields = getattr(cls, "model_fields", None)
    if fields:
        for name, info in fields.items():
            if info.description:
                out.append((info.alias or _camel(name), info.description))
        return out
    attr_map = getattr(cls, "attribute_map", {})
    for name, wire in attr_map.items():
        prop = getattr(cls, name, None)
        doc = getattr(prop, "__doc__", "") or ""
        # Old-style docstrings: "Gets the x of this V1Foo.  # noqa: E501\n\n<description>  # noqa: E501\n\n:return:..."
        body = doc.split(":return:")[0]
        lines = [ln.replace("# noqa: E501", "").strip() for ln in body.splitlines()]
        text = " ".join(ln for ln in lines[1:] if ln).strip()
        if text:
            out.append((wire, text))
    return out


def _type_description(cls) -> str:
    doc = (cls.__doc__ or "").split("Attributes:")[0]
    doc = doc.split("NOTE: This class is auto generated")[0]
    return " ".join(doc.split())


def kubernetes_api_documents() -> Iterator[Document]:
    from kubernetes.client import models

    for type_name, group_version in KUBERNETES_TYPES.items():
        cls = getattr(models, type_name, None)
        if cls is None:
            continue  # an older or newer client without this type
        kind = type_name[2:]
        parts = [_type_description(cls)]
        for wire, desc in _field_docs(cls):
            parts.append(f"{kind}.{wire}: {desc}")
        yield Document(f"kubernetes-api/{group_version}/{kind}.md", f"{kind} ({group_version})", "\n\n".join(parts))


BUILTINS = {"builtin:kubernetes-api": kubernetes_api_documents}
