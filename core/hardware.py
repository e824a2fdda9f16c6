"""Facts about the machine a run is on that change how it should compute.

:func:`native_cpu_bf16`: whether this CPU multiplies bfloat16 matrices natively (Intel AMX-BF16 or
AVX512-BF16, read from the kernel's CPU flags). There, ``torch.autocast("cpu", dtype=torch.bfloat16)`` runs
the encoder's matrix work about 1.5x faster (``bench/bench_bf16.py``); elsewhere it would be emulated, and
slower than float32, so recon only turns it on where it is native.

:func:`gpu_memory_bytes`: the memory of this machine's smallest GPU, for the check that packed trials
(``gpus_per_trial`` below 1) fit in their share of it (``recon.models.train.memory``).
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the Linux kernel reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    match = re.search(r"^flags\s*:\s*(.*)$", text, flags=re.M)
    return frozenset(match.group(1).split()) if match else frozenset()


def native_cpu_bf16() -> bool:
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def cpu_bf16_name() -> str:
    """What makes bf16 native here, for the console and the run's tags ("AMX-BF16", "AVX512-BF16" or "none")."""
    flags = cpu_flags()
    return "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "none"


def gpu_memory_bytes() -> Optional[int]:
    """Total memory of the smallest GPU on this machine (None: no GPU found).

    ``nvidia-smi`` first: it lists every GPU whatever ``CUDA_VISIBLE_DEVICES`` says, so a Ray task that asks
    for no GPU (and therefore sees none through torch) can still report the node's GPUs; torch otherwise.
    """
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            mib = [int(float(v)) for v in out.split() if v.strip()]
            if mib:
                return min(mib) << 20
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no GPU" here; preflight reports GPUs elsewhere
        pass
    return None


__all__ = ["native_cpu_bf16", "cpu_bf16_name", "cpu_flags", "CPU_BF16_FLAGS", "gpu_memory_bytes"]
