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
* descriptions from the model, completed from :data:`DESCRIPTIONS` (``kubectl explain`` shows them);
* cross-field checks of the model's validators as CEL rules (:data:`RULES`), immutable fields as
  transition rules (``self == oldSelf``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from eft.generated_file import generated_file_main
from eft.spec import API_GROUP, API_VERSION, KIND, PLURAL, STAGES, EmbeddingFinetuneSpec

SINGULAR = KIND.lower()
SHORT_NAMES = ["eft"]
CATEGORIES = ["eft", "ml"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"
REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "embeddingfinetune.yaml"

# Descriptions for fields whose model Field() has none (wire paths below `spec`).
DESCRIPTIONS: dict[str, str] = {
    "": "Desired state: where the documents come from, how questions are generated, how the model is "
        "trained, evaluated, exported and served, and where the stage pods run.",
    "baseModel": "The embedding model to fine-tune. `name` and `existingClaim` are immutable.",
    "baseModel.hfTokenSecret.name": "Name of a Secret in the resource's namespace.",
    "corpus": "The domain documents. Changing path/include/exclude/chunking/existingClaim/configMap re-runs "
              "every stage from ingest.",
    "corpus.chunking": "How documents are split into passages (base-model tokens).",
    "sdg": "Synthetic data generation: the questions the model is trained and evaluated on. A change re-runs "
           "from sdg.",
    "sdg.openai.temperature": "Sampling temperature of the question-writing model.",
    "sdg.questionsPerChunk": "Questions generated per chunk (before the judge filters them).",
    "sdg.seed": "Random seed (chunk sampling, multi-hop groups).",
    "split": "How questions are split into train / validation / test. A change re-runs from prepare.",
    "split.seed": "Random seed of the split.",
    "mining": "Hard-negative mining. A change re-runs from prepare.",
    "training": "Contrastive fine-tuning hyper-parameters. A change re-runs from train.",
    "training.epochs": "Passes over the training pairs.",
    "training.learningRate": "Peak learning rate (AdamW).",
    "training.warmupRatio": "Fraction of steps with a linear learning-rate warm-up.",
    "training.weightDecay": "AdamW weight decay.",
    "training.gradientAccumulation": "Micro-batches accumulated per optimizer step.",
    "training.gradientCheckpointing": "Trade compute for memory (recompute activations in the backward pass).",
    "training.seed": "Random seed of training.",
    "evaluation": "Retrieval evaluation of the base and the tuned model, and the quality gate. A change re-runs "
                  "from evaluate.",
    "evaluation.gate": "Quality gate: the tuned model is exported and served only when it passes (or override).",
    "evaluation.datasets": "Extra human-labelled BEIR datasets to evaluate on.",
    "evaluation.datasets.name": "Short name of the dataset (used in metric names).",
    "evaluation.datasets.split": "Qrels split to evaluate (qrels/<split>.tsv).",
    "export": "Export of the tuned model for serving. A change re-runs export.",
    "export.onnx": "ONNX export (served by `eft serve`).",
    "export.onnx.enabled": "Export ONNX files.",
    "export.onnx.opset": "ONNX opset version.",
    "export.tensorrt": "TensorRT engine build (needs a GPU node and TensorRT in the image).",
    "export.tensorrt.enabled": "Build a TensorRT engine.",
    "export.tensorrt.fp8": "Build with FP8 precision (Hopper or newer GPUs).",
    "export.tensorrt.maxBatch": "Largest batch the engine accepts.",
    "serving": "The inference Deployment + Service started after export when the quality gate passed. "
               "Changes roll the Deployment; they never re-run stages.",
    "serving.enabled": "Deploy the exported model (Deployment + Service).",
    "serving.replicas": "Serving pods. More than one needs a ReadWriteMany workspace.",
    "serving.port": "Container and Service port.",
    "serving.backend": "Inference backend of `eft serve`.",
    "serving.gpus": "nvidia.com/gpu per serving pod.",
    "workspace": "The PersistentVolumeClaim shared by every stage pod (outputs, caches) and mounted read-only "
                 "by the serving pods. Immutable except retentionPolicy.",
    "workspace.size": "Requested storage of the created claim.",
    "workspace.storageClassName": "StorageClass of the created claim; unset = the cluster's default.",
    "workspace.accessModes": "Access modes of the created claim. ReadWriteMany lets serving run several "
                             "replicas and training span nodes.",
    "scheduling": "Where and how the stage pods run. Changes apply to Jobs created afterwards; they never "
                  "re-run stages.",
    "scheduling.nodeSelector": "Node labels every stage pod requires.",
    "scheduling.tolerations": "Tolerations of every stage pod (Kubernetes Toleration objects).",
    "scheduling.affinity": "Affinity of every stage pod (Kubernetes Affinity object).",
    "scheduling.priorityClassName": "PriorityClass of the stage pods.",
    "scheduling.serviceAccountName": "ServiceAccount the stage pods run as.",
    "scheduling.imagePullSecrets": "Names of Secrets used to pull the images.",
    "scheduling.backoffLimit": "Retries of a failed stage pod before the stage fails (Job backoffLimit).",
    "scheduling.stages": "Per-stage image, resources and GPUs.",
    "scheduling.stages.*": "Pod settings of this stage.",
    "scheduling.stages.*.image": "Image of this stage; default: the operator's image.",
    "scheduling.stages.*.backoffLimit": "Retries of this stage's pod; default: scheduling.backoffLimit.",
    "scheduling.stages.*.activeDeadlineSeconds": "Fail the stage when it runs longer than this.",
}

# CEL rules (x-kubernetes-validations) by wire path below `spec`. Each mirrors a validator of the
# pydantic model (the same message) or makes a field immutable (transition rule, uses oldSelf).
RULES: dict[str, list[dict[str, Any]]] = {
    "corpus": [{
        "rule": "!has(self.existingClaim) || !has(self.configMap)",
        "message": "set at most one of existingClaim and configMap",
        "fieldPath": ".configMap",
    }],
    "corpus.chunking": [{
        "rule": "self.overlapTokens < self.maxTokens",
        "message": "overlapTokens must be smaller than maxTokens",
        "fieldPath": ".overlapTokens",
    }],
    "sdg": [{
        "rule": "self.backend != 'openai' || has(self.openai)",
        "message": "backend 'openai' needs the sdg.openai block (at least baseURL and model)",
        "fieldPath": ".openai",
        "reason": "FieldValueRequired",
    }],
    "split": [{
        "rule": "self.validation + self.test < 0.9",
        "message": "validation + test leaves too little for training (must be < 0.9)",
    }],
    "mining": [{
        "rule": "self.candidates >= self.negatives",
        "message": "candidates must be >= negatives",
        "fieldPath": ".candidates",
    }],
    "training.batchSize": [{
        "rule": "type(self) == string ? self == 'auto' : self >= 2",
        "message": "batchSize must be 'auto' or an integer >= 2",
    }],
    "evaluation": [{
        "rule": "int(self.gate.metric.split('@')[1]) in self.k",
        "message": "the gate metric's k (e.g. 10 in ndcg@10) must be one of evaluation.k",
        "fieldPath": ".gate.metric",
    }],
    # Immutable after creation.
    "baseModel": [{
        "rule": "self.name == oldSelf.name",
        "message": "baseModel.name is immutable: a different base model is a new fine-tune (create a new "
                   "EmbeddingFinetune)",
        "fieldPath": ".name",
        "reason": "FieldValueForbidden",
    }, {
        "rule": "(has(self.existingClaim) ? self.existingClaim : '') == "
                "(has(oldSelf.existingClaim) ? oldSelf.existingClaim : '')",
        "message": "baseModel.existingClaim is immutable",
        "fieldPath": ".existingClaim",
        "reason": "FieldValueForbidden",
    }],
    "workspace": [{
        "rule": "(has(self.existingClaim) ? self.existingClaim : '') == "
                "(has(oldSelf.existingClaim) ? oldSelf.existingClaim : '')",
        "message": "workspace.existingClaim is immutable",
        "fieldPath": ".existingClaim",
        "reason": "FieldValueForbidden",
    }, {
        "rule": "self.size == oldSelf.size",
        "message": "workspace.size is immutable",
        "fieldPath": ".size",
        "reason": "FieldValueForbidden",
    }, {
        "rule": "(has(self.storageClassName) ? self.storageClassName : '') == "
                "(has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')",
        "message": "workspace.storageClassName is immutable",
        "fieldPath": ".storageClassName",
        "reason": "FieldValueForbidden",
    }, {
        "rule": "self.accessModes == oldSelf.accessModes",
        "message": "workspace.accessModes is immutable",
        "fieldPath": ".accessModes",
        "reason": "FieldValueForbidden",
    }],
}

# CRD-only bounds that keep the CEL rules' estimated cost inside the API server's budget.
EXTRA_SCHEMA: dict[str, dict[str, Any]] = {
    "evaluation.k": {"maxItems": 64, "items": {"type": "integer", "minimum": 1, "maximum": 1000}},
    "evaluation.gate.metric": {"maxLength": 32},
    "workspace.accessModes": {"maxItems": 3},
}

# Fields that are immutable after creation (documented in operator/README.md; enforced by RULES).
IMMUTABLE_FIELDS = ("baseModel.name", "baseModel.existingClaim", "workspace.size", "workspace.storageClassName",
                    "workspace.accessModes", "workspace.existingClaim")

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


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, default_value: Any, *,
             has_default: bool) -> dict[str, Any]:
    """One JSON-schema node -> one structural OpenAPI v3 node. `path` is the wire path below spec."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    description = node.get("description")
    nullable = False

    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if not _is_null(o)]
        nullable = len(non_null) < len(options)
        types = sorted({o.get("type") for o in non_null})
        if len(non_null) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            merged.update(non_null[0])
            if description:
                merged["description"] = description
            node = merged
        elif types == ["integer", "string"]:
            # int | Literal['auto'] (or any int-or-string): the allowed values are a CEL rule.
            node = {k: v for k, v in node.items() if k != "anyOf"}
            node["type"] = "int-or-string"
        else:
            raise SchemaError(f"spec.{path}: cannot express anyOf {types} in a structural schema")

    typ = node.get("type")
    if typ is None and "const" in node:
        typ = "string"
    if description:
        out["description"] = " ".join(description.split())

    if typ == "int-or-string":
        out["x-kubernetes-int-or-string"] = True
        if node.get("default") is not None:
            out["default"] = node["default"]
    elif typ == "object":
        out["type"] = "object"
        props = node.get("properties")
        addl = node.get("additionalProperties")
        if props:
            out["properties"] = {}
            sub_defaults = default_value if isinstance(default_value, dict) else {}
            required = set(node.get("required", []))
            for key, sub in props.items():
                sub_path = f"{path}.{key}" if path else key
                out["properties"][key] = _convert(
                    sub, defs, sub_path, sub_defaults.get(key), has_default=key in sub_defaults)
            if required:
                out["required"] = sorted(required)
        elif "propertyNames" in node and isinstance(addl, dict):
            # dict[Literal[...], Model]: a fixed set of keys -> explicit properties.
            keys = node["propertyNames"].get("enum") or []
            value_schema = _convert(addl, defs, f"{path}.*", None, has_default=False)
            out["properties"] = {}
            for key in keys:
                v = copy.deepcopy(value_schema)
                out["properties"][key] = v
        elif isinstance(addl, dict) and addl:
            out["additionalProperties"] = _convert(addl, defs, f"{path}.*", None, has_default=False)
        else:
            # dict[str, Any]: a Kubernetes type (resources, affinity, toleration, env var) kept as is.
            out["x-kubernetes-preserve-unknown-fields"] = True
        if has_default and isinstance(default_value, dict) and default_value and props:
            # The whole default block (not `{}`): the API server checks defaults against the CEL rules
            # without defaulting them first.
            out["default"] = copy.deepcopy(default_value)
    elif typ == "array":
        out["type"] = "array"
        out["items"] = _convert(node.get("items", {}), defs, path, None, has_default=False)
        for k_json, k_oa in (("minItems", "minItems"), ("maxItems", "maxItems")):
            if k_json in node:
                out[k_oa] = node[k_json]
        if has_default and isinstance(default_value, list) and default_value:
            out["default"] = copy.deepcopy(default_value)
    elif typ in ("string", "integer", "number", "boolean"):
        out["type"] = typ
        if "const" in node:
            out["enum"] = [node["const"]]
        if "enum" in node:
            out["enum"] = list(node["enum"])
        for key in ("pattern", "minLength", "maxLength", "format"):
            if key in node:
                out[key] = node[key]
        for key in ("minimum", "maximum"):
            if key in node:
                out[key] = node[key]
        if "exclusiveMinimum" in node:
            out["minimum"] = node["exclusiveMinimum"]
            out["exclusiveMinimum"] = True
        if "exclusiveMaximum" in node:
            out["maximum"] = node["exclusiveMaximum"]
            out["exclusiveMaximum"] = True
        if "default" in node and node["default"] is not None:
            out["default"] = node["default"]
    elif typ is None and not node:
        out["x-kubernetes-preserve-unknown-fields"] = True
    else:
        raise SchemaError(f"spec.{path}: unsupported JSON-schema node {node}")

    if nullable:
        out["nullable"] = True
    if path in EXTRA_SCHEMA and not path.endswith(".*"):
        out.update(copy.deepcopy(EXTRA_SCHEMA[path]))
    if "description" not in out and path in DESCRIPTIONS:
        out["description"] = DESCRIPTIONS[path]
    if path in RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(RULES[path])
    return _ordered(out)


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
                    "gate": {"description": "Quality gate outcome (passed, failed).", "type": "string"},
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
          "# tests/test_crd.py fails when this file is stale.\n")


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(argv, prog="eft crd", description="print the EmbeddingFinetune CRD generated from "
                               "the spec model", path=CRD_FILE, shown=str(CRD_FILE.relative_to(REPO)),
                               render=render, rewrite="eft crd --write")


if __name__ == "__main__":
    raise SystemExit(main())
