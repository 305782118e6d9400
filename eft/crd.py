"""The EmbeddingFinetune CustomResourceDefinition, generated from the spec model (eft.spec).

``eft crd`` prints it; ``crds/embeddingfinetune.yaml`` is the committed output (``eft crd --write``
refreshes it, ``eft crd --check`` fails when it is stale). The schema is the pydantic JSON schema
of :class:`eft.spec.EmbeddingFinetuneSpec` turned into a *structural* OpenAPI v3 schema:

* ``$ref`` inlined, ``title`` dropped, ``anyOf [X, null]`` -> ``X`` + ``nullable: true``;
* ``int | 'auto'`` -> ``x-kubernetes-int-or-string`` plus a CEL rule;
* ``dict[str, Any]`` -> ``x-kubernetes-preserve-unknown-fields`` (Kubernetes types such as resources);
* ``dict[Literal[...], Model]`` -> one property per key (so ``kubectl explain`` shows each stage);
* JSON-schema 2020 ``exclusiveMinimum: x`` -> OpenAPI 3.0 ``minimum: x, exclusiveMinimum: true``;
* defaults: scalar defaults from the model, the model's whole default for every nested block (so a
  stored object shows every effective value), non-empty list defaults;
* descriptions from the model (``Field(description=...)``, a block's docstring where no field describes it),
  which ``kubectl explain`` shows and docs/reference.md prints;
* CEL rules (x-kubernetes-validations) from the blocks' ``cel_rules`` (:class:`eft.spec.CelRule`): the
  model validators' cross-field checks, and immutable fields as transition rules (``self == oldSelf``).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from eft.generated_file import generated_file_main
from eft.spec import API_GROUP, API_VERSION, KIND, PLURAL, STAGES, EmbeddingFinetuneSpec, SpecModel, TrainingSpec

SINGULAR = KIND.lower()
SHORT_NAMES = ["eft"]
CATEGORIES = ["eft", "ml"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"
REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "embeddingfinetune.yaml"

# The item bounds of evaluation.k, which EvaluationSpec._valid_k checks with its own message: the API server
# needs them in the schema to bound the estimated cost of the CEL rule that reads k.
EXTRA_SCHEMA: dict[str, dict[str, Any]] = {
    "evaluation.k": {"items": {"type": "integer", "minimum": 1, "maximum": 1000}},
    # ServingSpec._autoscaling_needs_cpu_request's CEL rule reads requests.cpu: CEL sees only declared fields of a
    # preserve-unknown-fields object. The rest of resources stays free-form.
    "serving.resources": {"properties": {"requests": {
        "description": "Resources the serving container requests (Kubernetes quantities).", "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"cpu": {"description": "CPU request, e.g. '500m' or 2.", "x-kubernetes-int-or-string": True}},
    }}},
}


def spec_blocks(model: type[SpecModel] = EmbeddingFinetuneSpec, path: str = ""
                ) -> Iterator[tuple[str, type[SpecModel]]]:
    """Every block of the spec model with its wire path below spec ('' is spec; `[]` marks list items, `.*` map
    values)."""
    yield path, model
    for name, info in model.model_fields.items():
        key = info.alias or name
        yield from _blocks_in(info.annotation, f"{path}.{key}" if path else key)


def _blocks_in(ann: Any, path: str) -> Iterator[tuple[str, type[SpecModel]]]:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if isinstance(ann, type) and issubclass(ann, SpecModel):
        yield from spec_blocks(ann, path)
    elif origin is list:
        yield from _blocks_in(args[0], f"{path}[]")
    elif origin is dict:
        yield from _blocks_in(args[1], f"{path}.*")
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            yield from _blocks_in(a, path)


# Fields that are immutable after creation (documented in operator/README.md), from the model's rules.
IMMUTABLE_FIELDS = tuple(r.immutable for _, block in spec_blocks() for r in block.cel_rules if r.immutable)

# metadata.name must be a DNS label (eft.spec.ObjectMeta): child names and labels are derived from it.
METADATA_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}


class SchemaError(ValueError):
    pass


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref, keeping sibling keys (pydantic puts the field's description next to it)."""
    if "$ref" not in node:
        return node
    target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    target.update(siblings)
    return target


def _is_null(node: dict[str, Any]) -> bool:
    return node.get("type") == "null"


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any = None, *,
             has_default: bool = False) -> dict[str, Any]:
    """One JSON-schema node -> one structural OpenAPI v3 node. `path` is the wire path below spec."""
    node, nullable = _flatten_any_of(_resolve(node, defs), defs, path)
    typ = node.get("type")
    if typ is None and "const" in node:
        typ = "string"
    if typ is None and not node:
        typ = "any"
    if typ not in _CONVERTERS:
        raise SchemaError(f"spec.{path}: unsupported JSON-schema node {node}")
    out: dict[str, Any] = {}
    if node.get("description"):
        out["description"] = " ".join(node["description"].split())
    out.update(_CONVERTERS[typ](node, defs, path, default_value, has_default))
    if nullable:
        out["nullable"] = True
    if path in EXTRA_SCHEMA:
        out.update(copy.deepcopy(EXTRA_SCHEMA[path]))
    if node.get("x-kubernetes-validations"):
        # pydantic sorts a schema's keys; rule first reads better in the YAML
        out["x-kubernetes-validations"] = [{k: r[k] for k in _RULE_KEYS if k in r}
                                           for r in node["x-kubernetes-validations"]]
    return _ordered(out)


