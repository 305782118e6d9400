"""training.search: short trials of learning rate and temperature, scored on the validation split, before the
real run.

Each trial is an ordinary training run (assemble_trainer, so batches, checkpoints and SIGTERM behave as in the
real run) of a spec whose learningRate and temperature are the candidate's, in its own work folder, stopped
after ``trialFraction`` of the real run's steps (its learning-rate schedule is the real run's, cut short, so
every trial sees the same warm-up). Its score is the validation nDCG@10 after its last step. Finished trials
are journaled in the stage's work folder, so a re-run after a kill repeats none of them, and the interrupted
one resumes from its checkpoint.

Written here rather than with a tuning library (Optuna, Ray Tune): the space is a short fixed list ordered by
what measured best, and each trial must run inside the stage's own process, checkpoints and device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from eft.pipeline import StageContext, StageFailed
from eft.workspace import write_json_atomic

# (learning rate, temperature); None = the spec's own value. Ordered: the spec's settings first, then the
# 'measured' preset's (what a small model trained with in-batch negatives measured best with on NFCorpus: lr 5e-5
# and temperature 0.05 gave +10.3% where the recipe's gave +3.0%), then the recipe's, then one step to each side.
CANDIDATES: tuple[tuple[float | None, float | None], ...] = (
    (None, None), (5e-5, 0.05), (1e-5, 0.02), (None, 0.05), (5e-5, None), (2e-5, 0.05), (1e-4, 0.05))
MIN_TRIAL_STEPS = 10
# training.search.trials when the spec leaves it unset, on one GPU: the measured preset's pair, the recipe's, and
# lr 2e-5 at temperature 0.05. There a trial of an NFCorpus-sized run takes seconds; on a CPU the same three
# trials would add three quarters of an hour-long run, so a CPU trains once (as do several processes: the search
# runs in one).
GPU_DEFAULT_TRIALS = 3
JOURNAL = "search.json"


@dataclasses.dataclass
class Trial:
    learning_rate: float
    temperature: float
    steps: int
    val_ndcg10: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"learningRate": self.learning_rate, "temperature": self.temperature, "steps": self.steps,
                "valNdcg10": self.val_ndcg10, "seconds": round(self.seconds, 1)}


def candidates(learning_rate: float, temperature: float, n: int) -> list[tuple[float, float]]:
    """The first ``n`` distinct (learning rate, temperature) pairs, the spec's own first."""
    out: list[tuple[float, float]] = []
    for lr, t in CANDIDATES:
        pair = (learning_rate if lr is None else lr, temperature if t is None else t)
        if pair not in out:
            out.append(pair)
    return out[:n]


def with_settings(ctx: StageContext, learning_rate: float, temperature: float, work: Path) -> StageContext:
    """The stage context of a run with these settings (a copy; the search itself is switched off in it)."""
    efr = ctx.efr.model_copy(deep=True)
    tr = efr.spec.training
    tr.learning_rate, tr.temperature = learning_rate, temperature
    tr.search.trials = 1
    work.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(ctx, efr=efr, work=work)


def trial_steps(total_steps: int, fraction: float) -> int:
    return min(total_steps, max(MIN_TRIAL_STEPS, math.ceil(total_steps * fraction)))


def last_validation(curve: list[dict[str, Any]]) -> float | None:
    vals = [c["val_ndcg@10"] for c in curve if c.get("val_ndcg@10") not in ("", None)]
    return float(vals[-1]) if vals else None


def best_trial(trials: list[Trial]) -> Trial:
    """The highest validation score; the earliest on ties (the spec's own settings come first)."""
    scored = [t for t in trials if t.val_ndcg10 is not None]
    return max(scored, key=lambda t: t.val_ndcg10) if scored else trials[0]


def default_trials(device: str, world_size: int) -> int:
    return GPU_DEFAULT_TRIALS if device.startswith("cuda") and world_size == 1 else 1


