"""train stage: contrastive fine-tuning of the base model on prepare/train.jsonl.

Inputs: prepare/train.jsonl (one row per question and positive, with hard negatives) and, for
validation, prepare/beir (split 'dev', when it has queries).

Each query is contrasted with its positive, its ``spec.training_negatives(device)`` hard negatives and (with
``training.inBatchNegatives``) every other passage of the (global) batch, at temperature
``training.temperature`` (loss.py). Batches never hold one question twice (sampler.py), and in-batch
passages that are known positives of a row's question are masked. AdamW with linear warmup/decay
(optim.py); bf16 autocast where the hardware has bf16 units (modeling.py), else fp32; batchSize 'auto'
probes the GPU's free memory and never leaves fewer than 50 optimizer steps per epoch (batch_size.py).
Every distinct query and passage is tokenized once before the first step (token_cache.py).
``training.compile`` runs the training steps through torch.compile (compiled_forward.py; by default on a GPU
for long runs only). Under torchrun every
rank trains on its slice of a global batch (distributed.py).

With ``training.search.trials`` > 1, short trials of learning rate and temperature run first and the real
run uses the best on the validation split (search.py).

Every epoch (and before the first, for the base model) the model is validated on the dev split
(validation.py). The best epoch is shipped (publish.py); epoch 0 means no epoch beat the untouched base
model on dev, and the base weights are shipped.

Checkpoints (model, optimizer, scheduler, RNG, data position; checkpoints.py) go to the stage's work
folder every ``settings.checkpoint_steps`` optimizer steps (default 500), every
``settings.checkpoint_seconds`` (default 600), at every epoch end and on SIGTERM; a re-run resumes from the
last one when the spec and data match.

Outputs: model/ (a sentence-transformers folder; query/passage prefixes saved as its 'query' and
'document' prompts), training_curve.csv, training_curve.png (curve.py).

Process settings (eft.settings.StageSettings, not part of the spec): device, checkpoint_steps,
checkpoint_seconds, token_cache (off: tokenize per batch instead of once), train_workers (tokenizer
processes when tokenizing per batch; default up to 8 on GPU, 0 on CPU) and stop_after_steps (test hook:
raise after that many steps as if the run were killed).
"""

from __future__ import annotations

import contextlib

from eft.pipeline import StageContext, StageFailed
from eft.workspace import StageResult


def run(ctx: StageContext) -> StageResult:
    import torch

    with contextlib.ExitStack() as scope:  # process-wide settings changed for the run are restored on exit
        try:
            return _train(ctx, scope)
        except torch.OutOfMemoryError as exc:
            raise _out_of_memory(ctx, exc) from None


def _train(ctx: StageContext, scope: contextlib.ExitStack) -> StageResult:
    # A function of its own: the trainer (model, optimizer, autograd state) is gone before the scope's
    # exit leaves the process group.
    from eft.stages.train.assemble import assemble_trainer
    from eft.stages.train.result import add_search_to_summary
    from eft.stages.train.search import Search, with_settings

    search = Search(ctx)
    chosen = search.run(scope)
    run_ctx = ctx if chosen is None else with_settings(ctx, chosen.learning_rate, chosen.temperature, ctx.work)
    trainer = assemble_trainer(run_ctx, scope)
    trainer.fit(scope)
    result = trainer.publish()
    if chosen is not None and trainer.info.is_main:
        result.details["search"] = search.report(chosen)
        result.counts["search_trials"] = len(search.trials)
        result.summary = add_search_to_summary(result.summary, result.details["search"])
    return result


def _out_of_memory(ctx: StageContext, exc: BaseException) -> StageFailed:
    first = str(exc).split(". ")[0]
    tr = ctx.spec.training
    return StageFailed("train", f"out of GPU memory during training ({first}) at training.batchSize {tr.batch_size} "
                       f"and baseModel.maxSeqLength {ctx.spec.base_model.max_seq_length}: lower either, turn on "
                       "training.gradientCheckpointing, or make sure no other process holds the GPU's memory")
