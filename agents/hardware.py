"""What the machine can do: CPU flags, usable cores, CUDA, measured matmul speed per dtype."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

# Flags that give native low-precision arithmetic on x86 (names as in /proc/cpuinfo).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16", "amx_fp16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: affinity, capped by a cgroup v2 CPU quota (pod limits)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return count


def supports(dtype: str, flags: set[str]) -> bool:
    """Whether the CPU has native arithmetic for `dtype` (fp32 always)."""
    wanted = {"int8": INT8_FLAGS, "bf16": BF16_FLAGS, "fp16": FP16_FLAGS}.get(dtype)
    return True if wanted is None else bool(flags.intersection(wanted))


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(dtype: str, size: int = 384, inner: int = 1536, repeats: int = 30) -> float:
    """Measured GFLOP/s of a transformer-sized matmul in `dtype` (median of `repeats`)."""
    torch_dtype = _TORCH_DTYPES[dtype]
    a = torch.randn(size, inner).to(torch_dtype)
    b = torch.randn(inner, size).to(torch_dtype)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return 2.0 * size * inner * size / median / 1e9
