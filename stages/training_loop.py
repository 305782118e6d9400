"""The contrastive training loop of the train stage.

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

Distributed training (torchrun: WORLD_SIZE, RANK, LOCAL_RANK) gathers passage embeddings from every
rank with an autograd-aware all_gather, so each query is contrasted with the global batch, and
all-reduces (averages) gradients before each optimizer step. Gradients flowing into another rank's
passages come back to that rank through the all_gather's backward, so the averaged gradient equals
the gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("eft.train")


# --------------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(1, 0, 0, device)
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        # Ranks other than 0 wait at a barrier while rank 0 validates (a corpus encode): allow for it.
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                timeout=timedelta(minutes=60))
    return DistInfo(world, rank, local, device)


def teardown_distributed(info: DistInfo, sync: bool = True) -> None:
    """Leave the process group, on every rank, once the last tensor that references it is gone and (with
    ``sync``, the success path) every rank is done communicating. A rank that exits while the group is
    still referenced or still talking can be aborted by the C++ runtime at exit ("terminate called without
    an active exception": 4 of 15 runs of the two-rank gloo test before this, 0 of 20 after). A failing
    rank leaves without the barrier so that it cannot hang waiting for the others."""
    if info.enabled:
        import gc

        import torch.distributed as dist

        gc.collect()  # autograd graphs of the cross-rank all_gather hold the group
        if dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()


def gather_with_grad(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``t`` from every rank (rank order) keeping the autograd graph to every rank's tensor."""
    if not info.enabled:
        return t
    import torch.distributed.nn.functional as dnf

    return torch.cat(dnf.all_gather(t), dim=0)


def gather_nograd(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def allreduce_gradients(params: list[torch.nn.Parameter], info: DistInfo, bucket_mb: int = 128) -> None:
    """Average gradients over ranks, in flat buckets of at most ``bucket_mb`` MiB per dtype."""
    if not info.enabled:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    limit = bucket_mb * 1024 * 1024
    buckets: list[list[torch.Tensor]] = []
    for dtype in dict.fromkeys(g.dtype for g in grads):
        cur: list[torch.Tensor] = []
        size = 0
        for g in (g for g in grads if g.dtype == dtype):
            nbytes = g.numel() * g.element_size()
            if cur and size + nbytes > limit:
                buckets.append(cur)
                cur, size = [], 0
            cur.append(g)
            size += nbytes
        if cur:
            buckets.append(cur)
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= info.world_size
        off = 0
        for g in bucket:
            g.copy_(flat[off : off + g.numel()].view_as(g))
            off += g.numel()


def allreduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks of a scalar tensor; the result stays on the device (nothing waits for the GPU)."""
    if not info.enabled:
        return x
    import torch.distributed as dist

    t = x.detach().to(torch.float64).reshape(1).clone()
    dist.all_reduce(t)
    return t / info.world_size


def allreduce_min(x: int, info: DistInfo) -> int:
    if not info.enabled:
        return x
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------------
# loss


def false_negative_mask(row_q: torch.Tensor, pids: torch.Tensor, labels: torch.Tensor,
                        known_pairs: torch.Tensor, n_ids: int) -> torch.Tensor:
    """[rows, passages] True where passage j is a known positive of row i's question but not row i's own
    positive column (another row's copy of the same passage, or a sibling positive of a multi-hop question).

    ``row_q``: question index per row; ``pids``: passage id per column; ``known_pairs``: sorted tensor of
    ``question_index * n_ids + passage_id`` for every (question, positive) pair of the training set.
    """
    keys = row_q[:, None] * n_ids + pids[None, :]
    mask = torch.isin(keys, known_pairs)
    mask[torch.arange(len(labels), device=labels.device), labels] = False
    return mask


def own_columns_mask(n_rows: int, n_neg: int, n_cols: int, offset: int, device) -> torch.Tensor:
    """[rows, passages] True where a column is NOT the row's own positive or one of its own hard negatives
    (used when in-batch negatives are off). Local columns: positives [0, n_rows) then n_neg per row."""
    mask = torch.ones(n_rows, n_cols, dtype=torch.bool, device=device)
    r = torch.arange(n_rows, device=device)
    mask[r, offset + r] = False
    for j in range(n_neg):
        mask[r, offset + n_rows + r * n_neg + j] = False
    return mask


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """InfoNCE: cross-entropy of cosine similarities * scale (1/temperature), masked columns excluded."""
    q = F.normalize(q.float(), dim=-1)
    p = F.normalize(p.float(), dim=-1)
    logits = q @ p.T * scale
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------------
# checkpoints


class TrainingInterrupted(RuntimeError):
    """Training stopped early: on SIGTERM (after saving a checkpoint) or by the test hook that simulates a
    killed run (EFT_TRAIN_STOP_AFTER_STEPS). A re-run resumes from the last checkpoint."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        # Our own file in the stage's work folder (it holds RNG states, not only tensors).
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: start over rather than fail
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None


# --------------------------------------------------------------------------------------------------
# model helpers


def enable_gradient_checkpointing(model) -> bool:
    """Turn on activation checkpointing in every Hugging Face model inside the SentenceTransformer."""
    done = False
    for m in model.modules():
        if m is model:
            continue
        fn = getattr(m, "activation_checkpointing_enable", None) or getattr(m, "gradient_checkpointing_enable", None)
        if fn is not None and getattr(m, "supports_gradient_checkpointing", False):
            try:
                fn({"use_reentrant": False})
            except TypeError:
                fn()
            done = True
    return done


def autocast_context(device: str):
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: str) -> str:
    return "bf16-autocast" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"


def to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}


def linear_warmup_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


# --------------------------------------------------------------------------------------------------
# the batch step, shared by training and the batch-size probe


@dataclass
class BatchTensors:
    queries: list[str]
    passages: list[str]  # local positives (one per row) then n_neg negatives per row
    row_q: torch.Tensor  # question index per row
    pids: torch.Tensor  # passage id per local passage column
    features: tuple[dict, dict] | None = None  # (queries, passages) tokenized ahead of time, see tokenize()

    def tokenize(self, model) -> BatchTensors:
        """Tokenize now (padding to the longest text of this batch); the loop does it one batch ahead in a
        background thread (the Rust tokenizer releases the GIL) so the accelerator never waits for it."""
        if self.features is None:
            self.features = (model.preprocess(self.queries), model.preprocess(self.passages))
        return self

    def pin_memory(self) -> BatchTensors:
        """Page-lock every tensor (DataLoader(pin_memory=True) calls this too). A copy to the GPU from
        ordinary (pageable) memory waits for the GPU's queue to drain first: one stall per tensor per step."""
        def pin(x):
            return x.pin_memory() if isinstance(x, torch.Tensor) else x

        self.row_q, self.pids = pin(self.row_q), pin(self.pids)
        if self.features is not None:
            self.features = tuple({k: pin(v) for k, v in f.items()} for f in self.features)
        return self


@dataclass
class LossConfig:
    scale: float
    n_neg: int
    in_batch: bool
    known_pairs: torch.Tensor  # sorted (question_index * n_ids + passage_id)
    n_ids: int


def batch_loss(model, batch: BatchTensors, cfg: LossConfig, info: DistInfo, forward=None) -> torch.Tensor:
    """Forward queries and passages (one forward each, padded to the batch's longest text) and the loss.
    ``forward``: what runs the model (a torch.compile'd handle on the same weights); default ``model``."""
    device = info.device
    forward = forward or model
    qf, pf = batch.tokenize(model).features
    qf, pf = to_device(qf, device), to_device(pf, device)
    with autocast_context(device):
        q = forward(qf)["sentence_embedding"]
        p = forward(pf)["sentence_embedding"]
    n = len(batch.queries)
    p_all = gather_with_grad(p.float(), info)
    pids = gather_nograd(batch.pids.to(device, non_blocking=True), info)
    offset = info.rank * p.shape[0]
    labels = torch.arange(n, device=device) + offset
    known = cfg.known_pairs if cfg.known_pairs.device == pids.device else cfg.known_pairs.to(device)
    mask = false_negative_mask(batch.row_q.to(device, non_blocking=True), pids, labels, known, cfg.n_ids)
    if not cfg.in_batch:
        mask |= own_columns_mask(n, cfg.n_neg, p_all.shape[0], offset, device)
    return contrastive_loss(q, p_all, labels, mask, cfg.scale)


# --------------------------------------------------------------------------------------------------
# feeding batches


def tokenizer_workers(device: str) -> int:
    """Processes that tokenize batches ahead of the accelerator (EFT_TRAIN_WORKERS overrides).

    On a GPU the tokenizer, not the model, bounds a small encoder's throughput (measured on an H200 VM:
    ~600 ms to tokenize 640 passages of 256 tokens on one core vs 76 ms for their bf16 forward and
    backward), so up to 8 worker processes tokenize whole batches in parallel. On CPU the model needs
    the cores: one background thread tokenizes the next batch instead (0 workers).
    """
    env = os.environ.get("EFT_TRAIN_WORKERS")
    if env not in (None, ""):
        return max(0, int(env))
    if not device.startswith("cuda"):
        return 0
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


@contextlib.contextmanager
def tokenizer_parallelism(device: str, workers: int):
    """Rust tokenizer threads: off in worker processes (parallelism comes from the processes and forking
    after threaded use makes the library warn), on when the main process tokenizes on a GPU machine."""
    key = "TOKENIZERS_PARALLELISM"
    old = os.environ.get(key)
    os.environ[key] = "false" if workers > 0 or not device.startswith("cuda") else "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


class _BatchSet(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], BatchTensors], model):
        self.make, self.model = make, model

    def __getitem__(self, i: int) -> BatchTensors:
        return self.make(i).tokenize(self.model)


