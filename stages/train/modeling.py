"""How the model runs while it trains: bf16 autocast on a GPU (fp32 elsewhere), activation checkpointing,
features moved to the device."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


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
            except TypeError:  # older transformers take no arguments
                fn()
            done = True
    return done


@contextlib.contextmanager
def sequence_length(model, tokens: int):
    """The model cuts texts at ``tokens`` inside the block (validation scores at the full length while
    training steps may use a shorter one), and at its previous length again after."""
    before = model.max_seq_length
    model.max_seq_length = tokens
    try:
        yield
    finally:
        model.max_seq_length = before


def uses_bf16(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def autocast_context(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if uses_bf16(device) else contextlib.nullcontext()


def precision_name(device: str) -> str:
    return "bf16-autocast" if uses_bf16(device) else "fp32"


def to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