_RULE_KEYS = ("rule", "message", "fieldPath", "reason")


def _flatten_any_of(node: dict[str, Any], defs: dict[str, Any], path: str) -> tuple[dict[str, Any], bool]:
    """`X | None` -> (X, nullable); an int-or-string union -> type 'int-or-string' (its values: a CEL rule)."""
    if "anyOf" not in node:
        return node, False
    options = [_resolve(o, defs) for o in node["anyOf"]]
    non_null = [o for o in options if not _is_null(o)]
    nullable = len(non_null) < len(options)
    types = sorted({o.get("type") for o in non_null})
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    if len(non_null) == 1:
        merged = {**outer, **non_null[0]}
        # The field's own description and rules sit next to the anyOf; the block's come with X.
        if outer.get("description"):
            merged["description"] = outer["description"]
        rules = outer.get("x-kubernetes-validations", []) + non_null[0].get("x-kubernetes-validations", [])
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged, nullable
    if types == ["integer", "string"]:
        return {**outer, "type": "int-or-string"}, nullable
    raise SchemaError(f"spec.{path}: cannot express anyOf {types} in a structural schema")


def _int_or_string(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any,
                   has_default: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    if node.get("default") is not None:
        out["default"] = node["default"]
    return out


def _object(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any,
            has_default: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    props, addl = node.get("properties"), node.get("additionalProperties")
    if props:
        sub_defaults = default_value if isinstance(default_value, dict) else {}
        out["properties"] = {
            key: _convert(sub, defs, f"{path}.{key}" if path else key, sub_defaults.get(key),
                          has_default=key in sub_defaults)
            for key, sub in props.items()}
        if node.get("required"):
            out["required"] = sorted(node["required"])
        if has_default and sub_defaults:
            # The whole default block (not `{}`): the API server checks defaults against the CEL rules
            # without defaulting them first.
            out["default"] = copy.deepcopy(sub_defaults)
    elif "propertyNames" in node and isinstance(addl, dict):
        # dict[Literal[...], Model]: a fixed set of keys -> explicit properties (kubectl explain shows each).
        value_schema = _convert(addl, defs, f"{path}.*")
        out["properties"] = {key: copy.deepcopy(value_schema) for key in node["propertyNames"].get("enum") or []}
    elif isinstance(addl, dict) and addl:
        out["additionalProperties"] = _convert(addl, defs, f"{path}.*")
    else:
        # dict[str, Any]: a Kubernetes type (resources, affinity, toleration, env var) kept as is.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _array(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any,
           has_default: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": _convert(node.get("items", {}), defs, f"{path}[]")}
    for key in ("minItems", "maxItems"):
        if key in node:
            out[key] = node[key]
    if has_default and isinstance(default_value, list) and default_value:
        out["default"] = copy.deepcopy(default_value)
    return out


def _scalar(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any,
            has_default: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": node.get("type", "string")}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in node:
        out["enum"] = list(node["enum"])
    for key in ("pattern", "minLength", "maxLength", "format", "minimum", "maximum"):
        if key in node:
            out[key] = node[key]
    # JSON schema 2020's exclusive bounds are numbers; OpenAPI 3.0's are flags on minimum/maximum.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in node:
            out[bound] = node[exclusive]
            out[exclusive] = True
    if node.get("default") is not None:
        out["default"] = node["default"]
    return out


def _any(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any,
         has_default: bool) -> dict[str, Any]:
    return {"x-kubernetes-preserve-unknown-fields": True}


_CONVERTERS = {"int-or-string": _int_or_string, "object": _object, "array": _array, "string": _scalar,
               "integer": _scalar, "number": _scalar, "boolean": _scalar, "any": _any}


_KEY_ORDER = ("description", "type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
              "nullable", "enum", "default", "format", "pattern", "minLength", "maxLength", "minimum",
              "exclusiveMinimum", "maximum", "exclusiveMaximum", "minItems", "maxItems", "required", "items",
              "additionalProperties", "properties", "x-kubernetes-validations")


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in sorted(d, key=lambda k: _KEY_ORDER.index(k) if k in _KEY_ORDER else 99)}


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `.spec`."""
    js = EmbeddingFinetuneSpec.model_json_schema(by_alias=True)
    defs = js.pop("$defs", {})
    defaults = EmbeddingFinetuneSpec().model_dump(mode="json", by_alias=True, exclude_none=True)
    # Fields filled from training.preset get no default: a stored default would outlive a later change of preset.
    for alias in TrainingSpec.preset_aliases():
        defaults["training"].pop(alias, None)
    schema = _convert(js, defs, "", defaults, has_default=True)
    schema["default"] = {}
    return _ordered(schema)


def _condition_schema() -> dict[str, Any]:
    return {
        "description": "A condition per Kubernetes API conventions.",
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"description": "Progressing, Succeeded, Failed, QualityGatePassed, Queued or Ready.",
                     "type": "string", "maxLength": 64},
            "status": {"description": "True, False or Unknown.", "type": "string",
                       "enum": ["True", "False", "Unknown"]},
            "reason": {"description": "CamelCase reason of the last transition.", "type": "string",
                       "maxLength": 128},
            "message": {"description": "Human-readable details.", "type": "string", "maxLength": 4096},
            "lastTransitionTime": {"description": "When the status last flipped.", "type": "string",
                                   "format": "date-time"},
            "observedGeneration": {"description": "metadata.generation the condition was computed for.",
                                   "type": "integer", "format": "int64", "minimum": 0},
        },
    }


def status_schema() -> dict[str, Any]:
    stage = {
        "description": "One pipeline stage of the current run.",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"description": "Stage name.", "type": "string", "enum": list(STAGES)},
            "phase": {"description": "Pending, Queued, Running, Succeeded or Failed.", "type": "string"},
            "job": {"description": "Name of the stage's Job (its name carries the stage fingerprint).",
                    "type": "string"},
            "attempts": {"description": "Pods started for this stage (retries included).", "type": "integer"},
            "startTime": {"description": "When the Job started.", "type": "string", "format": "date-time"},
            "completionTime": {"description": "When the stage finished.", "type": "string", "format": "date-time"},
            "message": {"description": "The stage pod's termination message (summary or error).",
                        "type": "string", "maxLength": 4096},
        },
    }
    return {
        "description": "Observed state, written by the operator.",
        "type": "object",
        "properties": {
            "observedGeneration": {"description": "metadata.generation the status reflects.", "type": "integer",
                                   "format": "int64"},
            "phase": {"description": "Pending, Queued, Running, Suspended, Deploying, Serving, Succeeded, "
                                     "Blocked or Failed.", "type": "string"},
            "stage": {"description": "The stage running or next to run; 'serving' once deployed.",
                      "type": "string"},
            "message": {"description": "One line about the current state.", "type": "string", "maxLength": 4096},
            "stages": {"description": "Per-stage progress of the current run.", "type": "array", "items": stage,
                       "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
            "metrics": {
                "description": "Headline metrics reported by the evaluate stage.",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {
                    "baseNdcg10": {"description": "nDCG@10 of the base model on the test split.", "type": "number"},
                    "tunedNdcg10": {"description": "nDCG@10 of the tuned model on the test split.",
                                    "type": "number"},
                    "gate": {"description": "Quality gate outcome (passed, failed, overridden).", "type": "string"},
                    "gateReason": {"description": "Why the gate did not pass whatever the metric said: "
                                                  "offlineQuestionsOnly (judged on a synthetic test split of the "
                                                  "offline generator's questions, which cannot show a better "
                                                  "model).", "type": "string"},
                },
            },
            "endpoint": {"description": "Base URL of the serving Service (OpenAI-compatible /v1/embeddings).",
                         "type": "string"},
            "modelDigest": {"description": "Digest of the model the serving Deployment runs.", "type": "string"},
            "conditions": {"description": "Progressing, Succeeded, Failed, QualityGatePassed, Queued, Ready.",
                           "type": "array", "items": _condition_schema(),
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pipeline phase."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Current stage."},
    {"name": "Base nDCG@10", "type": "number", "jsonPath": ".status.metrics.baseNdcg10",
     "description": "nDCG@10 of the base model."},
    {"name": "Tuned nDCG@10", "type": "number", "jsonPath": ".status.metrics.tunedNdcg10",
     "description": "nDCG@10 of the tuned model."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "Serving endpoint."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    root = {
        "description": "EmbeddingFinetune turns a folder of domain documents into a fine-tuned, evaluated, "
                       "exported and served text-embedding model: one Job per stage (ingest, sdg, prepare, "
                       "train, evaluate, export), then a Deployment + Service serving /v1/embeddings.",
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of "
                                          "an object.", "type": "string"},
            "kind": {"description": "Kind is a string value representing the REST resource this object "
                                    "represents.", "type": "string"},
            "metadata": copy.deepcopy(METADATA_SCHEMA),
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "eft", "app.kubernetes.io/part-of": "eft"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": list(CATEGORIES)},
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


HEADER = ("# GENERATED by `eft crd --write` from eft/spec.py (eft/crd.py). Do not edit by hand:\n"
          "# tests/unit/eft/test_crd.py fails when this file is stale.\n")


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(argv, prog="eft crd", description="print the EmbeddingFinetune CRD generated from "
                               "the spec model", path=CRD_FILE, shown=str(CRD_FILE.relative_to(REPO)),
                               render=render, rewrite="eft crd --write")


if __name__ == "__main__":
    raise SystemExit(main())
