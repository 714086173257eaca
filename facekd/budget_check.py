"""Refusing a budget that cannot hold a run, before its time is wasted: probe_budget before
the data is decoded, from one batch of each split, and check_budget_fits after the first real
step, which also sizes the reserve held back for the last validation."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from facekd.budget import Budget, BudgetError, now
from facekd.config import RunConfig
from facekd.cpu_kernels import safe_conv_backward
from facekd.data import CachedSplit, find_pairs, load_split
from facekd.evaluation import evaluate
from facekd.losses import LossFn
from facekd.transforms import AugmentConfig, train_batch

def check_budget_fits(budget: Budget, model: nn.Module, val: CachedSplit, cfg: RunConfig, device: torch.device,
                      precision: str, step_seconds: float) -> None:
    """After the first step of a budgeted run: refuse, before anything is written, a budget
    that cannot hold even one step and one validation, and size the validation reserve."""
    n = cfg.batch_size
    batch = CachedSplit(val.stems[:n], val.images[:n], val.masks[:n])
    t0 = now()
    evaluate(model, batch, cfg.resolutions[-1][0], cfg.flip_tta, n, device, precision=precision)
    eval_s = (now() - t0) * math.ceil(len(val) / len(batch))
    budget.reserve = 1.2 * eval_s + 1.0
    if budget.spent() + budget.reserve > budget.seconds:
        raise BudgetError(
            f"a budget of {budget.seconds / 60:g} min is too small for this run: after "
            f"{budget.spent():.1f} s of set-up and one step ({step_seconds:.2f} s), one validation of "
            f"{len(val)} images would take about {eval_s:.1f} s more; give at least "
            f"{(budget.spent() + budget.reserve) / 60 * 1.5:.1f} min")


def probe_budget(model: nn.Module, loss_fn: LossFn, cfg: RunConfig, data_root, budget: Budget,
                 device: torch.device) -> None:
    """Before decoding the data: refuse a budget that cannot hold decoding it, one step and one
    validation, from one batch of each split decoded and one step and one validation batch
    timed on a copy of the model. On the real data this says in seconds what check_budget_fits
    would say only after a minute of decoding; check_budget_fits still has the last word."""
    n = cfg.batch_size
    t0 = now()
    train = load_split(data_root, "train", cfg.size_at(0), limit=n, show_progress=False)
    val = load_split(data_root, "val", None, limit=n, show_progress=False)
    decode_s = (now() - t0) / (len(train) + len(val))
    n_train = len(find_pairs(data_root, "train"))
    n_train, n_val = min(n_train, cfg.train_limit or n_train), len(find_pairs(data_root, "val"))
    probe = copy.deepcopy(model).to(device).train()  # the run's own model and RNG stay untouched
    t0 = now()
    images, labels, _ = train_batch(train.images.to(device), train.masks.to(device), AugmentConfig.from_run_config(cfg),
                                    torch.Generator(device=device).manual_seed(0), None, cfg.channels_last)
    with safe_conv_backward(len(images), device):  # as the engine's step does
        loss_fn(probe(images).float(), images, labels, None)["loss"].backward()
    step_s = now() - t0
    t0 = now()
    evaluate(probe, val, cfg.resolutions[-1][0], cfg.flip_tta, n, device)
    val_s = (now() - t0) * math.ceil(n_val / len(val))
    need = budget.spent() + decode_s * (n_train + n_val) + step_s + 1.2 * val_s + 1.0
    if need > budget.seconds:
        raise BudgetError(
            f"a budget of {budget.seconds / 60:g} min is too small for this run: decoding its {n_train + n_val} "
            f"images would take about {decode_s * (n_train + n_val):.0f} s, one step ({step_s:.2f} s) and one "
            f"validation about {val_s:.1f} s (measured on one batch, before decoding the rest); give at least "
            f"{need / 60 * 1.5:.2g} min")
