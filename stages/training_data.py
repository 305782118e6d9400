"""Training rows (prepare/train.jsonl) and the batch sampler of the train stage.

A row is one (question, positive passage) pair with the question's hard negatives::

    {"qid", "query", "positive": {"_id", "text"}, "negatives": [{"_id", "text"}, ...]}

Rows unrolled from one multi-hop question share a qid; the positives of one qid are false negatives
for each other, so a batch never holds the same qid twice (``QidBatchSampler``), and the loss masks
any in-batch passage that is a known positive of the row's qid (``known_positive_pairs``).
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
        out.append(TrainRow(r.qid, r.query, r.pos_id, r.pos_text, ids, texts))
    return out, padded


class QidBatchSampler:
    """Batches of row indices in which no qid appears twice; reshuffled per epoch, deterministic in (seed, epoch).

    Dealt like cards: the questions are shuffled, each question's rows (shuffled) are laid out one after
    the other, and position t goes to batch t mod n_batches. A question's rows are consecutive and never
    more than n_batches, so they land in distinct batches, and batch sizes differ by at most one. Every
    row is used once per epoch, except that a question with more rows than the epoch has batches (e.g. a
    broad NFCorpus query with 1,363 relevant documents at batch size 256) contributes a random subset of
    that many rows, drawn anew each epoch: it cannot appear in a batch twice. ``max_per_qid`` lowers that
    cap further (balances training over questions when a few have hundreds of positives).

    With ``world_size`` > 1 the batches are global batches of exactly ``batch_size * world_size`` rows (the
    remainder of the epoch is left out) and rank r gets the r-th slice of each, so that every rank runs
    the same number of steps with the same shapes.
    """

    def __init__(self, qids: list[str], batch_size: int, seed: int = 42, world_size: int = 1, rank: int = 0,
                 max_per_qid: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.max_per_qid = max_per_qid
        self.qids = list(qids)
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        groups: dict[str, list[int]] = defaultdict(list)
        for i, q in enumerate(self.qids):
            groups[q].append(i)
        self._groups = dict(sorted(groups.items()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_batches(self) -> tuple[int, int]:
        """(batches per epoch, rows per question cap): the largest cap with cap <= number of batches."""
        size = self.batch_size * self.world_size
        sizes = [len(g) for g in self._groups.values()]
        cap = max(1, -(-len(self.qids) // size))
        if self.max_per_qid:
            cap = min(cap, self.max_per_qid)
        while True:
            used = sum(min(n, cap) for n in sizes)
            nb = -(-used // size) if self.world_size == 1 else used // size
            if nb >= cap or nb == 0:
                return nb, cap
            cap = nb

    def global_batches(self, epoch: int) -> list[list[int]]:
        size = self.batch_size * self.world_size
        nb, cap = self._n_batches()
        if nb == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        keys = list(self._groups)
        order: list[int] = []
        for j in rng.permutation(len(keys)).tolist():
            order.extend(rng.permutation(self._groups[keys[j]])[:cap].tolist())
        if self.world_size > 1:
            order = order[: nb * size]
        batches = [order[j::nb] for j in range(nb)]
        return [batches[j] for j in rng.permutation(nb).tolist()]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches for an epoch."""
        gb = self.global_batches(self.epoch if epoch is None else epoch)
        if self.world_size == 1:
            return gb
        b = self.batch_size
        return [g[self.rank * b : (self.rank + 1) * b] for g in gb]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
