"""Grouping chunks into bundles of 1..max_hops related chunks, the unit of one LLM generation call.

Bundles partition the selected chunks (each chunk is sent to the LLM once, as part of one bundle):
the bundle's anchor (taken in a seeded order) is joined first by its neighbours in the same document
(same metadata.source, adjacent metadata.position), then by the most similar unassigned chunks by
base-model cosine similarity (at least MIN_SIMILARITY, so unrelated chunks are not forced together).
Everything is deterministic for a given seed and chunk list.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable

import numpy as np

BUNDLE_VERSION = "1"
# Below this cosine two chunks are not considered related enough to share a bundle.
MIN_SIMILARITY = 0.3
# Nearest neighbours kept per chunk when filling bundles by similarity.
NEIGHBOURS = 16


def select_chunks(chunks: list[dict[str, Any]], max_chunks: int | None, seed: int) -> list[dict[str, Any]]:
    """At most max_chunks chunks: a seeded sample spread over the corpus, kept in corpus order."""
    usable = [c for c in chunks if str(c.get("text") or "").strip()]
    if max_chunks is None or len(usable) <= max_chunks:
        return usable
    keep = sorted(random.Random(seed).sample(range(len(usable)), max_chunks))
    return [usable[i] for i in keep]


def _source(c: dict[str, Any]) -> str | None:
    md = c.get("metadata") or {}
    s = md.get("source")
    return None if s is None else str(s)


def _position(c: dict[str, Any]) -> int | None:
    md = c.get("metadata") or {}
    try:
        return int(md["position"])
    except (KeyError, TypeError, ValueError):
        return None


def nearest_neighbours(emb: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k other rows by inner product (rows are unit vectors), ties broken by index. (idx, sims)."""
    n = emb.shape[0]
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, sims
    for s in range(0, n, block):
        e = min(n, s + block)
        m = emb[s:e] @ emb.T
        m[np.arange(e - s), np.arange(s, e)] = -np.inf
        part = np.argpartition(-m, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (e - s, 1))
        vals = np.take_along_axis(m, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)  # by similarity, then index
        top = np.take_along_axis(part, order, axis=1)[:, :k]
        idx[s:e] = top
        sims[s:e] = np.take_along_axis(m, top, axis=1)
    return idx, sims


def build_bundles(
    chunks: list[dict[str, Any]],
    max_hops: int,
    seed: int,
    embed: Callable[[list[str]], np.ndarray] | None,
    min_similarity: float = MIN_SIMILARITY,
) -> list[list[int]]:
    """Partition chunk indices into bundles of 1..max_hops; anchor first, then partners as added."""
    n = len(chunks)
    if n == 0:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if max_hops <= 1 or n == 1:
        return [[i] for i in order]

    by_pos: dict[tuple[str, int], int] = {}
    for i, c in enumerate(chunks):
        src, pos = _source(c), _position(c)
        if src is not None and pos is not None:
            by_pos.setdefault((src, pos), i)

    nn_idx = nn_sim = emb = None
    if embed is not None:
        emb = np.asarray(embed([_embed_text(c) for c in chunks]), dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
        nn_idx, nn_sim = nearest_neighbours(emb, NEIGHBOURS)

    assigned = [False] * n
    bundles: list[list[int]] = []
    for a in order:
        if assigned[a]:
            continue
        bundle = [a]
        assigned[a] = True
        while len(bundle) < max_hops:
            nxt = _adjacent(bundle, chunks, by_pos, assigned, emb)
            if nxt is None and nn_idx is not None:
                nxt = _most_similar(bundle, nn_idx, nn_sim, assigned, emb, min_similarity)
            if nxt is None:
                break
            bundle.append(nxt)
            assigned[nxt] = True
        bundles.append(bundle)
    return bundles


def _embed_text(c: dict[str, Any]) -> str:
    title = str(c.get("title") or "").strip()
    text = str(c.get("text") or "").strip()
    return f"{title}\n{text}" if title else text


def _adjacent(bundle: list[int], chunks, by_pos, assigned, emb) -> int | None:
    """An unassigned chunk right before/after a bundle member in the same document."""
    cands = []
    for m in bundle:
        src, pos = _source(chunks[m]), _position(chunks[m])
        if src is None or pos is None:
            continue
        for d in (1, -1):
            j = by_pos.get((src, pos + d))
            if j is not None and not assigned[j] and j not in cands:
                cands.append(j)
    if not cands:
        return None
    if emb is None or len(cands) == 1:
        return cands[0]
    sims = emb[cands] @ emb[bundle[0]]
    return cands[int(np.argmax(sims))]  # first of equals: deterministic


def _most_similar(bundle, nn_idx, nn_sim, assigned, emb, min_similarity) -> int | None:
    """The unassigned chunk closest to the bundle (mean cosine to its members) among members' neighbours."""
    cands = sorted({int(j) for m in bundle for j, s in zip(nn_idx[m], nn_sim[m])
                    if not assigned[int(j)] and s >= min_similarity})
    if not cands:
        return None
    sims = (emb[cands] @ emb[bundle].T).mean(axis=1)
    best = int(np.argmax(sims))
    return cands[best] if sims[best] >= min_similarity else None


def bundle_id(chunk_ids: list[str], config_key: str) -> str:
    """Stable id of a bundle: its chunk ids in order plus everything that changes what the LLM is asked."""
    blob = json.dumps([config_key, chunk_ids], separators=(",", ":"), ensure_ascii=False)
    return "b-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def selection_key(chunks: list[dict[str, Any]], max_hops: int, seed: int, model_key: str) -> str:
    """What the bundling depends on, to reuse a saved bundling after a crash."""
    h = hashlib.sha256()
    h.update(json.dumps([BUNDLE_VERSION, max_hops, seed, model_key, MIN_SIMILARITY]).encode())
    for c in chunks:
        h.update(str(c["_id"]).encode() + b"\0")
        h.update(hashlib.sha256(str(c.get("text") or "").encode()).digest())
    return h.hexdigest()[:24]
