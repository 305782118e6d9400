"""Checkpoints of the train stage, in its crash-surviving work folder.

checkpoint.pt holds everything a re-run needs to continue where this one stopped (model, optimizer,
scheduler, RNG, data position, the chosen batch size) and the checkpoint key of the run that wrote it: a
re-run resumes from it only when its own key (spec, training rows, world size) is the same. best.pt
holds the weights of the best validated epoch so far. Both are written atomically: a kill mid-write
leaves the previous file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from eft.stages.train.distributed import DistInfo
from eft.stages.train.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger("eft.train")


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


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        # Our own file in the stage's work folder (it holds RNG states, not only tensors).
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: start over rather than fail
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None


class CheckpointStore:
    """checkpoint.pt and best.pt of one run, identified by its checkpoint key."""

    def __init__(self, work: Path, key: str):
        self.work = work
        self.key = key
        self.path = work / "checkpoint.pt"
        self.best_path = work / "best.pt"

    def load(self, progress: Callable[[str], None]) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None: none yet, unreadable, or another run's (then its best
        epoch's weights go too)."""
        ck = load_checkpoint(self.path)
        if ck is not None and ck.get("fingerprint") != self.key:
            log.warning("checkpoint in %s is for another spec or data; starting over", self.work)
            progress("found a checkpoint for another spec or data: starting over")
            self.best_path.unlink(missing_ok=True)
            return None
        return ck

    def save(self, *, batch_choice: dict[str, Any], model, optimizer, scheduler, state: dict[str, Any]) -> None:
        """Write checkpoint.pt (rank 0 only: every rank holds the same weights)."""
        atomic_torch_save({
            "fingerprint": self.key,
            "batch_choice": batch_choice,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "state": state,
        }, self.path)

    def save_best(self, model) -> None:
        atomic_torch_save(model.state_dict(), self.best_path)

    def load_best(self, device: str) -> dict[str, Any]:
        return torch.load(self.best_path, map_location=device, weights_only=True)


def restore(ck: dict[str, Any], *, model, optimizer, scheduler, info: DistInfo, seed: int) -> dict[str, Any]:
    """Load a checkpoint's weights, optimizer, scheduler and RNG; returns its loop state."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    state = ck["state"]
    if info.is_main:
        set_rng_state(ck["rng"])
    else:  # only rank 0's RNG is saved; other ranks continue from a seed derived from the step
        seed_everything(seed + 1000 * info.rank + state["step"])
    return state
