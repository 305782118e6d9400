"""The batch size: as the spec gives it, or for 'auto' the largest that fits (probed on a GPU), never
so large that an epoch has too few optimizer steps to learn from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from eft.stages.train.batches import BatchTensors
from eft.stages.train.distributed import DistInfo, allreduce_min
from eft.stages.train.loss import LossConfig, batch_loss
from eft.stages.train.modeling import uses_bf16

# On a CPU the time per row hardly depends on the batch, while with in-batch negatives each row is contrasted
# with batch - 1 passages, so a larger batch is more negatives for the same time. Memory bounds it: activations
# (dropout masks included) grow with rows x tokens. 'auto' keeps a budget of passage tokens per batch, never more
# than 64 rows, chosen so that a step's peak stays under 8 GB: measured in one script (2 cores, bundled model in
# training mode, 256-token NFCorpus passages, forward + backward + AdamW), peak RSS fp32 5.2 GB at 32 rows and
# 8.9 GB at 64; under bf16 autocast 4.9 GB at 32 and 7.9 GB at 64. So 8,192 tokens in fp32 (32 rows at 256) and
# 16,384 under bf16 (64 rows at 256, the batch the GPU runs were measured with).
CPU_DEFAULT_BATCH = 64
CPU_BATCH_TOKENS = 8192
CPU_BATCH_TOKENS_BF16 = 16384
GPU_PROBE_START = 1024
# 'auto' never picks a batch so large that an epoch has fewer optimizer steps than this: measured on
# NFCorpus (H200), the largest batch that fit (1024) left 24 steps for 3 epochs, far too few to learn.
MIN_STEPS_PER_EPOCH = 50
MIN_AUTO_BATCH = 8
CAPPED = f"capped for {MIN_STEPS_PER_EPOCH} steps per epoch"


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


def steps_cap(rows_per_epoch: int, world_size: int = 1) -> int:
    """The largest power of two (per rank, at least MIN_AUTO_BATCH) that leaves MIN_STEPS_PER_EPOCH steps."""
    per_rank = max(1, rows_per_epoch // (MIN_STEPS_PER_EPOCH * max(1, world_size)))
    b = MIN_AUTO_BATCH
    while b * 2 <= per_rank:
        b *= 2
    return b


def rows_used_per_epoch(rows, max_per_question: int | None) -> int:
    """Rows an epoch uses: every row, or at most ``max_per_question`` of each question's."""
    per_q = Counter(r.qid for r in rows).values()
    return sum(min(n, max_per_question) if max_per_question else n for n in per_q)


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
        default = cpu_default_batch(max_len, bf16=uses_bf16(info.device))
        b = max(1, min(default, limit))
        uncapped = b == min(default, max_rows)
        return BatchSizeChoice(b, "auto", "cpu-default" if uncapped else f"cpu-default, {CAPPED}")
    start = probe_start(limit)
    probe = GpuProbe(model, max_rows=max_rows, n_neg=n_neg, max_len=max_len, query_len=query_len, cfg=cfg, info=info)
    chosen, trials = largest_fitting(start, probe)
    if chosen == 0:
        raise RuntimeError(f"not even one training row of {max_len} tokens fits in GPU memory; lower maxSeqLength")
    chosen = allreduce_min(chosen, info)  # every rank trains the same shapes
    capped = rows_per_epoch is not None and start < min(GPU_PROBE_START, max_rows) and chosen == start
    return BatchSizeChoice(min(chosen, max_rows), "auto", f"gpu-probe, {CAPPED}" if capped else "gpu-probe", trials)


def cpu_default_batch(max_len: int, bf16: bool = False) -> int:
    """The largest power of two keeping a batch within the token budget (CPU_BATCH_TOKENS, or
    CPU_BATCH_TOKENS_BF16 under bf16 autocast) of passages of ``max_len`` tokens each, between
    MIN_AUTO_BATCH and CPU_DEFAULT_BATCH."""
    budget = CPU_BATCH_TOKENS_BF16 if bf16 else CPU_BATCH_TOKENS
    b = MIN_AUTO_BATCH
    while b * 2 <= min(CPU_DEFAULT_BATCH, budget // max(1, max_len)):
        b *= 2
    return b


def probe_start(limit: int) -> int:
    """The first batch size to try: the smallest power of two reaching ``limit``, at most GPU_PROBE_START
    and never above ``limit`` (a smaller, capped limit need not be a power of two)."""
    start = 1
    while start < min(GPU_PROBE_START, limit):
        start *= 2
    return min(start, GPU_PROBE_START, max(1, limit))


def largest_fitting(start: int, fits: Callable[[int], tuple[bool, int]]) -> tuple[int, list[dict[str, Any]]]:
    """Halve from ``start`` until ``fits(b)`` ((fits?, peak bytes)) says yes: (that size or 0, the trials)."""
    trials = []
    b = start
    while b >= 1:
        ok, peak = fits(b)
        trials.append({"batchSize": b, "fits": ok, "peakGiB": round(peak / 2**30, 2)})
        if ok:
            return b, trials
        b //= 2
    return 0, trials


class GpuProbe:
    """Does a batch of ``b`` full-length rows fit? A forward and backward of dummy rows, measured against
    the memory this process can have now, with room left for the optimizer's two moments."""

    def __init__(self, model, *, max_rows: int, n_neg: int, max_len: int, query_len: int, cfg: LossConfig,
                 info: DistInfo):
        self.model, self.max_rows, self.n_neg, self.cfg, self.info = model, max_rows, n_neg, cfg, info
        self.filler_q = " ".join(["x"] * query_len)
        self.filler_p = " ".join(["x"] * max_len)
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(torch.device(info.device))
        self.total = free + torch.cuda.memory_reserved(info.device)  # free memory plus this process's own cache
        self.opt_bytes = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)

    def __call__(self, b: int) -> tuple[bool, int]:
        device = self.info.device
        fits, peak = False, 0
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self._forward_backward(min(b, self.max_rows))
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            fits = peak + self.opt_bytes <= 0.9 * self.total
        except torch.OutOfMemoryError:
            fits = False
        finally:
            self.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        return fits, peak

    def _forward_backward(self, nb: int) -> None:
        """The graph is freed on return, before the next try."""
        n_passages = nb * (1 + self.n_neg)
        dummy = BatchTensors(queries=[self.filler_q] * nb, passages=[self.filler_p] * n_passages,
                             row_q=torch.arange(nb), pids=torch.arange(n_passages) + 10**9)
        batch_loss(self.model, dummy, self.cfg, self.info).backward()


def probe_query_length(model, rows, query_prefix: str, max_len: int) -> int:
    """Queries are probed at their real length (the longest of the first 2,000), not at maxSeqLength."""
    lengths = model.tokenizer([query_prefix + r.query for r in rows[:2000]])["input_ids"]
    return min(max_len, max(len(x) for x in lengths))
