"""Distributed training under torchrun (WORLD_SIZE, RANK, LOCAL_RANK): joining and leaving the process
group and the collectives the train stage needs.

Passage embeddings are gathered from every rank with an autograd-aware all_gather, so each query is
contrasted with the global batch, and gradients are all-reduced (averaged) before each optimizer step.
Gradients flowing into another rank's passages come back to that rank through the all_gather's backward,
so the averaged gradient equals the gradient of the mean loss over the global batch.

Every helper is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


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
    an active exception"). A failing rank leaves without the barrier so that it cannot hang waiting for
    the others."""
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


def gradient_buckets(grads: list[torch.Tensor], limit_bytes: int) -> list[list[torch.Tensor]]:
    """``grads`` grouped by dtype, then cut into consecutive buckets of at most ``limit_bytes`` (a single
    larger tensor gets a bucket of its own): one flat all_reduce per bucket."""
    buckets: list[list[torch.Tensor]] = []
    for dtype in dict.fromkeys(g.dtype for g in grads):
        cur: list[torch.Tensor] = []
        size = 0
        for g in (g for g in grads if g.dtype == dtype):
            nbytes = g.numel() * g.element_size()
            if cur and size + nbytes > limit_bytes:
                buckets.append(cur)
                cur, size = [], 0
            cur.append(g)
            size += nbytes
        if cur:
            buckets.append(cur)
    return buckets


def allreduce_gradients(params: list[torch.nn.Parameter], info: DistInfo, bucket_mb: int = 128) -> None:
    """Average gradients over ranks, in flat buckets of at most ``bucket_mb`` MiB per dtype."""
    if not info.enabled:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    for bucket in gradient_buckets(grads, bucket_mb * 1024 * 1024):
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
