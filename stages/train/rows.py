"""Training rows of the train stage (prepare/train.jsonl): reading them and giving each the same number
of hard negatives.

A row is one (question, positive passage) pair with the question's hard negatives::

    {"qid", "query", "positive": {"_id", "text"}, "negatives": [{"_id", "text"}, ...]}

Rows unrolled from one multi-hop question share a qid; the positives of one qid are false negatives for
each other (see ``known_positives``, the sampler in sampler.py and the mask in loss.py). An optional
``"otherPositives": [_id, ...]`` names positives of the question that have no row of their own (the chunks of a
document label prepare did not train on): they are masked the same way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TrainDataError(ValueError):
    """Unusable training rows; the message is one line for humans."""


@dataclass
class TrainRow:
    qid: str
    query: str
    pos_id: str
    pos_text: str
    neg_ids: list[str]
    neg_texts: list[str]
    other_pos_ids: tuple[str, ...] = ()


def load_rows(path: Path) -> list[TrainRow]:
    if not path.is_file():
        raise TrainDataError(f"{path.parent.name}/{path.name} is missing: re-run the prepare stage")
    rows: list[TrainRow] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                pos = d["positive"]
                negs = d.get("negatives") or []
                row = TrainRow(
                    qid=str(d["qid"]),
                    query=str(d["query"]),
                    pos_id=str(pos["_id"]),
                    pos_text=str(pos["text"]),
                    neg_ids=[str(x["_id"]) for x in negs],
                    neg_texts=[str(x["text"]) for x in negs],
                    other_pos_ids=tuple(str(x) for x in d.get("otherPositives") or ()),
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TrainDataError(
                    f"{path.name} line {n}: not a training row ({type(exc).__name__}: {exc}); expected "
                    '{"qid", "query", "positive": {"_id", "text"}, "negatives": [{"_id", "text"}, ...]}'
                ) from None
            if not row.query.strip() or not row.pos_text.strip():
                raise TrainDataError(f"{path.name} line {n}: empty query or positive text")
            rows.append(row)
    if not rows:
        raise TrainDataError(f"{path.name} has no training rows: the prepare stage produced no training questions")
    return rows


def known_positives(rows: list[TrainRow]) -> dict[str, set[str]]:
    """qid -> every passage id that is a positive of that question (over all its rows)."""
    kp: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        kp[r.qid].add(r.pos_id)
        kp[r.qid].update(r.other_pos_ids)
    return dict(kp)


def fit_negatives(rows: list[TrainRow], n: int, seed: int) -> tuple[list[TrainRow], int]:
    """Give every row exactly ``n`` hard negatives: keep the first ``n`` (prepare orders them hardest
    first), pad short rows with random passages from the training set that are not positives of the
    row's question. Returns the rows and how many negatives were padded. Equal counts keep every
    batch rectangular, which the cross-rank gather needs."""
    kp = known_positives(rows)
    pool: dict[str, str] = {}
    for r in rows:
        pool.setdefault(r.pos_id, r.pos_text)
        for i, t in zip(r.neg_ids, r.neg_texts):
            pool.setdefault(i, t)
    pool_ids = sorted(pool)
    rng = np.random.default_rng(seed)
    padded = 0
    out = []
    for r in rows:
        ids, texts = r.neg_ids[:n], r.neg_texts[:n]
        if len(ids) < n:
            taken = set(ids) | kp[r.qid]
            # Rejection sampling first (cheap on a big pool), then a full scan for tiny pools.
            draws = (lambda: rng.integers(0, len(pool_ids), size=4 * n), lambda: rng.permutation(len(pool_ids)))
            for draw in draws:
                for j in draw().tolist():
                    if len(ids) >= n:
                        break
                    pid = pool_ids[j]
                    if pid not in taken:
                        ids.append(pid)
                        texts.append(pool[pid])
                        taken.add(pid)
                        padded += 1
                if len(ids) >= n:
                    break
            if len(ids) < n:
                raise TrainDataError(
                    f"cannot find {n} negatives for question {r.qid}: the training set has only {len(pool_ids)} "
                    "distinct passages; lower training.negatives"
                )
        out.append(TrainRow(r.qid, r.query, r.pos_id, r.pos_text, ids, texts, r.other_pos_ids))
    return out, padded
