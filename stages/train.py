"""train stage: contrastive fine-tuning of the base model on prepare/train.jsonl.

Inputs: prepare/train.jsonl (one row per question and positive, with hard negatives) and, for
validation, prepare/beir (split 'dev', when it has queries).

Each query is contrasted with its positive, its ``spec.training_negatives()`` hard negatives and (with
``training.inBatchNegatives``) every other passage of the (global) batch, at temperature
``training.temperature``. Batches never hold one question twice, and in-batch passages that are known
positives of a row's question are masked (see stages/training_data.py and stages/training_loop.py).
AdamW with linear warmup/decay; bf16 autocast on GPU, fp32 on CPU; batchSize 'auto' probes the GPU's
free memory and never leaves fewer than 50 optimizer steps per epoch. Every distinct query and passage
is tokenized once before the first step (stages/token_cache.py). ``training.compile`` runs the training
steps through torch.compile (stages/compiled_forward.py; by default on a GPU for long runs only).

Every epoch (and before the first, for the base model) the model is validated on the dev split:
nDCG@10 and a loss (the dev queries' contrastive loss against the whole dev corpus at the training
temperature, all judged-relevant documents counting as positives). The best epoch is shipped; epoch 0
means no epoch beat the untouched base model on dev, and the base weights are shipped.

Checkpoints (model, optimizer, scheduler, RNG, data position) go to the stage's work folder every
``EFT_CHECKPOINT_STEPS`` optimizer steps (default 500), every ``EFT_CHECKPOINT_SECONDS`` (default 600),
at every epoch end and on SIGTERM; a re-run resumes from the last one when the spec and data match.

Outputs: model/ (a sentence-transformers folder; query/passage prefixes saved as its 'query' and
'document' prompts), training_curve.csv, training_curve.png.

Environment knobs (not part of the spec): EFT_CHECKPOINT_STEPS, EFT_CHECKPOINT_SECONDS,
EFT_TRAIN_STOP_AFTER_STEPS (test hook: raise after that many steps as if the run were killed),
EFT_TOKEN_CACHE=0 (tokenize per batch instead of once), EFT_TRAIN_WORKERS (tokenizer processes when
tokenizing per batch; default up to 8 on GPU, 0 on CPU).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eft.pipeline import StageContext, StageFailed
from eft.workspace import StageResult

log = logging.getLogger("eft.train")

# train_seconds: training time (steps only) when the step finished; throughput over any window of steps.
CURVE_FIELDS = ("step", "epoch", "loss", "lr", "val_loss", "val_ndcg@10", "train_seconds")
GPU_PAD_MULTIPLE = 32  # batch lengths on a GPU: multiples of this (see TokenCache.pad_multiple)


@dataclass
class TrainOptions:
    checkpoint_steps: int = 500
    checkpoint_seconds: float = 600.0
    stop_after_steps: int | None = None
    # Tokenize distinct texts once (token_cache.py); EFT_TOKEN_CACHE=0 tokenizes per batch instead.
    token_cache: bool = True

    @classmethod
    def from_env(cls) -> TrainOptions:
        def num(name: str, default, cast):
            v = os.environ.get(name)
            return cast(v) if v not in (None, "") else default

        return cls(
            checkpoint_steps=max(1, num("EFT_CHECKPOINT_STEPS", 500, int)),
            checkpoint_seconds=num("EFT_CHECKPOINT_SECONDS", 600.0, float),
            stop_after_steps=num("EFT_TRAIN_STOP_AFTER_STEPS", None, int),
            token_cache=os.environ.get("EFT_TOKEN_CACHE", "1").strip().lower() not in ("0", "false", "no", "off"),
        )


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    micro: int = 0  # micro-batches of that epoch already consumed
    rows_seen: int = 0
    train_seconds: float = 0.0
    best_epoch: int | None = None
    best_ndcg: float | None = None
    last_validated_epoch: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)


def run(ctx: StageContext) -> StageResult:
    return train(ctx, TrainOptions.from_env())


def _fail(msg: str) -> StageFailed:
    return StageFailed("train", msg)


def train(ctx: StageContext, opts: TrainOptions) -> StageResult:
    import torch

    with contextlib.ExitStack() as scope:  # process-wide settings changed for the run are restored on exit
        try:
            return _train(ctx, opts, scope)
        except torch.OutOfMemoryError as exc:
            first = str(exc).split(". ")[0]
            tr = ctx.spec.training
            raise _fail(f"out of GPU memory during training ({first}) at training.batchSize {tr.batch_size} "
                        f"and baseModel.maxSeqLength {ctx.spec.base_model.max_seq_length}: lower either, turn on "
                        "training.gradientCheckpointing, or make sure no other process holds the GPU's memory") from None


def _train(ctx: StageContext, opts: TrainOptions, scope: contextlib.ExitStack) -> StageResult:
    import torch

    from eft import metrics
    from eft.models import load_sentence_model, pick_device
    from eft.fingerprint import checkpoint_key
    from eft.workspace import sha256_file
    from eft.stages import training_loop as tl
    from eft.stages.compiled_forward import TrainForward, decide_compile
    from eft.stages.training_data import QidBatchSampler, TrainDataError, fit_negatives, load_rows

    spec = ctx.spec
    tr = spec.training
    bm = spec.base_model
    prep = ctx.input("prepare")
    train_path = prep / "train.jsonl"
    try:
        rows = load_rows(train_path)
        n_neg = spec.training_negatives()
        if n_neg == 0 and not tr.in_batch_negatives:
            raise TrainDataError("no negatives at all: set training.negatives > 0 or training.inBatchNegatives: true")
        rows, padded = fit_negatives(rows, n_neg, tr.seed)
    except TrainDataError as exc:
        raise _fail(str(exc)) from None

    dev = None
    beir_dir = prep / "beir"
    if metrics.has_split(beir_dir, "dev"):
        try:
            dev = metrics.load_beir(beir_dir, "dev")
        except metrics.DatasetError as exc:
            raise _fail(f"validation split: {exc}") from None

    info = tl.setup_distributed(pick_device())
    # Leave the group on every way out (other ranks return early); in step with the others on success only.
    scope.push(lambda exc_type, *_: tl.teardown_distributed(info, sync=exc_type is None))
    device = info.device
    tl.seed_everything(tr.seed)
    ctx.progress(f"{len(rows)} rows, {len({r.qid for r in rows})} questions, {n_neg} hard negatives per row"
                 f"{f' ({padded} padded)' if padded else ''}; device {device}, world size {info.world_size}")
    model = load_sentence_model(bm, device=device)
    cache, cache_info = (_token_cache(model, rows, bm.query_prefix, bm.passage_prefix) if opts.token_cache
                         else (None, {"enabled": False, "summary": "off (EFT_TOKEN_CACHE=0)"}))
    if cache is not None and device.startswith("cuda"):
        cache.pad_multiple = cache_info["padMultiple"] = GPU_PAD_MULTIPLE
    ctx.progress(f"token cache: {cache_info['summary']}")
    # With every text tokenized ahead, a batch is a numpy gather: no tokenizer processes are needed.
    workers = 0 if cache is not None else tl.tokenizer_workers(device)
    scope.enter_context(tl.tokenizer_parallelism(device, workers))
    grad_ckpt = tl.enable_gradient_checkpointing(model) if tr.gradient_checkpointing else False

    # Integer ids for the false-negative mask: question index * n_ids + passage index.
    qindex = {q: i for i, q in enumerate(dict.fromkeys(r.qid for r in rows))}
    pindex: dict[str, int] = {}
    for r in rows:
        for pid in (r.pos_id, *r.neg_ids):
            pindex.setdefault(pid, len(pindex))
    n_ids = len(pindex)
    known_pairs = torch.tensor(sorted({qindex[r.qid] * n_ids + pindex[r.pos_id] for r in rows}), dtype=torch.long,
                               device=device)
    cfg = tl.LossConfig(scale=1.0 / tr.temperature, n_neg=n_neg, in_batch=tr.in_batch_negatives,
                        known_pairs=known_pairs, n_ids=n_ids)

    fingerprint = checkpoint_key(spec, rows=sha256_file(train_path), world=info.world_size,
                                 maxRowsPerQuestion=tr.max_rows_per_question)
    ckpt_path = ctx.work / "checkpoint.pt"
    best_path = ctx.work / "best.pt"
    ck = tl.load_checkpoint(ckpt_path)
    if ck is not None and ck.get("fingerprint") != fingerprint:
        log.warning("checkpoint in %s is for another spec or data; starting over", ctx.work)
        ctx.progress("found a checkpoint for another spec or data: starting over")
        ck = None
        best_path.unlink(missing_ok=True)

    n_questions = len(qindex)
    per_rank_rows = max(1, n_questions // info.world_size)
    if ck is not None:
        choice = tl.BatchSizeChoice(**ck["batch_choice"])
    else:
        qlen = bm.max_seq_length
        if tr.batch_size == "auto" and device.startswith("cuda"):  # probe queries at their real length
            qlen = min(qlen, max(len(x) for x in model.tokenizer([bm.query_prefix + r.query for r in rows[:2000]])["input_ids"]))
        try:
            choice = tl.choose_batch_size(tr.batch_size, model, max_rows=per_rank_rows, n_neg=n_neg,
                                          max_len=bm.max_seq_length, query_len=qlen, cfg=cfg, info=info,
                                          rows_per_epoch=_rows_per_epoch(rows, tr.max_rows_per_question))
        except RuntimeError as exc:
            raise _fail(str(exc)) from None
        tl.seed_everything(tr.seed)  # the probe consumed random numbers (dropout)
    bs = choice.batch_size
    sampler = QidBatchSampler([r.qid for r in rows], bs, tr.seed, info.world_size, info.rank,
                              max_per_qid=tr.max_rows_per_question)
    accum = tr.gradient_accumulation
    batches_per_epoch = [len(sampler.batches(e)) for e in range(tr.epochs)]
    if min(batches_per_epoch) == 0:
        raise _fail(f"{len(rows)} rows make no complete batch of {bs} x {info.world_size} ranks; use a smaller batchSize")
    steps_per_epoch = [math.ceil(n / accum) for n in batches_per_epoch]
    total_steps = sum(steps_per_epoch)
    if tr.max_steps:
        total_steps = min(total_steps, tr.max_steps)
    warmup = math.ceil(total_steps * tr.warmup_ratio)
    train_fwd = TrainForward(model, *decide_compile(tr.compile, device, total_steps * bs * accum))

    params = [p for p in model.parameters() if p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "LayerNorm" in n or "norm" in n.lower())]
    no_decay_ids = {id(p) for p in no_decay}
    groups = [
        {"params": [p for p in params if id(p) not in no_decay_ids], "weight_decay": tr.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=tr.learning_rate, fused=device.startswith("cuda") or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, tl.linear_warmup_lambda(warmup, total_steps))

    state = LoopState()
    resumed_from = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        state = LoopState(**ck["state"])
        if info.is_main:
            tl.set_rng_state(ck["rng"])
        else:  # only rank 0's RNG is saved; other ranks continue from a seed derived from the step
            tl.seed_everything(tr.seed + 1000 * info.rank + state.step)
        resumed_from = state.step
        ctx.progress(f"resumed from checkpoint at step {state.step} (epoch {state.epoch + 1}, batch {state.micro})")
        del ck
    elif info.enabled:
        tl.seed_everything(tr.seed + 1000 * info.rank)

    def validate(epoch: int) -> None:
        if dev is None:
            return
        if info.is_main:
            ndcg, vloss = _validate(model, dev, bm.query_prefix, bm.passage_prefix, cfg.scale)
            state.curve.append({"step": state.step, "epoch": epoch, "loss": "", "lr": "",
                                "val_loss": round(vloss, 6), "val_ndcg@10": round(ndcg, 6),
                                "train_seconds": round(state.train_seconds, 3)})
            state.last_validated_epoch = epoch
            if state.best_ndcg is None or ndcg > state.best_ndcg:
                state.best_ndcg, state.best_epoch = ndcg, epoch
                if epoch > 0:
                    tl.atomic_torch_save(model.state_dict(), best_path)
            ctx.progress(f"validation epoch {epoch}: nDCG@10 {ndcg:.4f}, loss {vloss:.4f}"
                         f"{' (best)' if state.best_epoch == epoch else ''}")
        model.train()
        tl.barrier(info)

    def save_checkpoint() -> None:
        if info.is_main:
            tl.atomic_torch_save({
                "fingerprint": fingerprint,
                "batch_choice": asdict(choice),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": tl.rng_state(),
                "state": asdict(state),
            }, ckpt_path)
        tl.barrier(info)

    if resumed_from is None:
        ctx.progress(f"batch size {bs} ({choice.method}), {total_steps} steps over {tr.epochs} epochs, "
                     f"{tl.precision_name(device)}, {'compiled' if train_fwd.active else 'not compiled'} "
                     f"({train_fwd.reason})")
        validate(0)

    # SIGTERM (pod eviction, Ctrl-C of a runner) -> checkpoint at the next step boundary, then stop.
    terminated = threading.Event()
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
        scope.callback(signal.signal, signal.SIGTERM, old_handler)

    model.train()
    last_ckpt_time = time.monotonic()
    last_report = [time.monotonic()]
    # The step whose loss is still on the device. Reading a loss back makes the host wait for the GPU, so
    # each step's loss is read after the next step has been queued: the GPU never idles for the read, and
    # the host never runs more than one step ahead (so train_seconds stays true to within a step).
    pending: list[tuple[dict[str, Any], Any]] = []
    clock = [time.perf_counter()]

    def flush() -> None:
        """Record the pending step, if any: its loss (waits for the GPU to finish it) and the time it finished."""
        row = None
        if pending:
            row, loss_t = pending.pop()
            row["loss"] = round(float(loss_t), 6)
        now = time.perf_counter()
        state.train_seconds += now - clock[0]
        clock[0] = now
        if row is None:
            return
        row["train_seconds"] = round(state.train_seconds, 3)
        state.curve.append(row)
        if time.monotonic() - last_report[0] > 30 or row["step"] == total_steps:
            last_report[0] = time.monotonic()
            ctx.progress(f"step {row['step']}/{total_steps} epoch {math.ceil(row['epoch'])}/{tr.epochs} "
                         f"loss {row['loss']:.4f} lr {row['lr']:.2e} "
                         f"{state.rows_seen / max(state.train_seconds, 1e-9):.1f} rows/s")

    def restart_clock() -> None:  # after work that is not training (checkpoints, validation)
        clock[0] = time.perf_counter()

    def forward_backward(batch, k: int, first_of_group: bool):
        train_fwd.step_started()
        try:
            loss = tl.batch_loss(model, batch, cfg, info, forward=train_fwd.forward)
            (loss / k).backward()
            return loss
        except Exception as exc:
            # A model the compiler cannot handle trains eagerly. Only at a group's first micro-batch: the
            # gradients are still empty there, so nothing half-accumulated survives the retry.
            if not train_fwd.active or not first_of_group or isinstance(exc, torch.OutOfMemoryError):
                raise
            train_fwd.give_up(exc)
            optimizer.zero_grad(set_to_none=True)
        loss = tl.batch_loss(model, batch, cfg, info)
        (loss / k).backward()
        return loss

    done = state.step >= total_steps
    for epoch in range(state.epoch, tr.epochs):
        if done:
            break
        batches = sampler.batches(epoch)
        nb = len(batches)
        group_loss, group_n = 0.0, 0
        restart_clock()
        first = state.micro if epoch == state.epoch else 0

        def prepare(i: int, batches=batches):
            return _make_batch(rows, batches[i], bm.query_prefix, bm.passage_prefix, qindex, pindex, cache)

        stream = tl.batch_stream(prepare, model, first, nb, workers, pin=device.startswith("cuda"))
        for mi, batch in zip(range(first, nb), stream):
            idx = batches[mi]
            group_start = (mi // accum) * accum
            k = min(accum, nb - group_start)
            loss = forward_backward(batch, k, mi == group_start)
            group_loss = group_loss + loss.detach()
            group_n += 1
            state.rows_seen += len(idx) * info.world_size
            if mi + 1 - group_start < k:
                continue
            tl.allreduce_gradients(params, info)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.micro = mi + 1
            step_loss = tl.allreduce_mean(group_loss / group_n, info)
            group_loss, group_n = 0.0, 0
            flush()  # the previous step
            pending.append(({"step": state.step, "epoch": round(epoch + (mi + 1) / nb, 4), "loss": "", "lr": lr,
                             "val_loss": "", "val_ndcg@10": ""}, step_loss))
            if train_fwd.active and train_fwd.first_step_seconds is None:
                flush()  # the first compiled step, compiling included: timed on its own
                train_fwd.step_finished()
            if state.step >= total_steps:
                done = True
                break
            stop_now = opts.stop_after_steps is not None and state.step >= opts.stop_after_steps
            if (terminated.is_set() or state.step % opts.checkpoint_steps == 0
                    or time.monotonic() - last_ckpt_time > opts.checkpoint_seconds):
                flush()
                save_checkpoint()
                last_ckpt_time = time.monotonic()
                restart_clock()
                if terminated.is_set():
                    raise tl.TrainingInterrupted(f"terminated by signal; checkpoint saved at step {state.step}")
            if stop_now:
                raise tl.TrainingInterrupted(f"stopped after step {state.step} (EFT_TRAIN_STOP_AFTER_STEPS)")
        flush()
        stream.close()  # stopped early (maxSteps): no tokenization may still run during validation
        validate(epoch + 1)
        state.epoch, state.micro = epoch + 1, 0
        save_checkpoint()
        last_ckpt_time = time.monotonic()

    epochs_run = state.epoch
    if not info.is_main:
        tl.barrier(info)
        return StageResult(counts={"rank": info.rank}, details={"rank": info.rank}, summary=None)

    # Ship the best validated epoch: 0 = the base weights, the last = the model in memory.
    shipped = "last"
    if state.best_epoch is not None and state.best_epoch != epochs_run:
        if state.best_epoch == 0:
            model = load_sentence_model(bm, device=device)
            shipped = "base"
        else:
            model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
            shipped = f"epoch {state.best_epoch}"
    model.eval()
    prompts = {k: v for k, v in (("query", bm.query_prefix), ("document", bm.passage_prefix)) if v}
    if prompts:
        model.prompts = {**(model.prompts or {}), **prompts}
    model.save(str(ctx.out / "model"), create_model_card=False)
    layout = _classic_layout(ctx.out / "model", int(model.max_seq_length))
    _write_curve(ctx.out, state.curve)
    tl.barrier(info)

    rows_per_second = state.rows_seen / state.train_seconds if state.train_seconds > 0 else 0.0
    counts = {
        "rows": len(rows),
        "steps": state.step,
        "epochs": epochs_run,
        "batch_size": bs,
        "best_epoch": state.best_epoch,
        "best_val_ndcg@10": None if state.best_ndcg is None else round(state.best_ndcg, 4),
        "rows_per_second": round(rows_per_second, 2),
    }
    base_val = next((c["val_ndcg@10"] for c in state.curve if c["epoch"] == 0 and c["val_ndcg@10"] != ""), None)
    details = {
        "modelLayout": layout,
        "batchSize": choice.as_dict(),
        "device": device,
        "precision": tl.precision_name(device),
        "worldSize": info.world_size,
        "globalBatchSize": bs * info.world_size,
        "gradientAccumulation": accum,
        "gradientCheckpointing": grad_ckpt,
        "compile": train_fwd.as_dict(tr.compile),
        "tokenizerWorkers": workers,
        "tokenCache": {k: v for k, v in cache_info.items() if k != "summary"},
        "maxRowsPerQuestion": tr.max_rows_per_question,
        "rowsPerEpoch": sum(len(b) for b in sampler.batches(0)) * info.world_size,
        "negativesPerRow": n_neg,
        "negativesPadded": padded,
        "inBatchNegatives": tr.in_batch_negatives,
        "temperature": tr.temperature,
        "totalSteps": total_steps,
        "warmupSteps": warmup,
        "questions": n_questions,
        "devQueries": 0 if dev is None else len(dev.queries),
        "baseValNdcg@10": base_val,
        "shipped": shipped,
        "resumedFromStep": resumed_from,
        "trainSeconds": round(state.train_seconds, 1),
        "seed": tr.seed,
        "maxSeqLength": bm.max_seq_length,
    }
    summary = {"rows": len(rows), "steps": state.step, "batchSize": bs, "bestEpoch": state.best_epoch,
               "bestValNdcg10": counts["best_val_ndcg@10"], "rowsPerSecond": counts["rows_per_second"]}
    return StageResult(counts=counts, details=details, summary=json.dumps(summary, separators=(",", ":")))


def _rows_per_epoch(rows, max_per_question: int | None) -> int:
    """Rows an epoch uses: every row, or at most ``max_per_question`` of each question's."""
    from collections import Counter

    per_q = Counter(r.qid for r in rows).values()
    return sum(min(n, max_per_question) if max_per_question else n for n in per_q)


