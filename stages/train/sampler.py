"""The train stage's batch sampler: batches in which no question appears twice.

Rows unrolled from one multi-hop question share a qid, and the positives of one qid are false negatives
for each other, so a batch never holds the same qid twice (the loss also masks in-batch passages that
are known positives of a row's qid, see loss.py).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


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
