"""The optimizer: how many steps a run takes, the learning-rate schedule, which weights decay."""

from __future__ import annotations

import pytest
import torch

from eft.stages.train.distributed import DistInfo
from eft.stages.train.optim import Optimization, StepPlan, linear_warmup_lambda, plan_steps


def test_steps_count_each_epochs_short_last_group_and_obey_max_steps():
    p = plan_steps([10, 7], accum=4, max_steps=None, warmup_ratio=0.1)
    assert (p.total_steps, p.warmup, p.accum) == (3 + 2, 1, 4)
    assert plan_steps([10, 7], accum=1, max_steps=12, warmup_ratio=0.25).total_steps == 12
    assert plan_steps([10], accum=1, max_steps=None, warmup_ratio=0.0).warmup == 0


def test_linear_warmup_then_linear_decay():
    f = linear_warmup_lambda(warmup=3, total=10)
    assert [f(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert f(3) == 1.0 and f(10) == 0.0 and f(12) == 0.0
    assert f(6) == pytest.approx(4 / 7)
    assert linear_warmup_lambda(0, 4)(0) == 1.0


def test_biases_and_norms_do_not_decay_and_a_step_follows_the_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)  # frozen weights stay out of the optimizer
    plan = StepPlan(accum=1, total_steps=4, warmup=1)
    o = Optimization.build(model, lr=0.1, weight_decay=0.01, device="cpu", plan=plan)
    decay, no_decay = o.optimizer.param_groups
    assert [id(p) for p in decay["params"]] == [id(model[0].weight)] and decay["weight_decay"] == 0.01
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert no_decay["weight_decay"] == 0.0
    model(torch.randn(2, 3)).sum().backward()
    before = model[0].weight.detach().clone()
    assert o.step(DistInfo()) == pytest.approx(0.05)  # warmup step 0: lr * 1/2
    assert not torch.equal(before, model[0].weight) and model[0].weight.grad is None
    assert o.scheduler.get_last_lr()[0] == pytest.approx(0.1)
