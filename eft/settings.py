"""Process settings that are not part of the spec: how this machine runs a stage or the server.

Each process reads its environment once, here, into a frozen dataclass (one per concern, like the operator's
``eft.controller.settings.Settings``), and passes it on; nothing else reads ``EFT_*`` variables. Fields
without a variable are options for callers (tests, benches) that drive a stage in-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

_FALSE = ("0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A malformed EFT_* variable; the message names it."""


def _read(env: Mapping[str, str], name: str, cast: type, default: Any) -> Any:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    if cast is bool:
        return raw.strip().lower() not in _FALSE
    try:
        return cast(raw)
    except ValueError:
        raise SettingsError(f"${name} must be {'an integer' if cast is int else 'a number'}, got {raw!r}") from None


@dataclass(frozen=True)
class StageSettings:
    """How a stage runs on this machine (`eft run`, `eft stage`, a stage pod)."""

    # Torch device for the model stages ($EFT_DEVICE): cuda, cpu, cuda:1; None picks cuda when present.
    device: str | None = None
    # ONNX Runtime threads of the export stage's validation ($EFT_THREADS); None: the CPUs this process may use.
    threads: int | None = None
    # Tokenizer worker processes of the train stage ($EFT_TRAIN_WORKERS); None: chosen per device.
    train_workers: int | None = None
    # Tokenize distinct training texts once ($EFT_TOKEN_CACHE=0 tokenizes per batch instead).
    token_cache: bool = True
    # The train stage checkpoints every so many optimizer steps or seconds, whichever comes first
    # ($EFT_CHECKPOINT_STEPS, $EFT_CHECKPOINT_SECONDS).
    checkpoint_steps: int = 500
    checkpoint_seconds: float = 600.0
    # Where Kubernetes reads a container's termination message ($EFT_TERMINATION_LOG).
    termination_log: str = "/dev/termination-log"
    # Caller options (no variable). stop_after_steps: the train stage raises after that many optimizer steps
    # as if the process were killed (to test resuming). smoke_test: the export stage's report (what `eft run`
    # prints after the stages) serves the exported model once over HTTP.
    stop_after_steps: int | None = None
    smoke_test: bool = True

    def __post_init__(self) -> None:
        # a checkpoint every 0 steps would divide by zero: at least every step
        object.__setattr__(self, "checkpoint_steps", max(1, self.checkpoint_steps))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> "StageSettings":
        env = os.environ if env is None else env
        return cls(
            device=env.get("EFT_DEVICE") or None,
            threads=_read(env, "EFT_THREADS", int, None),
            train_workers=_read(env, "EFT_TRAIN_WORKERS", int, None),
            token_cache=_read(env, "EFT_TOKEN_CACHE", bool, True),
            checkpoint_steps=_read(env, "EFT_CHECKPOINT_STEPS", int, 500),
            checkpoint_seconds=_read(env, "EFT_CHECKPOINT_SECONDS", float, 600.0),
            termination_log=env.get("EFT_TERMINATION_LOG") or "/dev/termination-log",
            **options,
        )


@dataclass(frozen=True)
class ServeSettings:
    """Defaults of `eft serve` flags and the TensorRT engine cache."""

    host: str = "0.0.0.0"  # $EFT_SERVE_HOST
    port: int = 8000  # $EFT_SERVE_PORT
    log_level: str = "info"  # $EFT_LOG_LEVEL
    # TensorRT engine cache folder ($EFT_TRT_CACHE); None: a folder per model under the temp dir.
    trt_cache: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServeSettings":
        env = os.environ if env is None else env
        log_level = env.get("EFT_LOG_LEVEL") or "info"
        # Checked here: uvicorn would refuse it only after the model had loaded.
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"$EFT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        return cls(host=env.get("EFT_SERVE_HOST") or "0.0.0.0", port=_read(env, "EFT_SERVE_PORT", int, 8000),
                   log_level=log_level, trt_cache=env.get("EFT_TRT_CACHE") or None)

