"""Hard-negative mining with a safety margin against false negatives.

For a question with positives P and candidate passages C (nearest by the base model, positives excluded),
a candidate c is kept only when

    score(c) <= min_p score(p) - |min_p score(p)| * (1 - margin)

i.e. it must score clearly below the *weakest* positive. Using |.| keeps the rule meaningful when the
weakest positive scores below zero (then the bound moves further down, never up). Survivors are taken
hardest first. When many positives make the bound low (NFCorpus has ~38 relevant documents per query),
the search widens past the first `candidates` hits so the question still gets negatives from just below
the bound instead of none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def margin_threshold(min_positive_score: float, margin: float) -> float:
    return min_positive_score - abs(min_positive_score) * (1.0 - margin)


@dataclass
class MinedQuestion:
    negatives: list[int]  # corpus row indices, hardest first
    threshold: float
    min_positive: float
    filtered: int  # candidates dropped by the margin
    widened: bool = False


@dataclass
class MiningStats:
    questions: int = 0
    full: int = 0
    short: int = 0
    widened: int = 0
    filtered_candidates: int = 0
    negatives_histogram: dict[int, int] = field(default_factory=dict)


def mine(
    query_emb: np.ndarray,
    passage_emb: np.ndarray,
    positives: list[list[int]],
    n_negatives: int,
    candidates: int,
    margin: float,
    excluded: list[set[int]] | None = None,
    max_search: int = 2000,
    index=None,
) -> list[MinedQuestion]:
    """Mine negatives for each query. positives[i]: corpus row indices of query i's positives;
    excluded[i]: further rows never to use (e.g. exact-text duplicates of a positive)."""
    from eft.vector_index import flat_ip_index

    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    p = np.ascontiguousarray(passage_emb, dtype=np.float32)
    if index is None:
        index = flat_ip_index(p.shape[1])
        index.add(p)
    n_corpus = p.shape[0]
    out: list[MinedQuestion | None] = [None] * len(q)
    pending = list(range(len(q)))
    k = min(n_corpus, candidates + max((len(x) for x in positives), default=0))
    first_round = True
    while pending:
        scores, ids = index.search(q[pending], k)
        still: list[int] = []
        for row, qi in enumerate(pending):
            pos = positives[qi]
            min_pos = float(np.min(p[pos] @ q[qi])) if pos else 0.0
            thr = margin_threshold(min_pos, margin)
            banned = set(pos) | (excluded[qi] if excluded else set())
            ranked = [(float(s), int(i)) for s, i in zip(scores[row], ids[row]) if i >= 0 and int(i) not in banned]
            window = ranked[:candidates] if first_round else ranked
            safe = [i for s, i in window if s <= thr]
            filtered = sum(1 for s, _ in window if s > thr)
            if len(safe) >= n_negatives or k >= min(n_corpus, max_search) or n_negatives == 0:
                out[qi] = MinedQuestion(safe[:n_negatives], thr, min_pos, filtered, widened=not first_round)
            else:
                still.append(qi)
        pending = still
        k = min(n_corpus, max_search, k * 4)
        first_round = False
    return [m for m in out if m is not None]
