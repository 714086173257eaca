"""Prune whole channels of a student to a target with torch-pruning's dependency graph.

torch-pruning has no "stop at N parameters" option, so the pruner is given a generous
maximum ratio spread over many small steps, and we recount after each step until the
target is met. Residual adds, concats and BatchNorms are kept consistent by the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch_pruning as tp

import students
from facekd import challenge
from facekd.models import load_model
from facekd.labels import NUM_CLASSES
from facekd.registry import Registry

# How deep a target search may cut every layer; a target below what this ratio leaves is unreachable.
MAX_RATIO = 0.9


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """Convs that emit the class logits: pruning them would drop classes."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES]


@dataclass(frozen=True)
class Importance:
    make: Callable[[], tp.importance.Importance]  # a fresh torch-pruning importance per pruning run
    needs_gradients: bool = False                 # it reads .grad, which gradient_fn fills before each step


# how channels are ranked for pruning, by name (facekd prune --importance NAME)
IMPORTANCES = Registry("pruning importance")


def register_importance(name: str, needs_gradients: bool = False):
    def add(make):
        IMPORTANCES.add(name, Importance(make, needs_gradients))
        return make
    return add


@register_importance("magnitude")
def magnitude_importance():
    return tp.importance.GroupMagnitudeImportance(p=2)


@register_importance("taylor", needs_gradients=True)
def taylor_importance():
    return tp.importance.GroupTaylorImportance()


def prune_to_target(model: nn.Module, *, target_params: int | None = None, target_macs: int | None = None,
                    ratio: float | None = None, importance: str = "magnitude", steps: int = 64,
                    round_to: int = 8, example_size: int = 512,
                    gradient_fn: Callable[[nn.Module], None] | None = None) -> dict:
    """Prune `model` in place to exactly one of target_params, target_macs, ratio. gradient_fn(model)
    fills .grad before each step for an importance that needs gradients. Returns what was reached:
    params and MACs (at example_size, the challenge resolution) before and after."""
    if sum(x is not None for x in (target_params, target_macs, ratio)) != 1:
        raise ValueError("give exactly one of --target-params, --target-macs, --ratio")
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"--ratio must be in (0, 1), got {ratio}")
    if IMPORTANCES[importance].needs_gradients and gradient_fn is None:
        raise ValueError(f"{importance} importance needs a gradient_fn")
    model = model.cpu().to(memory_format=torch.contiguous_format)
    was_training = model.training  # torch-pruning's graph tracing leaves the model in eval()
    example = torch.randn(1, 3, example_size, example_size)
    macs0 = tp.utils.count_ops_and_params(model, example)[0]
    params0 = challenge.count_params(model)  # trainable ones, as the challenge counts
    pruner = tp.pruner.BasePruner(
        model, example, importance=IMPORTANCES[importance].make(),
        pruning_ratio=ratio if ratio is not None else MAX_RATIO, iterative_steps=steps,
        ignored_layers=classifier_layers(model), round_to=round_to)

    def reached() -> bool:
        if ratio is not None:
            return False  # a ratio runs the whole schedule
        if target_params is not None:
            return challenge.count_params(model) <= target_params
        return tp.utils.count_ops_and_params(model, example)[0] <= target_macs

    taken = 0
    for _ in range(steps):
        if reached():
            break
        if gradient_fn is not None:
            model.zero_grad(set_to_none=True)
            gradient_fn(model)
        pruner.step()
        taken += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    macs1, _ = tp.utils.count_ops_and_params(model, example)
    report = {"params_before": params0, "params_after": challenge.count_params(model),
              "macs_before": int(macs0), "macs_after": int(macs1), "macs_at": example_size, "steps": taken,
              "importance": importance}
    if not (ratio is not None or reached()):
        raise ValueError(f"pruning stopped at {report['params_after']:,} params / {report['macs_after']:,} MACs "
                         f"after {steps} steps without reaching the target")
    return report


def rebuild(model: nn.Module) -> tuple[nn.Module, dict]:
    """A fresh student built from the pruned model's plain config, with its weights:
    proof that the checkpoint needs no pickled module."""
    cfg = students.model_config(model)
    fresh = load_model({"model": model.state_dict(), "model_cfg": cfg}, source="pruned model")
    return fresh, cfg
