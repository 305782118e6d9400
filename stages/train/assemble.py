"""Everything a training run needs before its first step, assembled from the stage context: the rows, the
dev split, the process group, the model and its batches, the checkpoint to resume from, the batch size,
the step plan and the optimizer."""

from __future__ import annotations

import contextlib

from eft import metrics
from eft.fingerprint import checkpoint_key
from eft.models import load_sentence_model, pick_device
from eft.pipeline import StageContext, StageFailed
from eft.stages.train.batch_size import BatchSizeChoice, choose_batch_size, probe_query_length, rows_used_per_epoch
from eft.stages.train.batches import TrainingSet, attach_token_cache, tokenizer_parallelism, tokenizer_workers
from eft.stages.train.checkpoints import CheckpointStore
from eft.stages.train.compiled_forward import TrainForward, decide_compile
from eft.stages.train.distributed import DistInfo, setup_distributed, teardown_distributed
from eft.stages.train.loss import LossConfig
from eft.stages.train.modeling import enable_gradient_checkpointing
from eft.stages.train.optim import Optimization, StepPlan, plan_steps
from eft.stages.train.rng import seed_everything
from eft.stages.train.rows import TrainDataError, fit_negatives, load_rows
from eft.stages.train.sampler import QidBatchSampler
from eft.stages.train.trainer import Trainer
from eft.stages.train.validation import load_dev
from eft.workspace import sha256_file


def fail(msg: str) -> StageFailed:
    return StageFailed("train", msg)


def assemble_trainer(ctx: StageContext, scope: contextlib.ExitStack) -> Trainer:
    """A Trainer ready to ``fit``: resumed from the work folder's checkpoint when it is this run's."""
    tr, bm = ctx.spec.training, ctx.spec.base_model
    dev = read_dev(ctx)
    info = join_process_group(ctx, scope)
    device = info.device
    data = read_training_set(ctx, device)
    seed_everything(tr.seed)
    ctx.progress(f"{len(data.rows)} rows, {data.n_questions} questions, {data.n_neg} hard negatives per row"
                 f"{f' ({data.padded} padded)' if data.padded else ''}; device {device}, world size {info.world_size}")
    train_len = ctx.spec.training_seq_length()
    ctx.progress(settings_line(tr, train_len, bm.max_seq_length))
    model = load_sentence_model(bm, device=device)
    # Training steps cut texts at the training length; validation and publishing restore the full one.
    model.max_seq_length = train_len
    workers, cache_facts = setup_feeding(ctx, data, model, device, scope)
    grad_ckpt = enable_gradient_checkpointing(model) if tr.gradient_checkpointing else False
    cfg = LossConfig(scale=1.0 / tr.temperature, n_neg=data.n_neg, in_batch=tr.in_batch_negatives,
                     known_pairs=data.known_pairs(device), n_ids=data.n_ids)
    rows_digest = sha256_file(ctx.input("prepare") / "train.jsonl")
    store = CheckpointStore(ctx.work, checkpoint_key(ctx.spec, rows=rows_digest, world=info.world_size,
                                                     maxRowsPerQuestion=tr.max_rows_per_question,
                                                     trainSeqLength=train_len))
    ck = store.load(ctx.progress)
    choice = BatchSizeChoice(**ck["batch_choice"]) if ck is not None else pick_batch_size(ctx, model, data, cfg, info)
    sampler = QidBatchSampler([r.qid for r in data.rows], choice.batch_size, tr.seed, info.world_size, info.rank,
                              max_per_qid=tr.max_rows_per_question)
    plan = plan_run(ctx, sampler, info)
    rows_per_rank = plan.total_steps * choice.batch_size * plan.accum
    trainer = Trainer(
        ctx=ctx, info=info, model=model, data=data, dev=dev, loss_cfg=cfg, choice=choice, sampler=sampler, plan=plan,
        forward=TrainForward(model, *decide_compile(tr.compile, device, rows_per_rank)),
        optim=Optimization.build(model, lr=tr.learning_rate, weight_decay=tr.weight_decay, device=device, plan=plan),
        store=store, workers=workers, token_cache=cache_facts, grad_ckpt=grad_ckpt)
    if ck is not None:
        trainer.resume(ck)
    elif info.enabled:  # each rank its own dropout masks
        seed_everything(tr.seed + 1000 * info.rank)
    return trainer


