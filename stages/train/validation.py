"""Validation on the dev split: nDCG@10 and a loss (each dev query's contrastive loss against the whole
dev corpus at the training temperature, every judged-relevant document counting as a positive)."""

from __future__ import annotations

from pathlib import Path

import torch

from eft import metrics


def load_dev(beir_dir: Path):
    """The dev split of prepare/beir, or None when it has no dev queries (then nothing is validated)."""
    if not metrics.has_split(beir_dir, "dev"):
        return None
    return metrics.load_beir(beir_dir, "dev")


def validate(model, dev, qprefix: str, pprefix: str, scale: float) -> tuple[float, float]:
    """(nDCG@10, contrastive loss of the dev queries against the whole dev corpus)."""
    r = metrics.retrieve(model, dev, top_k=10, query_prefix=qprefix, passage_prefix=pprefix)
    ndcg = metrics.score(dev.qrels, r.results, [10])["ndcg@10"]
    return ndcg, dev_loss(r, dev.qrels, scale)


def dev_loss(r, qrels: dict[str, dict[str, int]], scale: float, chunk: int = 256) -> float:
    """Mean over the dev queries with a relevant document of -log(softmax mass on the relevant documents);
    NaN when there is none. ``r``: a metrics.retrieve result with its embeddings."""
    doc_pos = {d: i for i, d in enumerate(r.doc_ids)}
    c = torch.from_numpy(r.corpus_emb)
    losses = []
    for s in range(0, len(r.query_ids), chunk):
        logits = torch.from_numpy(r.query_emb[s : s + chunk]) @ c.T * scale
        lse_all = torch.logsumexp(logits, dim=1)
        for i, qid in enumerate(r.query_ids[s : s + chunk]):
            rel = [doc_pos[d] for d, g in qrels[qid].items() if g > 0 and d in doc_pos]
            if rel:
                losses.append(float(lse_all[i] - torch.logsumexp(logits[i, rel], dim=0)))
    return sum(losses) / len(losses) if losses else float("nan")
