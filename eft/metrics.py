"""Retrieval quality: exact cosine search over a BEIR folder and BEIR / pytrec_eval scoring.

Shared by the train stage (validation nDCG@10 on the dev split) and the evaluate stage (base vs tuned).

- Documents are embedded as ``passage_prefix + eft.textutil.passage_text(row)`` (title + " " + text),
  queries as ``query_prefix + text``; embeddings are L2-normalised, so inner product = cosine.
- Search is exact (no index approximation): eft.vector_index's flat inner-product index.
- Scores come from beir's ``EvaluateRetrieval.evaluate`` (pytrec_eval: nDCG with linear gains, MAP@k
  as map_cut, Recall@k, P@k); names are returned lower-case as the gate spells them: ``ndcg@10``,
  ``map@10``, ``recall@10``, ``precision@10``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("eft.metrics")

# beir's result keys -> the names used in specs, metrics.json and the gate.
_BEIR_TO_OURS = {"NDCG": "ndcg", "MAP": "map", "Recall": "recall", "P": "precision"}
METRIC_ORDER = ("ndcg", "recall", "map", "precision")


class DatasetError(ValueError):
    """A BEIR folder or split that cannot be evaluated; the message is one line for humans."""


@dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text (only queries that have judgements)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}

    @property
    def num_judgements(self) -> int:
        return sum(len(v) for v in self.qrels.values())


def has_split(path: str | Path, split: str) -> bool:
    """True when qrels/<split>.tsv exists and holds at least one judgement."""
    f = Path(path) / "qrels" / f"{split}.tsv"
    if not f.is_file():
        return False
    with open(f, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip()) > 1


def load_beir(path: str | Path, split: str) -> BeirData:
    """Load one split of a BEIR folder with beir's GenericDataLoader, with one-line errors for bad input."""
    from unittest import mock

    from beir.datasets import data_loader
    from beir.datasets.data_loader import GenericDataLoader

    root = Path(path)
    for rel in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / rel).is_file():
            raise DatasetError(f"{root}: missing {rel} (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    if not has_split(root, split):
        raise DatasetError(f"{root}: split '{split}' has no judgements (qrels/{split}.tsv is empty)")
    # Queries named in qrels but absent from queries.jsonl would make the loader raise KeyError; check first.
    known = _query_ids(root / "queries.jsonl")
    missing = sorted({row[0] for row in _qrels_rows(root / "qrels" / f"{split}.tsv")} - known)
    if missing:
        raise DatasetError(f"{root}: qrels/{split}.tsv names {len(missing)} queries missing from queries.jsonl "
                           f"(first: {missing[0]})")
    try:
        # beir draws a progress bar over the corpus file; keep stage logs readable.
        with mock.patch.object(data_loader, "tqdm", lambda it, **_: it):
            corpus, queries, qrels = GenericDataLoader(str(root)).load(split=split)
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise DatasetError(f"{root}: cannot load split '{split}': {type(exc).__name__}: {exc}") from exc
    if not corpus:
        raise DatasetError(f"{root}: corpus.jsonl is empty")
    # Keep only positive judgements' queries with at least one judgement; grade 0 rows stay in qrels
    # (pytrec_eval treats them as non-relevant) but a query with no relevant document is unscorable.
    qrels = {q: docs for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    queries = {q: queries[q] for q in qrels}
    if not queries:
        raise DatasetError(f"{root}: split '{split}' has no query with a relevant document")
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


def _query_ids(path: Path) -> set[str]:
    import json

    ids = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                ids.add(str(json.loads(line).get("_id")))
    return ids


def _qrels_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r]
    return rows[1:]


def doc_text(doc: dict[str, Any]) -> str:
    """The text embedded for a corpus row (title + " " + text), the same helper every stage uses."""
    from eft.textutil import passage_text

    return passage_text(doc)


def default_batch_size(model) -> int:
    return 256 if str(model.device).startswith("cuda") else 32


def encode(model, texts: list[str], prefix: str = "", batch_size: int | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings of prefix + text, in input order."""
    if not texts:
        dim = model.get_sentence_embedding_dimension() or 0
        return np.zeros((0, dim), dtype=np.float32)
    emb = model.encode(
        [prefix + t for t in texts],
        batch_size=batch_size or default_batch_size(model),
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def search(query_emb: np.ndarray, corpus_emb: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (eft.vector_index: faiss, or numpy without it): (scores, indices), each
    [n_queries, min(top_k, n_docs)], best first."""
    from eft.vector_index import flat_ip_index

    k = min(top_k, corpus_emb.shape[0])
    if len(query_emb) == 0 or k == 0:
        return np.zeros((len(query_emb), k), np.float32), np.zeros((len(query_emb), k), np.int64)
    index = flat_ip_index(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, dtype=np.float32))
    scores, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
    return np.asarray(scores), np.asarray(idx, dtype=np.int64)


@dataclass
class Retrieval:
    results: dict[str, dict[str, float]]  # query id -> {doc id: score}, top-k
    query_ids: list[str]
    doc_ids: list[str]
    query_emb: np.ndarray
    corpus_emb: np.ndarray


def retrieve(model, data: BeirData, top_k: int, query_prefix: str = "", passage_prefix: str = "",
             batch_size: int | None = None, corpus_emb: np.ndarray | None = None) -> Retrieval:
    doc_ids = list(data.corpus)
    if corpus_emb is None:
        corpus_emb = encode(model, [doc_text(data.corpus[d]) for d in doc_ids], passage_prefix, batch_size)
    query_ids = list(data.queries)
    query_emb = encode(model, [data.queries[q] for q in query_ids], query_prefix, batch_size)
    scores, idx = search(query_emb, corpus_emb, top_k)
    results = {
        qid: {doc_ids[j]: float(s) for j, s in zip(idx[r], scores[r])} for r, qid in enumerate(query_ids)
    }
    return Retrieval(results, query_ids, doc_ids, query_emb, corpus_emb)


def score(qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: list[int],
          ignore_identical_ids: bool = False) -> dict[str, float]:
    """beir's EvaluateRetrieval.evaluate, flattened to {"ndcg@10": ..., "recall@10": ..., "map@10": ..., "precision@10": ...}.

    Every judged query must be in ``results`` (a query with no results would silently drop out of
    beir's average); one without any retrieved document gets an empty ranking, i.e. zeros.
    ``ignore_identical_ids`` drops a retrieved document whose id equals the query id (beir's default,
    meant for corpora that contain the queries); the workspace's own splits keep it off.
    """
    from beir.retrieval.evaluation import EvaluateRetrieval

    if not qrels:
        raise DatasetError("no judged queries to score")
    # pytrec_eval skips a query absent from the run; give every judged query a (possibly dummy) entry
    # so that beir averages over all of them. A dummy id that matches nothing scores 0 everywhere.
    run = {q: dict(results.get(q) or {}) or {"__eft_no_result__": 0.0} for q in qrels}
    beir_logger = logging.getLogger("beir.retrieval.evaluation")
    level = beir_logger.level
    beir_logger.setLevel(logging.WARNING)
    try:
        parts = EvaluateRetrieval.evaluate(qrels, run, sorted(set(k_values)), ignore_identical_ids=ignore_identical_ids)
    finally:
        beir_logger.setLevel(level)
    out: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            name, k = key.split("@")
            out[f"{_BEIR_TO_OURS[name]}@{k}"] = float(value)
    return order_metrics(out)


def order_metrics(m: dict[str, float]) -> dict[str, float]:
    def key(name: str) -> tuple[int, int]:
        base, _, k = name.partition("@")
        return (METRIC_ORDER.index(base) if base in METRIC_ORDER else 99, int(k) if k.isdigit() else 0)

    return {k: m[k] for k in sorted(m, key=key)}


def relative_change(base: float, tuned: float) -> float:
    """(tuned - base) / base; +inf when base is 0 and tuned is not, 0 when both are 0."""
    if base == 0:
        return 0.0 if tuned == 0 else math.inf
    return (tuned - base) / base
