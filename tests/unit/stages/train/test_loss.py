"""The contrastive loss of a batch: which columns each row is contrasted with."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from eft.stages.train import modeling
from eft.stages.train.batches import BatchTensors
from eft.stages.train.distributed import DistInfo
from eft.stages.train.loss import LossConfig, batch_loss, own_columns_mask


class Toy(torch.nn.Module):
    """preprocess(texts) -> features, forward -> sentence_embedding, like a SentenceTransformer."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 4)

    def preprocess(self, texts):
        return {"x": torch.stack([torch.randn(6, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                                  for t in texts])}

    def forward(self, f):
        return {"sentence_embedding": self.lin(f["x"])}


def test_own_columns_mask_leaves_each_row_its_positive_and_its_negatives():
    # 2 rows, 2 negatives each; columns: positives [0, 1], then row 0's negatives [2, 3], row 1's [4, 5].
    mask = own_columns_mask(2, 2, 6, offset=0, device="cpu")
    assert (~mask).tolist() == [[True, False, True, True, False, False],
                                [False, True, False, False, True, True]]
    # On rank 1 of a gathered batch the row's own columns start at its offset.
    assert (~own_columns_mask(1, 1, 4, offset=2, device="cpu")).tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("in_batch", [True, False])
def test_batch_loss_contrasts_the_columns_the_config_asks_for(in_batch, monkeypatch):
    # Compared with fp32 arithmetic, so in fp32 even on a CPU that would train under bf16 autocast.
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    torch.manual_seed(0)
    model = Toy()
    batch = BatchTensors(queries=["q0", "q1", "q2"], passages=["p0", "p1", "p2", "n0", "n1", "n2"],
                         row_q=torch.arange(3), pids=torch.arange(6))
    cfg = LossConfig(scale=10.0, n_neg=1, in_batch=in_batch, known_pairs=torch.zeros(0, dtype=torch.long), n_ids=6)
    got = batch_loss(model, batch, cfg, DistInfo())
    with torch.no_grad():
        q = F.normalize(model(model.preprocess(batch.queries))["sentence_embedding"], dim=-1)
        p = F.normalize(model(model.preprocess(batch.passages))["sentence_embedding"], dim=-1)
    sims = q @ p.T * 10.0
    expected = 0.0
    for i in range(3):
        cols = list(range(6)) if in_batch else [i, 3 + i]
        expected += float(torch.logsumexp(sims[i, cols], 0) - sims[i, i])
    assert got.item() == pytest.approx(expected / 3, rel=1e-5)
    got.backward()
    assert model.lin.weight.grad is not None and model.lin.weight.grad.abs().sum() > 0


def test_under_cpu_bf16_autocast_the_loss_stays_close_to_fp32(monkeypatch):
    """The model runs in bf16, the similarities and the loss in fp32: the two precisions agree closely."""
    torch.manual_seed(0)
    model = Toy()
    batch = BatchTensors(queries=["q0", "q1", "q2"], passages=["p0", "p1", "p2", "n0", "n1", "n2"],
                         row_q=torch.arange(3), pids=torch.arange(6))
    cfg = LossConfig(scale=20.0, n_neg=1, in_batch=True, known_pairs=torch.zeros(0, dtype=torch.long), n_ids=6)
    losses = {}
    for native in (False, True):
        monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda v=native: v)
        losses[native] = batch_loss(model, batch, cfg, DistInfo())
    assert losses[True].dtype == torch.float32
    assert losses[True].item() != losses[False].item()  # bf16 really ran
    assert losses[True].item() == pytest.approx(losses[False].item(), rel=2e-2)
