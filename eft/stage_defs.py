"""The stages of the recipe: their order, what each reads from upstream and which spec sections it depends on.

One table, read by the local runner, the operator's plan and job builders, and the fingerprints.
"""

from __future__ import annotations

from dataclasses import dataclass

from eft.spec import STAGES


@dataclass(frozen=True)
class StageDef:
    name: str
    upstream: tuple[str, ...]
    # Spec sections (dotted snake_case) whose change makes this stage's output stale.
    sections: tuple[str, ...]
    gpu: bool = False
    # Sections that matter only in a cluster: where the stage's external inputs live (a claim, a ConfigMap).
    # Locally the stage hashes those inputs themselves (input_fingerprint), wherever they come from.
    cluster_sections: tuple[str, ...] = ()

    def all_sections(self, cluster: bool) -> tuple[str, ...]:
        return self.sections + (self.cluster_sections if cluster else ())

    @property
    def module(self) -> str:
        return f"eft.stages.{self.name}"


_PREFIX = ("base_model.name", "base_model.revision", "base_model.pooling", "base_model.max_seq_length")

STAGE_DEFS: dict[str, StageDef] = {
    d.name: d
    for d in (
        StageDef("ingest", (), ("corpus.path", "corpus.include", "corpus.exclude", "corpus.chunking", *_PREFIX),
                 cluster_sections=("corpus.existing_claim", "corpus.config_map", "base_model.existing_claim")),
        StageDef("sdg", ("ingest",), ("sdg", "queries.path", "queries.split", "queries.use", *_PREFIX),
                 cluster_sections=("queries.existing_claim", "queries.config_map")),
        StageDef("prepare", ("ingest", "sdg"), ("split", "test_fraction", "mining", "queries.document_positives", "base_model"),
                 gpu=True),
        StageDef("train", ("prepare",), ("training", "mining.negatives", "base_model"), gpu=True),
        StageDef("evaluate", ("prepare", "train"), ("evaluation", "base_model"), gpu=True),
        StageDef("export", ("prepare", "train", "evaluate"), ("export", "base_model"), gpu=True),
    )
}
assert tuple(STAGE_DEFS) == STAGES