def _classic_layout(folder: Path, max_seq_length: int) -> str:
    """Write the shipped folder in the classic sentence-transformers layout (see eft/model_folder.py)."""
    from eft.model_folder import LayoutError, write_classic_layout

    try:
        write_classic_layout(folder, max_seq_length)
    except LayoutError as exc:  # the folder still loads in sentence-transformers >= 6; say why it is not classic
        log.warning("model folder kept in the sentence-transformers 6 layout: %s", exc)
        return f"sentence-transformers 6 ({exc})"
    return "classic sentence-transformers"


def _token_cache(model, rows, qprefix: str, pprefix: str):
    """Tokenize every distinct query and passage once (see token_cache); (cache or None, facts for the manifest)."""
    from eft.stages.token_cache import build_token_cache

    texts = [qprefix + r.query for r in rows]
    texts += [pprefix + t for r in rows for t in (r.pos_text, *r.neg_texts)]
    t0 = time.perf_counter()
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # once, before training: every core may tokenize
    try:
        cache = build_token_cache(model, texts)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    seconds = round(time.perf_counter() - t0, 2)
    if cache is None:
        return None, {"enabled": False, "seconds": seconds,
                      "summary": f"off (tokenizing per batch; see the log), {seconds}s"}
    return cache, {"enabled": True, "texts": len(cache), "tokens": cache.tokens, "textSlots": len(texts),
                   "seconds": seconds,
                   "summary": f"{len(cache)} distinct texts for {len(texts)} uses, {cache.tokens} tokens, {seconds}s"}