def settings_line(tr, train_len: int, full_len: int) -> str:
    """The training settings in one line, with the preset that filled the ones the spec left unset."""
    rows = "every row" if tr.max_rows_per_question is None else f"at most {tr.max_rows_per_question} rows"
    length = f"{train_len} tokens per text" + (f" (scored at {full_len})" if train_len != full_len else "")
    return (f"settings (preset {tr.preset}): lr {tr.learning_rate:g}, temperature {tr.temperature:g}, "
            f"{tr.epochs} epochs, {rows} per question per epoch, {length}")


def read_training_set(ctx: StageContext, device: str) -> TrainingSet:
    """prepare/train.jsonl, every row with exactly the spec's number of hard negatives on ``device``."""
    tr, bm = ctx.spec.training, ctx.spec.base_model
    try:
        rows = load_rows(ctx.input("prepare") / "train.jsonl")
        n_neg = ctx.spec.training_negatives(device)
        if n_neg == 0 and not tr.in_batch_negatives:
            raise TrainDataError("no negatives at all: set training.negatives > 0 or training.inBatchNegatives: true")
        rows, padded = fit_negatives(rows, n_neg, tr.seed)
    except TrainDataError as exc:
        raise fail(str(exc)) from None
    return TrainingSet(rows, n_neg, padded, bm.query_prefix, bm.passage_prefix)


def read_dev(ctx: StageContext):
    try:
        return load_dev(ctx.input("prepare") / "beir")
    except metrics.DatasetError as exc:
        raise fail(f"validation split: {exc}") from None


def join_process_group(ctx: StageContext, scope: contextlib.ExitStack) -> DistInfo:
    info = setup_distributed(pick_device(ctx.settings.device))
    # Leave the group on every way out (other ranks return early); in step with the others on success only.
    scope.push(lambda exc_type, *_: teardown_distributed(info, sync=exc_type is None))
    return info


def setup_feeding(ctx: StageContext, data: TrainingSet, model, device: str,
                  scope: contextlib.ExitStack) -> tuple[int, dict]:
    """Tokenize every text once when the settings allow; (tokenizer workers, token cache facts)."""
    facts = attach_token_cache(data, model, device, ctx.settings.token_cache)
    ctx.progress(f"token cache: {facts['summary']}")
    # With every text tokenized ahead, a batch is a numpy gather: no tokenizer processes are needed.
    workers = 0 if data.cache is not None else tokenizer_workers(device, ctx.settings.train_workers)
    scope.enter_context(tokenizer_parallelism(device, workers))
    return workers, facts


def pick_batch_size(ctx: StageContext, model, data: TrainingSet, cfg: LossConfig, info: DistInfo) -> BatchSizeChoice:
    tr, bm = ctx.spec.training, ctx.spec.base_model
    max_len = ctx.spec.training_seq_length()
    qlen = max_len
    if tr.batch_size == "auto" and info.device.startswith("cuda"):
        qlen = probe_query_length(model, data.rows, bm.query_prefix, max_len)
    try:
        choice = choose_batch_size(tr.batch_size, model, max_rows=max(1, data.n_questions // info.world_size),
                                   n_neg=data.n_neg, max_len=max_len, query_len=qlen, cfg=cfg, info=info,
                                   rows_per_epoch=rows_used_per_epoch(data.rows, tr.max_rows_per_question))
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    seed_everything(tr.seed)  # the probe consumed random numbers (dropout)
    return choice


def plan_run(ctx: StageContext, sampler: QidBatchSampler, info: DistInfo) -> StepPlan:
    tr = ctx.spec.training
    batches_per_epoch = [len(sampler.batches(e)) for e in range(tr.epochs)]
    if min(batches_per_epoch) == 0:
        raise fail(f"{len(sampler.qids)} rows make no complete batch of {sampler.batch_size} x {info.world_size} "
                   "ranks; use a smaller batchSize")
    return plan_steps(batches_per_epoch, tr.gradient_accumulation, tr.max_steps, tr.warmup_ratio)