def batch_stream(make: Callable[[int], BatchTensors], model, first: int, end: int, workers: int,
                 pin: bool = False):
    """Yield ``make(i).tokenize(model)`` for i in [first, end), prepared ahead of use: by ``workers`` forked
    processes (a DataLoader; batches arrive in order) or, with 0 workers, by one background thread one
    batch ahead (the Rust tokenizer releases the GIL); with ``pin`` (a CUDA device) in page-locked memory.
    Close the generator before using the tokenizer elsewhere (validation): closing waits for the
    background thread."""
    if first >= end:
        return
    if workers > 0:
        import multiprocessing as mp

        loader = torch.utils.data.DataLoader(
            _BatchSet(make, model), batch_size=None, sampler=range(first, end), num_workers=workers,
            prefetch_factor=2, multiprocessing_context=mp.get_context("fork"), collate_fn=lambda b: b,
            pin_memory=pin,
            generator=torch.Generator())  # its own seed source: the global RNG (dropout) stays as on CPU
        yield from loader
        return
    from concurrent.futures import ThreadPoolExecutor

    def ready(i: int) -> BatchTensors:
        b = make(i).tokenize(model)
        return b.pin_memory() if pin else b

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eft-tokenize") as pool:
        ahead = pool.submit(ready, first)
        for i in range(first, end):
            batch = ahead.result()
            ahead = pool.submit(ready, i + 1) if i + 1 < end else None
            yield batch
            if ahead is None:
                break


