"""Operator settings: defaults for what a spec leaves open (images), taken from the environment or CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from importlib import metadata

from eft.controller.policy import PlatformPolicy, parse_policy


def _version() -> str:
    try:
        return metadata.version("eft")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "latest"


# images/stages.Dockerfile and images/server.Dockerfile, as the Helm chart publishes them
DEFAULT_IMAGE = f"ghcr.io/eft-ai/eft-stages:{_version()}"
DEFAULT_SERVING_IMAGE = f"ghcr.io/eft-ai/eft-server:{_version()}"


@dataclass(frozen=True)
class Settings:
    # Image of every stage pod unless spec.scheduling.stages[x].image says otherwise ($EFT_IMAGE).
    image: str = DEFAULT_IMAGE
    # Image of the serving pods unless spec.serving.image says otherwise ($EFT_SERVING_IMAGE).
    serving_image: str = DEFAULT_SERVING_IMAGE
    image_pull_policy: str | None = None
    # uid/gid of every pod the operator creates (non-root; also the fsGroup of the workspace volume).
    run_as_user: int = 1000
    # Every object is reconciled at least this often, even without events (level-based safety net).
    resync_seconds: float = 60.0
    # Concurrent reconciles (different objects; one object is never reconciled twice at once).
    workers: int = 4
    # How long a finished evaluate Job may wait for its pod's termination message to show up.
    metrics_grace_seconds: float = 60.0
    # Namespaces to watch ($EFT_NAMESPACES, comma-separated); empty = cluster-wide.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    # Scheduling defaults of stage pods where spec.scheduling leaves them empty (a GPU pool's labels
    # and taints, typically): $EFT_DEFAULT_NODE_SELECTOR and $EFT_DEFAULT_TOLERATIONS, JSON.
    default_node_selector: dict[str, str] = field(default_factory=dict)
    default_tolerations: list[dict[str, Any]] = field(default_factory=list)
    # Extended resource name of a GPU ($EFT_GPU_RESOURCE), e.g. nvidia.com/mig-1g.10gb.
    gpu_resource: str = "nvidia.com/gpu"
    # Container resources of GPU stages whose spec.scheduling.stages.<stage>.resources is empty
    # ($EFT_GPU_STAGE_RESOURCES, JSON); the GPU count itself always comes from the spec.
    gpu_stage_resources: dict[str, Any] = field(default_factory=dict)
    # What tenants' specs may ask for, and the platform's defaults ($EFT_PLATFORM_POLICY, JSON; the chart's
    # `policy` values); the default allows everything.
    policy: PlatformPolicy = field(default_factory=PlatformPolicy)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Every EFT_* variable the operator reads; an override that is not None wins (the CLI's flags)."""
        env = os.environ
        values = {
            "image": env.get("EFT_IMAGE") or DEFAULT_IMAGE,
            "serving_image": env.get("EFT_SERVING_IMAGE") or DEFAULT_SERVING_IMAGE,
            "image_pull_policy": env.get("EFT_IMAGE_PULL_POLICY") or None,
            "run_as_user": int(env.get("EFT_RUN_AS_USER", "1000")),
            "resync_seconds": float(env.get("EFT_RESYNC_SECONDS", "60")),
            "workers": int(env.get("EFT_WORKERS", "4")),
            "metrics_grace_seconds": float(env.get("EFT_METRICS_GRACE_SECONDS", "60")),
            "default_node_selector": _json_env("EFT_DEFAULT_NODE_SELECTOR", dict, {}),
            "default_tolerations": _json_env("EFT_DEFAULT_TOLERATIONS", list, []),
            "gpu_resource": env.get("EFT_GPU_RESOURCE") or "nvidia.com/gpu",
            "gpu_stage_resources": _json_env("EFT_GPU_STAGE_RESOURCES", dict, {}),
            "namespaces": _names_env("EFT_NAMESPACES"),
            "policy": parse_policy(env.get("EFT_PLATFORM_POLICY")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _names_env(name: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in (os.environ.get(name) or "").split(",") if n.strip())


def _json_env(name: str, kind: type, default: Any) -> Any:
    """A JSON setting from the environment; a malformed one stops the operator with the variable's name."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${name} is not valid JSON: {exc.msg} (got {raw[:80]!r})") from None
    if not isinstance(value, kind):
        raise ValueError(f"${name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value
