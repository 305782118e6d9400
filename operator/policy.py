"""The platform's policy over tenants' EmbeddingFinetunes (the model; the rules are in policy_rules.py).

A platform team sets it once, as the chart's ``policy`` values (the operator reads them as JSON from
``$EFT_PLATFORM_POLICY`` into ``Settings.policy``). Two pure functions of policy_rules.py use it:

* ``policy_violations(spec, policy)``: one line per field the policy forbids. The operator then creates
  nothing for the resource and says so (condition ``Failed``, reason ``PolicyViolation``, and a Warning
  Event); the chart's ValidatingAdmissionPolicy refuses the static rules earlier, at admission, but the
  operator checks every rule itself, because a policy can change after a resource was admitted and an
  admission policy can be switched off.
* ``with_policy_defaults(spec, policy)``: the spec with the platform's defaults filled in where it leaves
  them open (the queue, per-stage container resources). Defaults are applied before the caps are checked,
  so a default above a cap is reported too, instead of silently exceeding it.

What the policy bounds: the registries of the images a spec names (stage and serving images), whether a
spec may name images or a serving command at all, GPUs per pod and container resources per pod.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from eft.spec import describe_validation_error

Pod = Literal["ingest", "sdg", "prepare", "train", "evaluate", "export", "serving"]
RESOURCE_KEYS = ("requests", "limits")


class _PolicyModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AdmissionSettings(_PolicyModel):
    # Read by the chart only (it renders the ValidatingAdmissionPolicy); accepted here so the operator can be
    # handed the chart's whole `policy` block.
    enabled: bool = True


class PlatformPolicy(_PolicyModel):
    allowed_registries: tuple[str, ...] = Field(
        default=(), description="Registries (host or host/path prefixes) every image a spec names must come from; "
        "empty = any registry.")
    allow_image_overrides: bool = Field(
        default=True, description="May a spec name its own stage or serving images?")
    allow_command_overrides: bool = Field(
        default=True, description="May a spec replace the serving container's command or args?")
    default_queue: str | None = Field(
        default=None, description="Kueue LocalQueue of resources whose spec names none.")
    max_gpus_per_pod: int | None = Field(default=None, ge=0, description="GPUs any one pod may request.")
    max_resources: dict[str, str] = Field(
        default_factory=dict, description="Upper bound of each container resource (requests and limits) of every "
        "pod, as Kubernetes quantities, e.g. {cpu: '16', memory: 64Gi}.")
    stage_defaults: dict[Pod, dict[str, Any]] = Field(
        default_factory=dict, description="Container resources of a stage (or the serving pods) whose spec sets "
        "none, e.g. {train: {requests: {cpu: '8', memory: 32Gi}}}.")
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)

    @field_validator("allowed_registries")
    @classmethod
    def _registries(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(r.strip().rstrip("/") for r in v)
        if any(not r or "://" in r for r in cleaned):
            raise ValueError("a registry is a host or host/path prefix such as registry.example.com/ml, "
                             "without a scheme or an empty entry")
        return cleaned

    @field_validator("default_queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return v or None  # the chart's "" = none

    @field_validator("max_resources")
    @classmethod
    def _quantities(cls, v: dict[str, str]) -> dict[str, str]:
        for name, q in v.items():
            quantity(q, f"maxResources.{name}")
        return v

    @field_validator("stage_defaults")
    @classmethod
    def _defaults(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for pod, res in v.items():
            unknown = set(res) - set(RESOURCE_KEYS)
            if unknown:
                raise ValueError(f"stageDefaults.{pod}: only {list(RESOURCE_KEYS)} are allowed, got {sorted(unknown)}")
            for kind in RESOURCE_KEYS:
                for name, q in (res.get(kind) or {}).items():
                    quantity(q, f"stageDefaults.{pod}.{kind}.{name}")
        return v


class PolicyError(ValueError):
    """A malformed platform policy: the operator refuses to start (one line naming the field)."""


def parse_policy(raw: str | None) -> PlatformPolicy:
    """$EFT_PLATFORM_POLICY (the chart's policy values as JSON); empty = no restriction."""
    if not raw:
        return PlatformPolicy()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"$EFT_PLATFORM_POLICY is not valid JSON: {exc.msg}") from None
    try:
        return PlatformPolicy.model_validate(data or {})
    except ValidationError as err:
        raise PolicyError("$EFT_PLATFORM_POLICY: " + "; ".join(describe_validation_error(err, prefix="policy"))) \
            from None


def quantity(value: Any, where: str) -> Decimal:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity") from None
