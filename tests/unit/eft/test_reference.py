"""docs/reference.md: one row per spec field, every row described, with the text the CRD carries (so the
reference and `kubectl explain` agree; tests/apiserver/test_crd.py checks the latter on a real API server)."""

from __future__ import annotations

from eft import crd
from eft.reference import rows
from eft.spec import EmbeddingFinetuneSpec


def reference_descriptions() -> dict[str, str]:
    """Reference path (spec.a.b, `[]` list items, `.*` map values) -> its description, unescaped."""
    return {path: desc.replace("\\|", "|") for path, _, _, desc in rows(EmbeddingFinetuneSpec)}


def crd_nodes(path: str) -> list[dict]:
    """The CRD schema nodes of a reference path: one, or one per key of a fixed-key map (`.*`)."""
    root = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = [root]
    for part in path.replace("[]", ".[]").split("."):
        if part == "[]":
            nodes = [n["items"] for n in nodes]
        elif part == "*":
            nodes = [v for n in nodes for v in (n.get("properties") or {}).values()] or [
                n["additionalProperties"] for n in nodes]
        else:
            nodes = [n["properties"][part] for n in nodes]
    return nodes


def explain_path(path: str) -> str:
    """The `kubectl explain` argument of a reference path (a list's fields are explained through the list,
    a stage map's through one of its stages)."""
    return "eft." + path.replace("[]", "").replace(".*", ".train")


def test_every_reference_row_has_a_description():
    undescribed = [path for path, desc in reference_descriptions().items() if not desc.strip()]
    assert not undescribed, f"give these fields a Field(description=...) in eft/spec.py: {undescribed}"


def test_reference_rows_carry_the_crd_descriptions():
    differ = []
    for path, desc in reference_descriptions().items():
        for node in crd_nodes(path):
            if node.get("description") != desc:
                differ.append((path, desc, node.get("description")))
    assert not differ, "\n".join(map(str, differ))


def test_explain_path():
    assert explain_path("spec.evaluation.datasets[].name") == "eft.spec.evaluation.datasets.name"
    assert explain_path("spec.scheduling.stages.*.image") == "eft.spec.scheduling.stages.train.image"
    assert len(crd_nodes("spec.scheduling.stages.*.image")) == 6
