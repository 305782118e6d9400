"""The contrastive loss: InfoNCE of each query against its positive, its hard negatives and (with
in-batch negatives) every other passage of the global batch, with known positives of the row's
question masked out so that they never count as negatives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from eft.stages.train.distributed import DistInfo, gather_nograd, gather_with_grad
from eft.stages.train.modeling import autocast_context, to_device

if TYPE_CHECKING:
    from eft.stages.train.batches import BatchTensors


@dataclass
class LossConfig:
    scale: float  # 1 / temperature
    n_neg: int  # hard negatives per row
    in_batch: bool  # other rows' passages count as negatives
    known_pairs: torch.Tensor  # sorted (question_index * n_ids + passage_id) of every training positive
    n_ids: int


def false_negative_mask(row_q: torch.Tensor, pids: torch.Tensor, labels: torch.Tensor,
                        known_pairs: torch.Tensor, n_ids: int) -> torch.Tensor:
    """[rows, passages] True where passage j is a known positive of row i's question but not row i's own
    positive column (another row's copy of the same passage, or a sibling positive of a multi-hop question).

    ``row_q``: question index per row; ``pids``: passage id per column; ``known_pairs``: sorted tensor of
    ``question_index * n_ids + passage_id`` for every (question, positive) pair of the training set.
    """
    keys = row_q[:, None] * n_ids + pids[None, :]
    mask = torch.isin(keys, known_pairs)
    mask[torch.arange(len(labels), device=labels.device), labels] = False
    return mask


def own_columns_mask(n_rows: int, n_neg: int, n_cols: int, offset: int, device) -> torch.Tensor:
    """[rows, passages] True where a column is NOT the row's own positive or one of its own hard negatives
    (used when in-batch negatives are off). Local columns: positives [0, n_rows) then n_neg per row."""
    mask = torch.ones(n_rows, n_cols, dtype=torch.bool, device=device)
    r = torch.arange(n_rows, device=device)
    mask[r, offset + r] = False
    for j in range(n_neg):
        mask[r, offset + n_rows + r * n_neg + j] = False
    return mask


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """InfoNCE: cross-entropy of cosine similarities * scale (1/temperature), masked columns excluded."""
    q = F.normalize(q.float(), dim=-1)
    p = F.normalize(p.float(), dim=-1)
    logits = q @ p.T * scale
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, labels)


def batch_loss(model, batch: BatchTensors, cfg: LossConfig, info: DistInfo, forward=None) -> torch.Tensor:
    """Forward queries and passages (one forward each, padded to the batch's longest text) and the loss.
    ``forward``: what runs the model (a torch.compile'd handle on the same weights); default ``model``.
    Shared by the training steps and the batch-size probe."""
    device = info.device
    forward = forward or model
    qf, pf = batch.tokenize(model).features
    qf, pf = to_device(qf, device), to_device(pf, device)
    with autocast_context(device):
        q = forward(qf)["sentence_embedding"]
        p = forward(pf)["sentence_embedding"]
    n = len(batch.queries)
    p_all = gather_with_grad(p.float(), info)
    pids = gather_nograd(batch.pids.to(device, non_blocking=True), info)
    offset = info.rank * p.shape[0]  # this rank's columns in the gathered passages
    labels = torch.arange(n, device=device) + offset
    known = cfg.known_pairs if cfg.known_pairs.device == pids.device else cfg.known_pairs.to(device)
    mask = false_negative_mask(batch.row_q.to(device, non_blocking=True), pids, labels, known, cfg.n_ids)
    if not cfg.in_batch:
        mask |= own_columns_mask(n, cfg.n_neg, p_all.shape[0], offset, device)
    return contrastive_loss(q, p_all, labels, mask, cfg.scale)
