"""bfloat16 on the CPU: detection of native support, and autocast used exactly when a config asks for it."""
from __future__ import annotations

import torch

from recon.core import hardware
from recon.models.train.loop import autocast


def test_detection_reads_the_kernel_flags(monkeypatch, tmp_path):
    hardware.cpu_flags.cache_clear()
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "Path", lambda _p: fake)
    try:
        fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16\n")
        assert hardware.native_cpu_bf16() and hardware.cpu_bf16_name() == "AMX-BF16"
        hardware.cpu_flags.cache_clear()
        fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
        assert hardware.native_cpu_bf16() and hardware.cpu_bf16_name() == "AVX512-BF16"
        hardware.cpu_flags.cache_clear()
        fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
        assert not hardware.native_cpu_bf16() and hardware.cpu_bf16_name() == "none"
    finally:
        hardware.cpu_flags.cache_clear()


def test_autocast_on_cpu_only_when_asked():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    cpu = torch.device("cpu")
    with autocast(cpu, bf16=True, cpu_bf16=False):  # bf16 alone is the CUDA switch
        assert layer(x).dtype == torch.float32
    with autocast(cpu, bf16=False, cpu_bf16=True):
        assert layer(x).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # weights and optimizer state stay float32


def test_cpu_bf16_is_part_of_the_trial_identity():
    from recon.models.train.config import TrainConfig

    assert TrainConfig(cpu_bf16=False).identity() != TrainConfig(cpu_bf16=True).identity()
    # added after stores were written: float32 (what ran before it existed) leaves the ids as they were
    assert "cpu_bf16" not in TrainConfig(cpu_bf16=False).identity()
    assert TrainConfig(cpu_bf16=True).identity()["cpu_bf16"] is True


def test_cpu_bf16_defaults_to_what_this_cpu_has_natively(monkeypatch):
    from recon.models.pretrain.config import PretrainConfig
    from recon.models.train.config import TrainConfig
    from recon.models.train.loop import precision

    assert TrainConfig().cpu_bf16 is hardware.native_cpu_bf16()
    assert PretrainConfig().cpu_bf16 is hardware.native_cpu_bf16()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision(torch.device("cpu"), True, True) == "bf16 (CPU, AMX-BF16)"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset())
    assert precision(torch.device("cpu"), True, True) == "bf16 (CPU, emulated)"
    assert precision(torch.device("cpu"), True, False) == "float32"
