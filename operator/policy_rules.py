"""The platform policy's rules over one spec: ``policy_violations`` and ``with_policy_defaults`` (pure).

The operator applies the defaults first and then checks the result, so a platform default above a platform
cap is reported rather than silently exceeding it. The chart's ValidatingAdmissionPolicy restates the static
rules in CEL (helm/eft-operator/templates/admission-policy.yaml); the operator still checks them all, because
a policy can change after a resource was admitted and the admission policy can be switched off.
"""

from __future__ import annotations

import json
from typing import Any

from eft.controller.builders import stage_gpus
from eft.controller.policy import RESOURCE_KEYS, PlatformPolicy, quantity
from eft.spec import STAGES, EmbeddingFinetuneSpec, StagePodSpec




def normalized_image(image: str) -> str:
    """The image as the container runtime resolves it: a reference without a registry host is Docker Hub's.

    Written here rather than taken from a library: the rule is three lines (the first path component is a
    registry host when it has a '.' or ':' or is 'localhost'), and the chart's CEL rule restates it.
    """
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return "docker.io/" + (image if rest else "library/" + image)


def registry_allowed(image: str, registries: tuple[str, ...]) -> bool:
    ref = normalized_image(image)
    return any(ref == r or ref.startswith(r + "/") for r in registries)


def set_pod_fields(spec: EmbeddingFinetuneSpec, field: str) -> list[tuple[str, Any]]:
    """(field path, value) of a pod setting (``image``, ``resources``) wherever the spec sets it itself: each
    stage's scheduling block, then serving."""
    out = [(f"spec.scheduling.stages.{stage}.{field}", getattr(sp, field))
           for stage, sp in sorted(spec.scheduling.stages.items()) if getattr(sp, field)]
    if getattr(spec.serving, field):
        out.append((f"spec.serving.{field}", getattr(spec.serving, field)))
    return out


def _image_violations(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> list[str]:
    out = []
    for path, image in set_pod_fields(spec, "image"):
        if not policy.allow_image_overrides:
            out.append(f"{path}: the platform does not allow specs to choose images (policy.allowImageOverrides "
                       f"is false); remove it to use the operator's image")
        elif policy.allowed_registries and not registry_allowed(image, policy.allowed_registries):
            out.append(f"{path}: image {image!r} is not from an allowed registry "
                       f"({', '.join(policy.allowed_registries)})")
    return out


def _command_violations(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> list[str]:
    if policy.allow_command_overrides:
        return []
    return [f"spec.serving.{field}: the platform does not allow specs to replace the serving container's "
            f"{field} (policy.allowCommandOverrides is false)"
            for field in ("command", "args") if getattr(spec.serving, field) is not None]


# ----------------------------------------------------------------------------------------------- GPUs, resources


def pod_gpus(spec: EmbeddingFinetuneSpec) -> list[tuple[str, int]]:
    """(field path, GPUs) of every pod the operator would create for this spec."""
    out = []
    for stage in STAGES:
        sp = spec.scheduling.stages.get(stage)
        path = (f"spec.scheduling.stages.{stage}.gpus" if sp is not None and sp.gpus is not None
                else "spec.training.gpusPerNode")
        out.append((path, stage_gpus(spec, stage)))
    out.append(("spec.serving.gpus", spec.serving.gpus))  # checked even while serving is off, as admission does
    return out


def _gpu_violations(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> list[str]:
    cap = policy.max_gpus_per_pod
    if cap is None:
        return []
    seen = dict.fromkeys(f"{path}: {n} GPUs per pod exceeds the platform's limit of {cap} "
                         f"(policy.maxGpusPerPod)" for path, n in pod_gpus(spec) if n > cap)
    return list(seen)


def _resource_violations(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> list[str]:
    out = []
    caps = {name: quantity(q, name) for name, q in policy.max_resources.items()}
    for path, res in set_pod_fields(spec, "resources"):
        for kind in RESOURCE_KEYS:
            for name, value in (res.get(kind) or {}).items():
                if name not in caps:
                    continue
                try:
                    asked = quantity(value, f"{path}.{kind}.{name}")
                except ValueError as exc:
                    out.append(str(exc))
                    continue
                if asked > caps[name]:
                    out.append(f"{path}.{kind}.{name}: {value} exceeds the platform's limit of "
                               f"{policy.max_resources[name]} (policy.maxResources.{name})")
    return out


def policy_violations(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> list[str]:
    """Every field of the (defaulted) spec the platform forbids; empty = allowed."""
    return (_image_violations(spec, policy) + _command_violations(spec, policy)
            + _gpu_violations(spec, policy) + _resource_violations(spec, policy))


def with_policy_defaults(spec: EmbeddingFinetuneSpec, policy: PlatformPolicy) -> EmbeddingFinetuneSpec:
    """A copy of the spec with the platform's queue and per-stage resources where the spec leaves them open."""
    if policy.default_queue is None and not policy.stage_defaults:
        return spec
    out = spec.model_copy(deep=True)
    if out.queue_name is None and policy.default_queue:
        out.queue_name = policy.default_queue
    for pod, resources in policy.stage_defaults.items():
        if pod == "serving":
            if not out.serving.resources:
                out.serving.resources = json.loads(json.dumps(resources))
            continue
        sp = out.scheduling.stages.get(pod)
        if sp is None:
            out.scheduling.stages[pod] = StagePodSpec(resources=json.loads(json.dumps(resources)))
        elif not sp.resources:
            sp.resources = json.loads(json.dumps(resources))
    return out
