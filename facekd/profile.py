"""Model cost: parameters (as the challenge counts them), MACs and CPU latency, measured at
the resolution the model predicts at (its input_size; 512 when it has none)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch_pruning as tp

from facekd.challenge import count_params
from facekd.inference import model_device
from facekd.latency import measure_latency


def count_macs(model: nn.Module, size: int = 512) -> int:
    model = getattr(model, "float_model", model)  # an int8 model's MACs are its fp32 architecture's
    device = model_device(model)
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 3, size, size, device=device))
    return int(macs)


def cpu_latency_ms(model: nn.Module, size: int = 512, threads: int = 1) -> float:
    """Median wall time of one forward pass of one image on the CPU, channels_last, at a fixed
    thread count, by the one measurement facekd.latency makes (alone: nothing to interleave)."""
    return measure_latency({"model": model}, size, threads)["model"]["median_ms"]


def model_cost(model: nn.Module, size: int | None = None, latency: bool = True) -> dict:
    """{"params", "macs", "latency_ms", "size"} for a model, measured on a CPU copy."""
    cpu = copy.deepcopy(model).cpu().eval()
    size = size or getattr(model, "input_size", 512)
    # an int8 model is counted as its fp32 architecture: quantizing changes no parameter count
    cost = {"params": count_params(getattr(cpu, "float_model", cpu)), "macs": count_macs(cpu, size), "size": size}
    if latency:
        cost["latency_ms"] = cpu_latency_ms(cpu.to(memory_format=torch.channels_last), size)
    return cost
