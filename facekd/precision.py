"""Numeric precision of the forward passes: fp32, or bf16 under autocast.

bf16 pays only where the hardware has bf16 arithmetic: on CUDA, and on x86 CPUs with
AVX512-BF16 or AMX, where oneDNN runs bf16 convolutions (a training step at 512² measured
1.45x faster for the student and 1.75x for teacher_cpu on a 2-core EPYC). Elsewhere a CPU
emulates it and bf16 is slower than fp32, so "auto" picks fp32 there.

Only the forward passes change: losses are taken on fp32 logits, and the weights, gradients
and optimiser state stay fp32. solution/run.py never imports this: a submitted score must
not depend on the grader's processor.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of CPUs with native bf16 matrix arithmetic
FAST_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The processor's feature flags; empty where /proc/cpuinfo is absent (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16() -> bool:
    return bool(FAST_BF16_CPU_FLAGS & cpu_flags())


def resolve_precision(precision: str, device) -> str:
    """"fp32" or "bf16": what `precision` (a config value) means on `device` (a torch.device)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch  # here, not at the top: the CLI reads configs before it imports torch
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device):
    """The context for a forward pass at a resolved precision ("fp32" runs as it is)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch
    return torch.autocast(device.type, dtype=torch.bfloat16)
