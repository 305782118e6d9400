"""Checkpoints: a save/restore round trip, the key that guards resuming, files that cannot be read."""

from __future__ import annotations

import random

import numpy as np
import torch

from eft.stages.train.checkpoints import CheckpointStore, atomic_torch_save, load_checkpoint, restore
from eft.stages.train.distributed import DistInfo


def _trained_objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_round_trip_restores_weights_optimizer_schedule_rng_and_state(tmp_path):
    store = CheckpointStore(tmp_path, key="run-a")
    model, opt, sched = _trained_objects(0)
    state = {"step": 7, "epoch": 1, "micro": 3, "curve": [{"step": 7}]}
    store.save(batch_choice={"batch_size": 16}, model=model, optimizer=opt, scheduler=sched, state=state)
    after = (random.random(), np.random.rand(), torch.rand(1))  # what the RNG draws next after the save

    other, opt2, sched2 = _trained_objects(1)
    ck = store.load(progress=lambda m: None)
    assert ck["batch_choice"] == {"batch_size": 16}
    got = restore(ck, model=other, optimizer=opt2, scheduler=sched2, info=DistInfo(), seed=0)
    assert got == state
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert sched2.last_epoch == sched.last_epoch
    assert (random.random(), np.random.rand(), torch.rand(1)) == after


def test_a_checkpoint_of_another_run_is_dropped_with_its_best_weights(tmp_path):
    model, opt, sched = _trained_objects(0)
    CheckpointStore(tmp_path, key="old").save(batch_choice={}, model=model, optimizer=opt, scheduler=sched, state={})
    CheckpointStore(tmp_path, key="old").save_best(model)
    said = []
    store = CheckpointStore(tmp_path, key="new")
    assert store.load(said.append) is None
    assert said == ["found a checkpoint for another spec or data: starting over"]
    assert not store.best_path.exists()


def test_best_weights_round_trip(tmp_path):
    model, *_ = _trained_objects(0)
    store = CheckpointStore(tmp_path, key="k")
    store.save_best(model)
    got = store.load_best("cpu")
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_unreadable_or_missing_checkpoints_start_over(tmp_path):
    assert load_checkpoint(tmp_path / "checkpoint.pt") is None
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    assert load_checkpoint(tmp_path / "checkpoint.pt") is None
    assert CheckpointStore(tmp_path, key="k").load(lambda m: None) is None


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)
    atomic_torch_save({"a": 2}, path)
    assert torch.load(path) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
