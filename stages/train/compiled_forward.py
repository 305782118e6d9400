"""torch.compile for the train stage's forward passes: when to, and falling back to eager when it fails.

The compiled handle wraps the very SentenceTransformer being trained (same parameters, same state_dict,
saved as usual); only the training steps call it. Validation and the batch-size probe call the model
itself, so the compiled graphs only ever see training mode and the training batch shapes. Shapes are
compiled dynamic from the start: a run sees short query batches and long passage batches, and a static
compile would compile each length bucket anew.

Why compile at all: on a GPU a small encoder's step is bounded by many small kernels (layer norms,
dropout, GELU, autocast casts) and the Python that launches them; the compiler fuses them. It helps
less than one might hope (12% on an H200, below) and costs a minute or more up front, hence 'auto' only
for long runs. ``bench/train_throughput.py --variants eager,compile`` measures both in one run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("eft.train")

# 'auto' compiles on a GPU when a rank trains at least this many rows. Measured on an H200 (2026-11-27,
# bench/results/2026-11-27-h200-throughput-compile.txt; MiniLM, batch 128, 4 hard negatives, 256 tokens):
# compiling cost 78 s in a fresh process (32 s with the compiler's on-disk cache warm) and saved 11.4 ms
# of a 94.6 ms step (1,353 -> 1,539 rows/s). 78 s / 11.4 ms = 6,800 steps of 128 rows = 870,000 rows, so
# runs shorter than about a million rows finish sooner uncompiled (NFCorpus, 250 steps of 64: 36 s eager,
# 69 s compiled).
COMPILE_MIN_ROWS = 1_000_000


def decide_compile(setting: str, device: str, rows_per_rank: int) -> tuple[bool, str]:
    """(compile?, why) for the spec's ``training.compile`` on ``device`` when one rank trains
    ``rows_per_rank`` rows (optimizer steps x batch size x gradient accumulation)."""
    if setting == "never":
        return False, "training.compile is 'never'"
    if setting == "always":
        return True, "training.compile is 'always'"
    if not device.startswith("cuda"):
        return False, "auto: not on a GPU (on a CPU the arithmetic, not kernel launches, bounds a step)"
    if rows_per_rank < COMPILE_MIN_ROWS:
        return False, (f"auto: {rows_per_rank:,} training rows, fewer than the {COMPILE_MIN_ROWS:,} that repay "
                       "compiling")
    return True, f"auto: GPU and {rows_per_rank:,} training rows (at least {COMPILE_MIN_ROWS:,})"


@dataclass
class TrainForward:
    """What the training steps call to run the model: compiled when asked and while it works."""

    model: Any
    wanted: bool
    reason: str
    compiled: Callable | None = None
    failure: str | None = None
    first_step_seconds: float | None = None
    _t0: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.wanted:
            import warnings

            import torch

            # sentence-transformers' Transformer.forward asks an lru_cache'd "is peft installed?"; Dynamo
            # traces through the cache and warns of a *potential* silent error in every run. The answer
            # cannot change during a run, so that one warning is noise here.
            warnings.filterwarnings("ignore", category=UserWarning,
                                    message=r"Dynamo detected a call to a `functools.lru_cache`-wrapped function "
                                            r"at 'transformer\.py")
            self.compiled = torch.compile(self.model, dynamic=True)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    @property
    def forward(self) -> Callable:
        return self.compiled if self.compiled is not None else self.model

    def step_started(self) -> None:
        if self.active and self.first_step_seconds is None and self._t0 is None:
            self._t0 = time.perf_counter()

    def step_finished(self) -> None:
        """After the first compiled step's backward: how long it took, compiling included."""
        if self._t0 is not None and self.first_step_seconds is None:
            self.first_step_seconds = round(time.perf_counter() - self._t0, 2)

    def give_up(self, exc: BaseException) -> None:
        """Compiling failed: train eagerly from here on, and say why (the first line of the error)."""
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.failure = f"{type(exc).__name__}: {first}"
        log.warning("torch.compile failed, training without it: %s", self.failure)
        self.compiled = None
        self._t0 = None

    def as_dict(self, setting: str) -> dict[str, Any]:
        d: dict[str, Any] = {"setting": setting, "enabled": self.active, "reason": self.reason}
        if self.first_step_seconds is not None:
            d["firstStepSeconds"] = self.first_step_seconds
        if self.failure:
            d["failed"] = self.failure
        return d
