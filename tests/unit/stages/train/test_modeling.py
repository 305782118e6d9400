"""Where training runs under bf16 autocast: a GPU with bf16, or a CPU that multiplies bf16 in hardware."""

from __future__ import annotations

import torch

from eft.stages.train import modeling


def test_a_cpu_with_bf16_units_trains_under_cpu_autocast(monkeypatch):
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert modeling.uses_bf16("cpu") and modeling.precision_name("cpu") == "bf16-autocast"
    with modeling.autocast_context("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        out = torch.nn.Linear(4, 2)(torch.ones(3, 4))
    assert out.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_a_cpu_without_them_stays_in_fp32(monkeypatch):
    """oneDNN would emulate bf16 there, slower than fp32."""
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    assert not modeling.uses_bf16("cpu") and modeling.precision_name("cpu") == "fp32"
    with modeling.autocast_context("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype == torch.float32


def test_the_cpu_probe_reads_torchs_own_capability_checks(monkeypatch):
    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert modeling.cpu_has_native_bf16() is expected