# --------------------------------------------------------------------------------------------------
# batch size


@dataclass
class BatchSizeChoice:
    batch_size: int
    requested: int | str
    method: str
    trials: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"requested": self.requested, "chosen": self.batch_size, "method": self.method}
        if self.trials:
            d["trials"] = self.trials
        return d


CPU_DEFAULT_BATCH = 32
GPU_PROBE_START = 1024
# 'auto' never picks a batch so large that an epoch has fewer optimizer steps than this: measured on
# NFCorpus (H200), the largest batch that fit (1024) left 24 steps for 3 epochs, far too few to learn.
MIN_STEPS_PER_EPOCH = 50
MIN_AUTO_BATCH = 8


def steps_cap(rows_per_epoch: int, world_size: int = 1) -> int:
    """The largest power of two (per rank, at least MIN_AUTO_BATCH) that leaves MIN_STEPS_PER_EPOCH steps."""
    per_rank = max(1, rows_per_epoch // (MIN_STEPS_PER_EPOCH * max(1, world_size)))
    b = MIN_AUTO_BATCH
    while b * 2 <= per_rank:
        b *= 2
    return b


def choose_batch_size(requested: int | str, model, *, max_rows: int, n_neg: int, max_len: int, query_len: int,
                      cfg: LossConfig, info: DistInfo, rows_per_epoch: int | None = None) -> BatchSizeChoice:
    """A fixed batch size as given; 'auto': on CPU a modest default, on GPU the largest power of two that
    runs a forward/backward at full length (halving on out-of-memory) with room left for the optimizer,
    in the memory that is free now (other processes may share the GPU). Either way no larger than leaves
    MIN_STEPS_PER_EPOCH optimizer steps per epoch when ``rows_per_epoch`` is known."""
    if requested != "auto":
        return BatchSizeChoice(min(int(requested), max_rows), requested, "spec")
    limit = min(max_rows, steps_cap(rows_per_epoch, info.world_size)) if rows_per_epoch else max_rows
    if not info.device.startswith("cuda"):
        b = max(1, min(CPU_DEFAULT_BATCH, limit))
        return BatchSizeChoice(b, "auto", "cpu-default" if b == min(CPU_DEFAULT_BATCH, max_rows) else
                               f"cpu-default, capped for {MIN_STEPS_PER_EPOCH} steps per epoch")
    start = 1
    while start < min(GPU_PROBE_START, limit):
        start *= 2
    start = min(start, GPU_PROBE_START, max(1, limit))
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(torch.device(info.device))
    total = free + torch.cuda.memory_reserved(info.device)  # what this process can have: free + its own cache
    opt_bytes = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    trials = []
    chosen = 0
    b = start
    filler_q = " ".join(["x"] * query_len)
    filler_p = " ".join(["x"] * max_len)
    while b >= 1:
        fits, peak = False, 0
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(info.device)
            nb = min(b, max_rows)
            dummy = BatchTensors(
                queries=[filler_q] * nb,
                passages=[filler_p] * (nb * (1 + n_neg)),
                row_q=torch.arange(nb),
                pids=torch.arange(nb * (1 + n_neg)) + 10**9,
            )
            loss = batch_loss(model, dummy, cfg, info)
            loss.backward()
            torch.cuda.synchronize(info.device)
            peak = torch.cuda.max_memory_allocated(info.device)
            fits = peak + opt_bytes <= 0.9 * total
        except torch.OutOfMemoryError:
            fits = False
        finally:
            model.zero_grad(set_to_none=True)
            loss = None  # noqa: F841 - drop the graph before the next try
            torch.cuda.empty_cache()
        trials.append({"batchSize": b, "fits": fits, "peakGiB": round(peak / 2**30, 2)})
        if fits:
            chosen = b
            break
        b //= 2
    if chosen == 0:
        raise RuntimeError(f"not even one training row of {max_len} tokens fits in GPU memory; lower maxSeqLength")
    chosen = allreduce_min(chosen, info)
    capped = rows_per_epoch is not None and start < min(GPU_PROBE_START, max_rows) and chosen == start
    return BatchSizeChoice(min(chosen, max_rows), "auto",
                           f"gpu-probe, capped for {MIN_STEPS_PER_EPOCH} steps per epoch" if capped else "gpu-probe",
                           trials)
