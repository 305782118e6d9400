"""How good an exported variant is: nDCG@10 on the workspace's test split, by exact cosine retrieval, as the
evaluate stage computes it, and whether a variant's loss against fp32 ONNX is acceptable."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from eft.pipeline import StageFailed
from eft.textutil import passage_text

METRIC = "ndcg@10"
# Quality is measured on the whole test corpus up to this many passages (then: every relevant passage
# plus a fixed random sample), to bound the time of three full-corpus encodings on CPU.
MAX_QUALITY_CORPUS = 50_000


class QualitySplit(NamedTuple):
    """The test split quality is measured on (BEIR: passages by id, queries by id, relevance per query)."""

    corpus: dict
    queries: dict
    qrels: dict


# Where a variant's quality is measured, in order of preference. A spec whose gate reads a human-labelled dataset
# has no synthetic test split by default (split.test); the validation split then serves, since only the change
# between fp32 and a variant matters here, not the score itself. Training questions are the last resort.
QUALITY_SPLITS = ("test", "dev", "train")


def load_test_split(beir_dir: Path) -> tuple[str, QualitySplit]:
    """(split name, split): the workspace's first non-empty held-out split of QUALITY_SPLITS, through the same
    loader the evaluate stage uses."""
    from eft.metrics import DatasetError, has_split, load_beir

    name = next((s for s in QUALITY_SPLITS if has_split(beir_dir, s)), None)
    if name is None:
        raise StageFailed("export", f"the export measures quality on prepare's questions, and {beir_dir} has "
                          "none (qrels/test.tsv, dev.tsv and train.tsv are empty): re-run prepare")
    try:
        data = load_beir(beir_dir, name)
    except DatasetError as exc:
        raise StageFailed("export", f"the export measures quality on the {name} split: {exc}") from None
    return name, QualitySplit(data.corpus, data.queries, data.qrels)


def measure_quality(backend: Any, corpus: dict, queries: dict, qrels: dict, prefixes: dict[str, str],
                    k_values: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Exact cosine retrieval over the test corpus with `backend`; metrics as the evaluate stage computes them."""
    from eft.metrics import score, search

    doc_ids = list(corpus)
    qids = [q for q in queries if q in qrels]
    d_emb = backend.embed_texts([prefixes.get("passage", "") + passage_text(corpus[d]) for d in doc_ids])
    q_emb = backend.embed_texts([prefixes.get("query", "") + queries[q] for q in qids])
    scores, idx = search(q_emb, d_emb, max(k_values))
    results = {q: {doc_ids[j]: float(s) for j, s in zip(idx[r], scores[r])} for r, q in enumerate(qids)}
    metrics = score({q: qrels[q] for q in qids}, results, list(k_values))
    return {f"{m}@{k}": round(metrics[f"{m}@{k}"], 6) for k in k_values for m in ("ndcg", "recall")}


def cap_corpus(corpus: dict, qrels: dict, limit: int = MAX_QUALITY_CORPUS, seed: int = 0) -> tuple[dict, bool]:
    if len(corpus) <= limit:
        return corpus, False
    keep = {d for rels in qrels.values() for d in rels if d in corpus}
    rest = sorted(set(corpus) - keep)
    random.Random(seed).shuffle(rest)
    keep.update(rest[: max(0, limit - len(keep))])
    return {d: corpus[d] for d in corpus if d in keep}, True


def judge(base: float, value: float, max_loss: float) -> tuple[str, float, str | None]:
    """(status, relative loss, reason) of a variant scoring `value` against fp32's `base`."""
    rel = (base - value) / base if base > 0 else (0.0 if value >= base else float("inf"))
    rel = round(rel, 6)
    if rel > max_loss:
        return "rejected", rel, (f"loses {rel:.3%} {METRIC} relative to fp32 ({value:.4f} vs {base:.4f}), "
                                 f"more than maxQualityLoss {max_loss:.2%}")
    return "accepted", rel, None


@dataclass
class Reference:
    """fp32 ONNX measured on the test split: what every other variant and the TensorRT engine is compared with."""

    split: QualitySplit  # the corpus capped at MAX_QUALITY_CORPUS: every variant is measured on the same one
    capped: bool
    prefixes: dict[str, str]
    quality: dict[str, float]
    texts: list[str]  # the validation texts (eft.stages.export_validation), every group in one list
    embeddings: np.ndarray  # fp32's embeddings of `texts`

    @property
    def score(self) -> float:
        return self.quality[METRIC]

    def measure(self, backend: Any) -> dict[str, float]:
        return measure_quality(backend, *self.split, self.prefixes)

    def scope(self) -> dict[str, Any]:
        """What the quality numbers were measured on, for the model manifest."""
        queries, qrels = self.split.queries, self.split.qrels
        return {"queries": len([q for q in queries if q in qrels]), "passages": len(self.split.corpus),
                "corpus_capped": self.capped}


def measure_reference(fp32: Any, split: QualitySplit, prefixes: dict[str, str], texts: list[str],
                      progress: Callable[[str], None]) -> Reference:
    """fp32's quality on the (capped) test split and its embeddings of `texts`."""
    corpus, capped = cap_corpus(split.corpus, split.qrels)
    progress(f"measuring {METRIC} of fp32 ONNX on {len(split.qrels)} test queries x {len(corpus)} passages")
    quality = measure_quality(fp32, corpus, split.queries, split.qrels, prefixes)
    return Reference(QualitySplit(corpus, split.queries, split.qrels), capped, prefixes, quality, texts,
                     fp32.embed_texts(texts))
