"""How the model runs while it trains: bf16 autocast where the hardware computes in bf16 (a GPU, or a CPU with
AVX512-BF16 or AMX), fp32 elsewhere; activation checkpointing; features moved to the device."""

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
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX tiles)? There CPU autocast pays: the train
    stage on 2 cores of a Xeon with AMX ran 1.47x the rows per second of fp32 (batch 64, 256 tokens,
    bench/results/2026-12-07-cpu-train-throughput-bf16.txt). Elsewhere bf16 has no hardware path (it is converted
    in software), so such CPUs keep fp32; that case is not measured here."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p is not None and p() for p in probes)


def autocast_context(device: str):
    if not uses_bf16(device):
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def precision_name(device: str) -> str:
    return "bf16-autocast" if uses_bf16(device) else "fp32"


def to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