class Search:
    """The trials of one train stage run, journaled in its work folder."""

    def __init__(self, ctx: StageContext):
        from eft.models import pick_device

        self.ctx = ctx
        self.spec = ctx.spec.training.search
        self.by_default = self.spec.trials is None
        self.n_trials = (default_trials(pick_device(ctx.settings.device), int(os.environ.get("WORLD_SIZE", "1")))
                         if self.by_default else self.spec.trials)
        self.journal = ctx.work / JOURNAL
        self.trials: list[Trial] = self._load()

    def _load(self) -> list[Trial]:
        try:
            data = json.loads(self.journal.read_text())
        except (OSError, ValueError):
            return []
        if data.get("key") != self._key():
            return []
        return [Trial(**t) for t in data.get("trials", [])]

    def _key(self) -> str:
        """What the journal's trials depend on: the training spec (the search block included) and the rows."""
        from eft.fingerprint import section_hash
        from eft.workspace import sha256_file

        return section_hash(self.ctx.spec, ("training", "mining.negatives", "base_model")) + ":" + sha256_file(
            self.ctx.input("prepare") / "train.jsonl")

    def _save(self) -> None:
        write_json_atomic(self.journal, {"key": self._key(), "trials": [dataclasses.asdict(t) for t in self.trials]})

    def run(self, scope: contextlib.ExitStack) -> Trial | None:
        """Run the trials not yet journaled; the best one (None when the search is off)."""
        from eft.stages.train.assemble import assemble_trainer, read_dev

        tr = self.ctx.spec.training
        pairs = candidates(tr.learning_rate, tr.temperature, self.n_trials)
        if len(pairs) < 2:
            return None
        if self.by_default and read_dev(self.ctx) is None:
            self.ctx.progress("search: skipped (on by default on one GPU, but the validation split is empty)")
            return None
        self.ctx.progress(f"search: {len(pairs)} trials{' (the default on one GPU)' if self.by_default else ''} of "
                          f"{self.spec.trial_fraction:g} of the run's steps each (learning rate, temperature), scored "
                          "by validation nDCG@10")
        for i, (lr, t) in enumerate(pairs[len(self.trials):], start=len(self.trials)):
            t0 = time.monotonic()
            trial_ctx = with_settings(self.ctx, lr, t, self.ctx.work / f"trial-{i}")
            trainer = assemble_trainer(trial_ctx, scope)
            if trainer.info.world_size > 1:
                raise StageFailed("train", "training.search runs in one process: set training.search.trials to 1 "
                                  "for distributed training")
            if trainer.dev is None:
                raise StageFailed("train", "training.search scores trials on the validation split, which is empty: "
                                  "set split.validation above 0 or training.search.trials to 1")
            trainer.step_limit = trial_steps(trainer.plan.total_steps, self.spec.trial_fraction)
            trainer.validate_base = False
            trainer.fit(scope)
            trial = Trial(lr, t, trainer.state.step, last_validation(trainer.state.curve), time.monotonic() - t0)
            del trainer
            _release_memory()
            self.trials.append(trial)
            self._save()
            self.ctx.progress(f"search: trial {i + 1}/{len(pairs)} lr {lr:g} temperature {t:g}: validation "
                              f"nDCG@10 {trial.val_ndcg10} after {trial.steps} steps ({trial.seconds:.0f}s)")
        best = best_trial(self.trials)
        self.ctx.progress(f"search: training with lr {best.learning_rate:g} temperature {best.temperature:g}")
        return best

    def report(self, chosen: Trial) -> dict[str, Any]:
        """For the manifest's details: the budget, every trial and the choice."""
        return {"trials": [t.as_dict() for t in self.trials], "trialFraction": self.spec.trial_fraction,
                "byDefault": self.by_default,
                "chosen": {"learningRate": chosen.learning_rate, "temperature": chosen.temperature},
                "seconds": round(sum(t.seconds for t in self.trials), 1)}


def _release_memory() -> None:
    """A finished trial's model, optimizer and token cache go before the next trial loads its own."""
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
