"""The EmbeddingFinetune CRD: generated from the spec model, committed, structural, and enforced by a real
API server (schema, CEL cross-field rules, immutable fields, defaults, printer columns, kubectl explain)."""

from __future__ import annotations

import copy

import pytest
import yaml

from eft import crd
from eft.spec import EmbeddingFinetuneSpec, SpecError, parse_document

FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "propertyNames"}


def _root():
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node, path="spec"):
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


def test_committed_crd_is_up_to_date():
    assert crd.CRD_FILE.exists(), "run `eft crd --write`"
    assert crd.CRD_FILE.read_text() == crd.render(), "crds/embeddingfinetune.yaml is stale: run `eft crd --write`"


def test_cli_prints_the_crd(capsys):
    from eft.cli import main

    assert main(["crd"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["metadata"]["name"] == "embeddingfinetunes.eft.ai"
    assert main(["crd", "--check"]) == 0


def test_names_and_version():
    c = crd.build_crd()
    s = c["spec"]
    assert s["group"] == "eft.ai" and s["scope"] == "Namespaced"
    assert s["names"] == {"kind": "EmbeddingFinetune", "listKind": "EmbeddingFinetuneList",
                          "plural": "embeddingfinetunes", "singular": "embeddingfinetune", "shortNames": ["eft"],
                          "categories": ["eft", "ml"]}
    v = s["versions"][0]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"] and v["subresources"] == {"status": {}}
    cols = [c["name"] for c in v["additionalPrinterColumns"]]
    assert cols == ["Phase", "Stage", "Base nDCG@10", "Tuned nDCG@10", "Endpoint", "Age"]


def test_schema_is_structural_and_documented():
    spec = _root()["properties"]["spec"]
    for path, node in _walk(spec):
        assert not FORBIDDEN_KEYS & set(node), (path, FORBIDDEN_KEYS & set(node))
        assert node.get("additionalProperties") is not False, path
        assert ("type" in node or node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields")), path
        assert not ("properties" in node and isinstance(node.get("additionalProperties"), dict)), path
        if not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_schema_mapping_details():
    spec = _root()["properties"]["spec"]["properties"]
    tr = spec["training"]["properties"]
    assert tr["batchSize"]["x-kubernetes-int-or-string"] is True and tr["batchSize"]["default"] == "auto"
    assert tr["batchSize"]["x-kubernetes-validations"]
    assert tr["learningRate"]["minimum"] == 0 and tr["learningRate"]["exclusiveMinimum"] is True
    assert tr["negatives"]["nullable"] is True and tr["negatives"]["maximum"] == 64
    assert spec["baseModel"]["properties"]["pooling"]["enum"] == ["mean", "cls", "lasttoken"]
    assert spec["baseModel"]["properties"]["hfTokenSecret"]["nullable"] is True
    assert spec["baseModel"]["properties"]["hfTokenSecret"]["required"] == ["key", "name"]
    sched = spec["scheduling"]["properties"]
    assert sched["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert sched["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert sched["nodeSelector"]["additionalProperties"] == {"type": "string"}
    assert set(sched["stages"]["properties"]) == {"ingest", "sdg", "prepare", "train", "evaluate", "export"}
    assert spec["workspace"]["properties"]["accessModes"]["items"]["enum"] == [
        "ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]
    assert _root()["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63


def test_defaults_match_the_model():
    """The API server's defaults (nested blocks included) are exactly the pydantic defaults."""
    spec_schema = _root()["properties"]["spec"]

    def apply(node, value):  # the API server's defaulting algorithm, simplified
        if isinstance(value, dict):
            for k, sub in (node.get("properties") or {}).items():
                if k not in value and "default" in sub:
                    value[k] = copy.deepcopy(sub["default"])
                if k in value:
                    apply(sub, value[k])
        return value

    defaulted = apply({"properties": {"spec": spec_schema}}, {})["spec"]
    assert EmbeddingFinetuneSpec.model_validate(defaulted) == EmbeddingFinetuneSpec()
    assert defaulted["training"]["preset"] == "measured" and defaulted["corpus"]["chunking"]["maxTokens"] == 256
    # what the preset fills stays unset in the stored object, so a later change of preset takes effect
    assert not {"epochs", "learningRate", "temperature", "maxRowsPerQuestion"} & set(defaulted["training"])
    partial = apply({"properties": {"spec": spec_schema}}, {"spec": {"corpus": {"path": "s3://b/x"}}})["spec"]
    assert partial["corpus"]["chunking"]["overlapTokens"] == 32 and partial["corpus"]["path"] == "s3://b/x"


def test_cel_rules_mirror_the_model_validators():
    spec = _root()["properties"]["spec"]["properties"]
    rules = {p: [r["rule"] for r in n.get("x-kubernetes-validations", [])] for p, n in _walk(
        {"properties": spec}, "spec")}
    assert any("overlapTokens < self.maxTokens" in r for r in rules["spec.corpus.chunking"])
    assert any("self.validation + (has(self.test) ? self.test : 0.1) < 0.9" in r for r in rules["spec.split"])
    assert any("self.split.test > 0.0" in r["rule"] for r in _root()["properties"]["spec"]["x-kubernetes-validations"])
    assert any("candidates >= self.negatives" in r for r in rules["spec.mining"])
    assert any("has(self.openai)" in r for r in rules["spec.sdg"])
    assert any("existingClaim" in r and "configMap" in r for r in rules["spec.corpus"])
    assert any("in self.k" in r for r in rules["spec.evaluation"])
    immut = [r for p in ("spec.workspace", "spec.baseModel") for r in rules[p] if "oldSelf" in r]
    assert len(immut) == len(crd.IMMUTABLE_FIELDS)
    # the list operator/README.md documents
    assert set(crd.IMMUTABLE_FIELDS) == {"baseModel.name", "baseModel.existingClaim", "workspace.size",
                                         "workspace.storageClassName", "workspace.accessModes",
                                         "workspace.existingClaim"}


# Validators the CRD restates with schema bounds instead of a CEL rule, and those that check nothing (they fill
# unset fields: the operator and the stages fill them when they load the stored object).
SCHEMA_BOUND_VALIDATORS = {("EvaluationSpec", "_valid_k"), ("TrainingSpec", "_fill_from_preset")}


def _validators(block) -> set[str]:
    d = block.__pydantic_decorators__
    return set(d.model_validators) | set(d.field_validators)


def _spec_node(path):
    node = _root()["properties"]["spec"]
    for part in filter(None, path.replace("[]", ".[]").split(".")):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def test_every_model_validator_has_its_cel_rule_on_its_block():
    """One CEL rule per pydantic validator (declared next to it in eft/spec.py), on the CRD node of its block."""
    for path, block in crd.spec_blocks():
        mirrored = [r.mirrors for r in block.cel_rules if r.mirrors]
        assert len(mirrored) == len(set(mirrored)), (block.__name__, mirrored)
        expected = {v for v in _validators(block) if (block.__name__, v) not in SCHEMA_BOUND_VALIDATORS}
        assert set(mirrored) == expected, f"{block.__name__}: validators {expected}, CEL rules mirror {mirrored}"
        for r in block.cel_rules:
            assert bool(r.mirrors) != bool(r.immutable), r
            if r.immutable:
                assert "oldSelf" in r.rule and r.immutable == f"{path}{r.field_path}", r
            if ".*" in path:
                continue  # a map value's node is copied per key; none declares rules
            node = _spec_node(path)
            if r.field:
                node = node["properties"][block.model_fields[r.field].alias]
            assert r.crd() in node.get("x-kubernetes-validations", []), (path, r)
    k = _spec_node("evaluation.k")["items"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)  # EvaluationSpec._valid_k


def test_every_mirrored_rule_has_an_invalid_case():
    """Each mirrored rule is exercised by an INVALID case that pydantic rejects too (below) and the real API
    server rejects at the rule's field path (tests/apiserver/test_crd.py)."""
    invalid_paths = {field for _, field, _ in INVALID}
    for path, block in crd.spec_blocks():
        for r in block.cel_rules:
            if r.mirrors:
                field = "." + block.model_fields[r.field].alias if r.field else ""
                # a rule on a list's items is reported at the first item, where the INVALID cases put it
                where = f"{'spec.' + path if path else 'spec'}{field}{r.field_path or ''}".replace("[]", "[0]")
                assert where in invalid_paths, f"{block.__name__}.{r.mirrors}: add an INVALID case for {where}"


# ----------------------------------------------------------------------------- on the API server

VALID = {"corpus": {"path": "docs/"}, "training": {"batchSize": 32}}

# (spec patch, the field path the API server must name, pydantic rejects it too)
INVALID = [
    ({"training": {"epochs": 0}}, "spec.training.epochs", True),
    ({"training": {"batchSize": 1}}, "spec.training.batchSize", True),
    ({"training": {"batchSize": "big"}}, "spec.training.batchSize", True),
    ({"training": {"learningRate": 0}}, "spec.training.learningRate", True),
    ({"training": {"maxSeqLength": 512}}, "spec.training.maxSeqLength", True),
    ({"sdg": {"backend": "gpt"}}, "spec.sdg.backend", True),
    ({"sdg": {"backend": "openai"}}, "spec.sdg.openai", True),
    ({"corpus": {"chunking": {"maxTokens": 64, "overlapTokens": 64}}}, "spec.corpus.chunking.overlapTokens", True),
    ({"corpus": {"existingClaim": "a", "configMap": "b"}}, "spec.corpus.configMap", True),
    ({"split": {"validation": 0.5, "test": 0.4}}, "spec.split", True),
    ({"split": {"by": "row"}}, "spec.split.by", True),
    ({"split": {"test": 0}}, "spec.split.test", True),  # no synthetic test split, and the gate would read it
    ({"evaluation": {"gate": {"dataset": "human"}}}, "spec.evaluation.gate.dataset", True),
    ({"queries": {"path": "q.jsonl", "existingClaim": "a", "configMap": "b"}}, "spec.queries.configMap", True),
    ({"queries": {"existingClaim": "a"}}, "spec.queries.path", True),
    ({"queries": {"path": "q.jsonl", "use": "sometimes"}}, "spec.queries.use", True),
    ({"evaluation": {"datasets": [{"name": "seenInTraining", "path": "/data"}]}}, "spec.evaluation.datasets[0]", True),
    ({"mining": {"negatives": 10, "candidates": 5}}, "spec.mining.candidates", True),
    ({"evaluation": {"k": [1, 5], "gate": {"metric": "ndcg@10"}}}, "spec.evaluation.gate.metric", True),
    ({"evaluation": {"gate": {"metric": "bleu@10"}}}, "spec.evaluation.gate.metric", True),
    ({"workspace": {"size": "lots"}}, "spec.workspace.size", True),
    ({"workspace": {"accessModes": ["ReadOnlyMany"]}}, "spec.workspace.accessModes[0]", True),
    ({"serving": {"replicas": -1}}, "spec.serving.replicas", True),
    ({"serving": {"autoscaling": {"enabled": True}}}, "spec.serving.resources", True),
    ({"serving": {"autoscaling": {"enabled": True}, "resources": {"limits": {"cpu": "1"}}}},
     "spec.serving.resources", True),
    ({"serving": {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}}, "spec.serving.autoscaling.minReplicas",
     True),
    ({"serving": {"networkPolicy": {"allowedClients": {"matchLabels": {"app": "not a label"}}}}},
     "spec.serving.networkPolicy.allowedClients.matchLabels.app", True),
    ({"scheduling": {"stages": {"train": {"gpus": 99}}}}, "spec.scheduling.stages.train.gpus", True),
]


def test_invalid_cases_are_invalid_for_pydantic_too():
    for patch, _, pyd in INVALID:
        with pytest.raises(SpecError):
            parse_document({"spec": _merge(VALID, patch)})
    parse_document({"spec": VALID})


def _merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