def _make_batch(rows, idx, qprefix, pprefix, qindex, pindex, cache=None):
    import torch

    from eft.stages.training_loop import BatchTensors

    sel = [rows[i] for i in idx]
    queries = [qprefix + r.query for r in sel]
    passages = [pprefix + r.pos_text for r in sel] + [pprefix + t for r in sel for t in r.neg_texts]
    pids = [pindex[r.pos_id] for r in sel] + [pindex[p] for r in sel for p in r.neg_ids]
    return BatchTensors(
        queries=queries,
        passages=passages,
        row_q=torch.tensor([qindex[r.qid] for r in sel], dtype=torch.long),
        pids=torch.tensor(pids, dtype=torch.long),
        features=None if cache is None else (cache.features(queries), cache.features(passages)),
    )


def _validate(model, dev, qprefix: str, pprefix: str, scale: float) -> tuple[float, float]:
    """(nDCG@10, contrastive loss of the dev queries against the whole dev corpus)."""
    import torch

    from eft import metrics

    r = metrics.retrieve(model, dev, top_k=10, query_prefix=qprefix, passage_prefix=pprefix)
    ndcg = metrics.score(dev.qrels, r.results, [10])["ndcg@10"]
    doc_pos = {d: i for i, d in enumerate(r.doc_ids)}
    c = torch.from_numpy(r.corpus_emb)
    losses = []
    for s in range(0, len(r.query_ids), 256):
        q = torch.from_numpy(r.query_emb[s : s + 256])
        logits = q @ c.T * scale
        lse_all = torch.logsumexp(logits, dim=1)
        for i, qid in enumerate(r.query_ids[s : s + 256]):
            rel = [doc_pos[d] for d, g in dev.qrels[qid].items() if g > 0 and d in doc_pos]
            if rel:
                losses.append(float(lse_all[i] - torch.logsumexp(logits[i, rel], dim=0)))
    return ndcg, (sum(losses) / len(losses) if losses else float("nan"))


