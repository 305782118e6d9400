"""The trainer's stopping and checkpointing rules, on the stage's tiny synthetic task."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from eft.pipeline import StageFailed, execute_stage
from eft.settings import StageSettings
from eft.stages.train.trainer import Trainer
from tests.unit.stages.test_train import make_spec, write_prepare


def checkpoint_step(ws) -> int | None:
    path = ws.root / ".work" / "train" / "checkpoint.pt"
    return torch.load(path, weights_only=False)["state"]["step"] if path.exists() else None


def test_sigterm_checkpoints_at_the_next_step_and_stops(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    after_step = Trainer.after_step

    def terminate_after_step_one(self):
        if self.state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the stage's handler only sets a flag
        return after_step(self)

    monkeypatch.setattr(Trainer, "after_step", terminate_after_step_one)
    ws = write_prepare(tmp_path / "ws")
    with pytest.raises(StageFailed, match="terminated by signal; checkpoint saved at step 1"):
        execute_stage(make_spec(epochs=1), ws, "train", settings=StageSettings(device="cpu"))
    assert checkpoint_step(ws) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler is back


def test_sigterm_during_the_base_models_validation_still_checkpoints(tmp_path, monkeypatch):
    """An eviction right after the pod started (the base model is being scored) must not lose the run: the
    signal is caught from the start, so the first step checkpoints and the retry resumes."""
    validate = Trainer.validate

    def terminate_while_validating_the_base(self, epoch):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return validate(self, epoch)

    monkeypatch.setattr(Trainer, "validate", terminate_while_validating_the_base)
    ws = write_prepare(tmp_path / "ws")
    with pytest.raises(StageFailed, match="terminated by signal; checkpoint saved at step 1"):
        execute_stage(make_spec(epochs=1), ws, "train", settings=StageSettings(device="cpu"))
    assert checkpoint_step(ws) == 1


@pytest.mark.parametrize(("seconds", "expected"), [(0.0, 2), (600.0, None)])
def test_checkpoints_follow_the_seconds_setting(tmp_path, seconds, expected):
    ws = write_prepare(tmp_path / "ws")
    settings = StageSettings(device="cpu", checkpoint_steps=1000, checkpoint_seconds=seconds, stop_after_steps=2)
    with pytest.raises(StageFailed, match="stopped after step 2"):
        execute_stage(make_spec(epochs=1), ws, "train", settings=settings)
    assert checkpoint_step(ws) == expected
