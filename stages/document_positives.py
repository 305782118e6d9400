"""Which chunks of a document-level label train as positives (spec.queries.documentPositives).

A supplied label may name a whole document that ingest cut into several chunks (sdg keeps the chunks of one
label together as the question's ``positiveGroups``). 'everyChunk' (the default) trains on all of them.
'bestChunk' trains each such group on the chunk the base model scores highest for the query, the max-passage
reading of a document label, for long documents whose other parts may not mention what the label is about;
its other chunks stay positives for scoring and are never negatives. On NFCorpus, abstracts cut in about two
chunks on one topic, bestChunk measured worse (+7.9% nDCG@10 on the human test queries against +9.3%, 2 CPU
cores, one run each: bench/results/2026-12-07-cpu-nfcorpus-best-chunk-positives.txt), hence the default.
Questions without groups (generated ones, labels naming one chunk) keep every positive either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from eft.spec import QueriesSpec

RULES = get_args(QueriesSpec.model_fields["document_positives"].annotation)  # the spec's values, one source


@dataclass
class Narrowing:
    """What the rule did over all train questions, for prepare/stats.json."""

    rule: str
    groups: int = 0  # labels that named several chunks
    left_out: int = 0  # chunks of those labels that do not train (still positives for scoring)

    def describe(self) -> dict:
        return {"rule": self.rule, "labelsOverSeveralChunks": self.groups, "chunksNotTrainedOn": self.left_out}


def trained_positive_rows(question: dict, row_of: dict[str, int], q_vec: np.ndarray, p_emb: np.ndarray,
                          tally: Narrowing) -> list[int]:
    """Corpus rows of the positives `question` trains on under `tally.rule`, in its positives' order; `tally`
    counts what the rule left out.

    `q_vec` and `p_emb`: the base model's normalised embeddings of the question and of every corpus row."""
    if tally.rule not in RULES:
        raise ValueError(f"unknown documentPositives rule {tally.rule!r}; expected one of {', '.join(sorted(RULES))}")
    every = [row_of[p] for p in question["positives"] if p in row_of]
    groups = question.get("positiveGroups")
    if tally.rule == "everyChunk" or not groups:
        return every
    positive = set(every)
    keep: set[int] = set()
    grouped: set[int] = set()
    for group in groups:
        rows = [row_of[p] for p in group if row_of.get(p) in positive]  # chunks prepare dropped never train
        grouped.update(rows)
        if len(rows) > 1:
            tally.groups += 1
            keep.add(rows[int(np.argmax(p_emb[rows] @ q_vec))])
        else:
            keep.update(rows)
    keep.update(r for r in every if r not in grouped)  # a positive outside every group trains as before
    trained = [r for r in every if r in keep]
    tally.left_out += len(every) - len(trained)
    return trained