def _write_curve(out: Path, curve: list[dict[str, Any]]) -> None:
    with open(out / "training_curve.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for row in curve:
            w.writerow({k: row.get(k, "") for k in CURVE_FIELDS})
    try:
        _plot_curve(out / "training_curve.png", curve)
    except Exception as exc:  # a plot is a nicety; never fail the stage for it
        log.warning("could not draw the training curve: %s", exc)


def _plot_curve(path: Path, curve: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps = [c["step"] for c in curve if c["loss"] != ""]
    losses = [c["loss"] for c in curve if c["loss"] != ""]
    val = [c for c in curve if c["val_ndcg@10"] != ""]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax1.plot(steps, losses, lw=0.8, alpha=0.5, label="train loss")
        w = max(1, len(losses) // 20)
        if w > 1:
            smooth = [sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1]) for i in range(len(losses))]
            ax1.plot(steps, smooth, lw=1.5, label=f"train loss (mean of {w})")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.legend(loc="upper right")
    if val:
        ep = [c["epoch"] for c in val]
        ax2.plot(ep, [c["val_ndcg@10"] for c in val], "o-", color="tab:green", label="val nDCG@10")
        ax2.set_xlabel("epoch (0 = base model)")
        ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax2.set_ylabel("nDCG@10", color="tab:green")
        ax3 = ax2.twinx()
        ax3.plot(ep, [c["val_loss"] for c in val], "s--", color="tab:red", label="val loss")
        ax3.set_ylabel("val loss", color="tab:red")
        ax2.set_title("validation (dev split)")
    else:
        ax2.text(0.5, 0.5, "no dev split: no validation", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
