"""Operator settings: defaults for what a spec leaves open (images), taken from the environment or CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata


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
    # Namespaces to watch; empty = cluster-wide.
    namespaces: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values = {
            "image": env.get("EFT_IMAGE") or DEFAULT_IMAGE,
            "serving_image": env.get("EFT_SERVING_IMAGE") or DEFAULT_SERVING_IMAGE,
            "image_pull_policy": env.get("EFT_IMAGE_PULL_POLICY") or None,
            "run_as_user": int(env.get("EFT_RUN_AS_USER", "1000")),
            "resync_seconds": float(env.get("EFT_RESYNC_SECONDS", "60")),
            "workers": int(env.get("EFT_WORKERS", "4")),
            "metrics_grace_seconds": float(env.get("EFT_METRICS_GRACE_SECONDS", "60")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
