"""The optimizer and its schedule: AdamW (no weight decay on biases and norms), linear warmup then linear
decay, gradient clipping, and how many optimizer steps the run takes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from eft.stages.train.distributed import DistInfo, allreduce_gradients


@dataclass
class StepPlan:
    accum: int  # micro-batches per optimizer step (training.gradientAccumulation)
    total_steps: int
    warmup: int


def plan_steps(batches_per_epoch: list[int], accum: int, max_steps: int | None, warmup_ratio: float) -> StepPlan:
    """Optimizer steps over every epoch (an epoch's last step may take fewer micro-batches), at most
    ``max_steps``; the first ``warmup_ratio`` of them warm up."""
    total = sum(math.ceil(n / accum) for n in batches_per_epoch)
    if max_steps:
        total = min(total, max_steps)
    return StepPlan(accum=accum, total_steps=total, warmup=math.ceil(total * warmup_ratio))


def linear_warmup_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    return p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower()


@dataclass
class Optimization:
    params: list[torch.nn.Parameter]  # the trainable ones
    optimizer: torch.optim.Optimizer
    scheduler: Any

    @classmethod
    def build(cls, model, *, lr: float, weight_decay: float, device: str, plan: StepPlan) -> Optimization:
        params = [p for p in model.parameters() if p.requires_grad]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _no_decay(n, p)]
        no_decay_ids = {id(p) for p in no_decay}
        groups = [
            {"params": [p for p in params if id(p) not in no_decay_ids], "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=device.startswith("cuda") or None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_lambda(plan.warmup, plan.total_steps))
        return cls(params, optimizer, scheduler)

    def step(self, info: DistInfo) -> float:
        """Average gradients over ranks, clip, step, advance the schedule; returns the learning rate used."""
        allreduce_gradients(self.params, info)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr
