"""The training loop of the train stage: a Trainer owns the model, the optimizer and the loop's state, and
runs epochs of optimizer steps, validating after every epoch and checkpointing as it goes.

Why a loop of our own instead of sentence-transformers' SentenceTransformerTrainer (the model itself is a
plain SentenceTransformer, saved with its own ``save``):

- throughput: every distinct text is tokenized once for the whole run (token_cache.py) instead of in
  every batch of every epoch, one forward pass for all passages of a batch (positives and hard negatives
  together), no datasets/Trainer machinery per step (bench/train_throughput.py measures the difference
  on the same data, bench/train_step_breakdown.py where a step's time goes);
- correctness the stock loss does not offer: a sampler that never puts one question twice in a batch
  and a mask that removes in-batch passages that are known positives of the row's question;
- control over resumption: model, optimizer, scheduler, RNG and data position checkpointed atomically
  into the stage's crash-surviving work folder, and the largest batch that fits found by probing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from eft.pipeline import StageContext
from eft.stages.train.batch_size import BatchSizeChoice
from eft.stages.train.batches import BatchTensors, EpochBatches, TrainingSet, batch_stream
from eft.stages.train.checkpoints import CheckpointStore, restore
from eft.stages.train.compiled_forward import TrainForward
from eft.stages.train.curve import StepLog, write_curve
from eft.stages.train.distributed import DistInfo, allreduce_mean, barrier
from eft.stages.train.loss import LossConfig, batch_loss
from eft.stages.train.modeling import precision_name, sequence_length
from eft.stages.train.optim import Optimization, StepPlan
from eft.stages.train.publish import best_model, save_model
from eft.stages.train.result import stage_result
from eft.stages.train.sampler import QidBatchSampler
from eft.stages.train.validation import validate
from eft.workspace import StageResult


class TrainingInterrupted(RuntimeError):
    """Training stopped early: on SIGTERM (after saving a checkpoint) or by the test hook that simulates a
    killed run (settings.stop_after_steps). A re-run resumes from the last checkpoint."""


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint as a dict (the field names are the file format)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    micro: int = 0  # micro-batches of that epoch already consumed
    rows_seen: int = 0
    train_seconds: float = 0.0
    best_epoch: int | None = None
    best_ndcg: float | None = None
    last_validated_epoch: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trainer:
    ctx: StageContext
    info: DistInfo
    model: Any  # a SentenceTransformer
    data: TrainingSet
    dev: Any  # the dev split (metrics.BeirData) or None: no validation
    loss_cfg: LossConfig
    choice: BatchSizeChoice
    sampler: QidBatchSampler
    plan: StepPlan
    forward: TrainForward
    optim: Optimization
    store: CheckpointStore
    workers: int  # tokenizer processes (0: a background thread, or the token cache)
    token_cache: dict[str, Any]  # facts for the manifest
    grad_ckpt: bool
    state: TrainState = field(default_factory=TrainState)
    resumed_from: int | None = None  # the step of the checkpoint this run resumed from
    step_limit: int | None = None  # a search trial: stop (validated, checkpointed) after this many steps of the plan
    validate_base: bool = True  # score the untouched model first (search trials skip it: the real run does it)
    terminated: threading.Event = field(default_factory=threading.Event)  # SIGTERM arrived
    steps: StepLog | None = None
    last_checkpoint: float = 0.0  # time.monotonic() of the last checkpoint
    _group_loss: Any = 0.0  # summed micro-batch losses of the optimizer step in progress (on the device)
    _group_n: int = 0

    @property
    def tr(self):
        return self.ctx.spec.training

    @property
    def bm(self):
        return self.ctx.spec.base_model

    # ------------------------------------------------------------------------------------------ start

    def resume(self, ck: dict[str, Any]) -> None:
        o = self.optim
        self.state = TrainState(**restore(ck, model=self.model, optimizer=o.optimizer, scheduler=o.scheduler,
                                          info=self.info, seed=self.tr.seed))
        self.resumed_from = self.state.step
        self.ctx.progress(f"resumed from checkpoint at step {self.state.step} (epoch {self.state.epoch + 1}, "
                          f"batch {self.state.micro})")

    def announce(self) -> None:
        f = self.forward
        self.ctx.progress(f"batch size {self.choice.batch_size} ({self.choice.method}), {self.plan.total_steps} steps "
                          f"over {self.tr.epochs} epochs, {precision_name(self.info.device)}, "
                          f"{'compiled' if f.active else 'not compiled'} ({f.reason})")

    def checkpoint_on_sigterm(self, scope: contextlib.ExitStack) -> None:
        """SIGTERM (pod eviction, Ctrl-C of a runner) -> checkpoint at the next step boundary, then stop."""
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, lambda *_: self.terminated.set())
            scope.callback(signal.signal, signal.SIGTERM, old_handler)

    # ------------------------------------------------------------------------------------------ loop

    def fit(self, scope: contextlib.ExitStack) -> None:
        """Train to the end of the plan (a fresh run validates the base model first)."""
        # The handler goes in before the base model's validation: a SIGTERM during it (an eviction right after
        # the pod started) then checkpoints at the first step instead of killing the run with nothing saved.
        self.checkpoint_on_sigterm(scope)
        if self.resumed_from is None:
            self.announce()
            if self.validate_base:
                self.validate(0)
        self.model.train()
        self.last_checkpoint = time.monotonic()
        self.steps = StepLog(self.state, total_steps=self.last_step, epochs=self.tr.epochs,
                             progress=self.ctx.progress)
        for epoch in range(self.state.epoch, self.tr.epochs):
            if self.state.step >= self.last_step:
                break
            self.run_epoch(epoch)

    @property
    def last_step(self) -> int:
        """The step training ends at: the plan's last, or a search trial's limit."""
        return min(self.plan.total_steps, self.step_limit or self.plan.total_steps)

    def run_epoch(self, epoch: int) -> None:
        """The epoch's remaining micro-batches, then its validation and checkpoint."""
        batches = self.sampler.batches(epoch)
        nb = len(batches)
        self._group_loss, self._group_n = 0.0, 0
        self.steps.restart_clock()
        first = self.state.micro if epoch == self.state.epoch else 0  # past 0 when resuming mid-epoch
        stream = batch_stream(EpochBatches(self.data, batches), self.model, first, nb, self.workers,
                              pin=self.info.device.startswith("cuda"))
        for mi, batch in zip(range(first, nb), stream):
            if self.micro_step(batch, epoch, mi, nb):
                break
        self.steps.flush()
        stream.close()  # stopped early (maxSteps): no tokenization may still run during validation
        self.validate(epoch + 1)
        self.state.epoch, self.state.micro = epoch + 1, 0
        self.save_checkpoint()

    def micro_step(self, batch: BatchTensors, epoch: int, mi: int, nb: int) -> bool:
        """Forward and backward of micro-batch ``mi`` of ``nb``; an optimizer step after the last micro-batch of
        its group. True when training is done."""
        accum = self.plan.accum
        group_start = (mi // accum) * accum
        k = min(accum, nb - group_start)  # the epoch's last group may be short
        loss = self._forward_backward(batch, k, first_of_group=mi == group_start)
        self._group_loss = self._group_loss + loss.detach()
        self._group_n += 1
        self.state.rows_seen += len(batch.queries) * self.info.world_size
        if mi + 1 - group_start < k:
            return False
        self.optimizer_step(epoch + (mi + 1) / nb, micro=mi + 1)
        return self.after_step()

    def _forward_backward(self, batch: BatchTensors, k: int, first_of_group: bool) -> torch.Tensor:
        fwd = self.forward
        fwd.step_started()
        try:
            loss = batch_loss(self.model, batch, self.loss_cfg, self.info, forward=fwd.forward)
            (loss / k).backward()
            return loss
        except Exception as exc:
            # A model the compiler cannot handle trains eagerly. Only at a group's first micro-batch: the
            # gradients are still empty there, so nothing half-accumulated survives the retry.
            if not fwd.active or not first_of_group or isinstance(exc, torch.OutOfMemoryError):
                raise
            fwd.give_up(exc)
            self.optim.optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(self.model, batch, self.loss_cfg, self.info)
        (loss / k).backward()
        return loss

    def optimizer_step(self, epoch_position: float, micro: int) -> None:
        """Step the optimizer on the accumulated gradients and queue the step's curve row."""
        lr = self.optim.step(self.info)
        self.state.step += 1
        self.state.micro = micro
        step_loss = allreduce_mean(self._group_loss / self._group_n, self.info)
        self._group_loss, self._group_n = 0.0, 0
        self.steps.record({"step": self.state.step, "epoch": round(epoch_position, 4), "loss": "", "lr": lr,
                           "val_loss": "", "val_ndcg@10": ""}, step_loss)
        if self.forward.active and self.forward.first_step_seconds is None:
            self.steps.flush()  # the first compiled step, compiling included: timed on its own
            self.forward.step_finished()

    def after_step(self) -> bool:
        """Checkpoint when due, stop when asked to; True when the plan's last step is done."""
        step, settings = self.state.step, self.ctx.settings
        if step >= self.last_step:
            return True
        if (self.terminated.is_set() or step % settings.checkpoint_steps == 0
                or time.monotonic() - self.last_checkpoint > settings.checkpoint_seconds):
            self.steps.flush()
            self.save_checkpoint()
            self.steps.restart_clock()
            if self.terminated.is_set():
                raise TrainingInterrupted(f"terminated by signal; checkpoint saved at step {step}")
        if settings.stop_after_steps is not None and step >= settings.stop_after_steps:
            raise TrainingInterrupted(f"stopped after step {step} (stop_after_steps)")
        return False

    # ------------------------------------------------------------------------------------------ validation, checkpoints

    def validate(self, epoch: int) -> None:
        """Score the model on the dev split after ``epoch`` epochs (rank 0; the others wait)."""
        if self.dev is None:
            return
        if self.info.is_main:
            self._score_on_dev(epoch)
        self.model.train()
        barrier(self.info)

    def _score_on_dev(self, epoch: int) -> None:
        with sequence_length(self.model, self.bm.max_seq_length):  # scored as evaluate and serving will see it
            ndcg, vloss = validate(self.model, self.dev, self.bm.query_prefix, self.bm.passage_prefix,
                                   self.loss_cfg.scale)
        st = self.state
        st.curve.append({"step": st.step, "epoch": epoch, "loss": "", "lr": "", "val_loss": round(vloss, 6),
                         "val_ndcg@10": round(ndcg, 6), "train_seconds": round(st.train_seconds, 3)})
        st.last_validated_epoch = epoch
        if st.best_ndcg is None or ndcg > st.best_ndcg:
            st.best_ndcg, st.best_epoch = ndcg, epoch
            if epoch > 0:  # epoch 0 is the base model: reloaded, not saved
                self.store.save_best(self.model)
        self.ctx.progress(f"validation epoch {epoch}: nDCG@10 {ndcg:.4f}, loss {vloss:.4f}"
                          f"{' (best)' if st.best_epoch == epoch else ''}")

    def save_checkpoint(self) -> None:
        if self.info.is_main:
            o = self.optim
            self.store.save(batch_choice=asdict(self.choice), model=self.model, optimizer=o.optimizer,
                            scheduler=o.scheduler, state=asdict(self.state))
        barrier(self.info)
        self.last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------------------------------ publish

    def publish(self) -> StageResult:
        """Rank 0 writes the best validated epoch's model and the curve; every rank returns its result."""
        if not self.info.is_main:
            barrier(self.info)
            return StageResult(counts={"rank": self.info.rank}, details={"rank": self.info.rank}, summary=None)
        model, shipped = best_model(self.model, best_epoch=self.state.best_epoch, last_epoch=self.state.epoch,
                                    bm=self.bm, device=self.info.device, store=self.store)
        layout = save_model(model, self.ctx.out / "model", self.bm)
        write_curve(self.ctx.out, self.state.curve)
        barrier(self.info)
        return stage_result(self, shipped=shipped, layout=layout)
