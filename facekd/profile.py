"""Model cost: parameters (as the challenge counts them), MACs and CPU latency, measured at
the resolution the model predicts at (its input_size; 512 when it has none)."""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
import torch_pruning as tp

from facekd.challenge import count_params


def count_macs(model: nn.Module, size: int = 512) -> int:
    device = next(model.parameters()).device
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 3, size, size, device=device))
    return int(macs)


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, size: int = 512, repeats: int = 5) -> float:
    """Median wall time of one forward pass of one image on the CPU, channels_last."""
    model = model.eval()
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    model(x)  # warm-up: first call allocates and picks kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def model_cost(model: nn.Module, size: int | None = None, latency: bool = True) -> dict:
    """{"params", "macs", "latency_ms", "size"} for a model, measured on a CPU copy."""
    cpu = copy.deepcopy(model).cpu().eval()
    size = size or getattr(model, "input_size", 512)
    cost = {"params": count_params(cpu), "macs": count_macs(cpu, size), "size": size}
    if latency:
        cost["latency_ms"] = cpu_latency_ms(cpu.to(memory_format=torch.channels_last), size)
    return cost
