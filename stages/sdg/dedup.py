"""Near-duplicate question removal under the base model (greedy, in input order)."""

from __future__ import annotations

import numpy as np


def dedup_questions(questions: list[dict], embeddings: np.ndarray, threshold: float) -> tuple[list[dict], int]:
    """Keep a question unless its cosine to an already kept one is >= threshold.

    Embeddings must be L2-normalised. An exact inner-product index holds the kept set so each check is one inner-product search.
    """
    from eft.vector_index import flat_ip_index

    if not questions:
        return [], 0
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = flat_ip_index(emb.shape[1])
    kept: list[dict] = []
    dropped = 0
    for q, v in zip(questions, emb):
        v = v[None, :]
        if index.ntotal:
            score, _ = index.search(v, 1)
            if score[0, 0] >= threshold:
                dropped += 1
                continue
        index.add(v)
        kept.append(q)
    return kept, dropped
