"""The training curve: a step's row is recorded once the next step is queued, with its finishing time."""

from __future__ import annotations

import csv

import pytest
import torch

from eft.stages.train.curve import CURVE_FIELDS, StepLog, write_curve
from eft.stages.train.trainer import TrainState


def row(step: int) -> dict:
    return {"step": step, "epoch": step / 4, "loss": "", "lr": 1e-4, "val_loss": "", "val_ndcg@10": ""}


def test_a_step_is_recorded_when_the_next_is_queued_and_on_flush():
    state = TrainState(rows_seen=64)
    said = []
    log = StepLog(state, total_steps=2, epochs=1, progress=said.append)
    log.record(row(1), torch.tensor(0.5))
    assert state.curve == []  # its loss may still be on the device
    log.clock -= 2.0  # as if the host had waited two seconds for step 1 to finish
    log.record(row(2), torch.tensor(0.25))
    assert [r["step"] for r in state.curve] == [1] and state.curve[0]["loss"] == 0.5
    log.flush()
    assert [(r["step"], r["loss"]) for r in state.curve] == [(1, 0.5), (2, 0.25)]
    t = [r["train_seconds"] for r in state.curve]
    assert t[0] == pytest.approx(2.0, abs=0.5) and t[0] <= t[1] == round(state.train_seconds, 3)
    assert len(said) == 1 and said[0].startswith("step 2/2 epoch 1/1 loss 0.2500 lr 1.00e-04")  # the last step
    log.flush()  # nothing pending: only the clock moves
    assert len(state.curve) == 2


def test_time_outside_steps_is_not_training_time():
    state = TrainState()
    log = StepLog(state, total_steps=9, epochs=1, progress=lambda m: None)
    log.clock -= 100  # as if 100 s of validation had passed since the clock last ran
    log.restart_clock()
    log.flush()
    assert state.train_seconds < 1


def test_the_csv_has_every_field_and_the_plot_is_drawn(tmp_path):
    curve = [{"step": 0, "epoch": 0, "loss": "", "lr": "", "val_loss": 1.5, "val_ndcg@10": 0.25, "train_seconds": 0.0}]
    curve += [{**row(s), "loss": 1 / s, "train_seconds": float(s)} for s in range(1, 46)]  # enough to smooth
    write_curve(tmp_path, curve)
    with open(tmp_path / "training_curve.csv") as f:
        got = list(csv.DictReader(f))
    assert tuple(got[0]) == CURVE_FIELDS and len(got) == 46
    assert [r["val_ndcg@10"] for r in got[:2]] == ["0.25", ""] and got[2]["loss"] == "0.5"
    assert (tmp_path / "training_curve.png").stat().st_size > 1000


def test_a_curve_that_cannot_be_drawn_still_writes_the_csv(tmp_path, caplog):
    write_curve(tmp_path, [{"step": 1, "epoch": 1, "loss": 0.5, "val_ndcg@10": 0.3}])  # no val_loss to plot
    with open(tmp_path / "training_curve.csv") as f:
        assert list(csv.DictReader(f))[0]["val_loss"] == ""
    assert "could not draw the training curve" in caplog.text
