"""Distributed helpers in one process (no-ops) and the bucketing of the gradient all-reduce (the
two-rank behaviour: tests/unit/stages/test_train.py)."""

from __future__ import annotations

import torch

from eft.stages.train.distributed import (
    DistInfo,
    allreduce_gradients,
    allreduce_mean,
    allreduce_min,
    gather_nograd,
    gather_with_grad,
    gradient_buckets,
    setup_distributed,
)


def test_gradient_buckets_split_by_dtype_and_size():
    a, b, c = torch.zeros(4), torch.zeros(4), torch.zeros(4)  # 16 bytes each
    h = torch.zeros(4, dtype=torch.float16)
    big = torch.zeros(100)
    buckets = gradient_buckets([a, h, b, c, big], limit_bytes=32)
    assert [[id(t) for t in bk] for bk in buckets] == [[id(a), id(b)], [id(c)], [id(big)], [id(h)]]


def test_one_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    t = torch.arange(3.0)
    assert gather_with_grad(t, info) is t and gather_nograd(t, info) is t and allreduce_mean(t, info) is t
    assert allreduce_min(5, info) == 5
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    allreduce_gradients([p], info)
    assert p.grad.tolist() == [3.0, 3.0]
