"""Distil a student from a frozen teacher, or train it from scratch with `--teacher none`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.losses import active_losses
from distill.soft_targets import offline_soft_targets, stored_size
from distill.teacher import load_teacher, teacher_paths, teacher_record, teacher_val_fscore
from facekd.budget import Budget
from facekd.config import RunConfig
from facekd.distributed import pick_device
from facekd.engine import LossFn, fit, supervised_loss
from facekd.app.models import build_model, named_config
from facekd.transforms import IGNORE_INDEX


def valid_pixels(labels: torch.Tensor, size, margin: int = 0) -> torch.Tensor:
    """BxHxW mask of the pixels at `size` whose label is not IGNORE_INDEX (warped in from
    outside), shrunk by `margin` pixels away from those."""
    invalid = F.interpolate(labels[:, None].float(), size=size, mode="nearest") == IGNORE_INDEX
    if margin:
        invalid = F.max_pool2d(invalid.float(), 2 * margin + 1, 1, margin) > 0
    return ~invalid[:, 0]


def distillation_loss(cfg: RunConfig, teacher: nn.Module | None) -> LossFn:
    """Supervised terms plus every registered distillation loss that cfg weighs above zero
    (distill/losses.py), against the teacher run on the batch (online) or, when the engine
    passes them, the stored soft targets that followed the batch's flip and warp (offline;
    then `teacher` is None)."""
    supervised = supervised_loss(cfg)
    losses = active_losses(cfg)

    def loss_fn(logits, images, labels, soft_targets=None):
        terms = supervised(logits, images, labels)
        if (teacher is None and soft_targets is None) or not losses:
            return terms
        offline = soft_targets is not None
        if offline:
            target = soft_targets.float()
        else:
            with torch.no_grad():  # same augmented batch as the student sees
                target = teacher(images).float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        # Offline, the pixels warped in from outside hold zeros that no teacher produced, and
        # the bilinear warp blends those zeros into the first stored pixel inside: both are left out.
        valid = valid_pixels(labels, logits.shape[-2:], margin=1 if offline else 0)
        for loss in losses:
            terms[loss.name] = loss.fn(logits, target, cfg.temperature,
                                       valid=valid if offline or loss.masks_online else None)
            terms["loss"] = terms["loss"] + getattr(cfg, loss.weight) * terms[loss.name]
        return terms

    return loss_fn


def build_student(cfg: RunConfig) -> tuple[nn.Module, dict]:
    """The freshly initialised student cfg names, predicting at its last training size."""
    model_cfg = named_config(cfg.model, cfg.resolutions[-1][0])
    torch.manual_seed(cfg.seed)  # the initial weights follow --seed too
    return build_model(model_cfg), model_cfg


def distill(cfg: RunConfig, data_root, out, teacher, resume: bool = False, progress: bool = True,
            model: nn.Module | None = None, model_cfg: dict | None = None, stage: str = "distill",
            budget: Budget | None = None) -> dict:
    """Train a student with the shared engine. `teacher` is a checkpoint path, a list of them
    (an ensemble), or None / "none" for labels alone. `model`/`model_cfg` let the pruning stage
    fine-tune an already-built (pruned) student through the very same path, within the
    `budget` it started (otherwise cfg.budget_minutes starts one here, before the teacher loads)."""
    budget = budget or Budget.from_minutes(cfg.budget_minutes)
    paths = teacher_paths(teacher)
    teacher_model, info = load_teacher(paths)
    if model is None:
        model, model_cfg = build_student(cfg)
    extra = {"teacher": teacher_record(paths), "model_cfg": model_cfg}
    if "members" in info:
        extra["teacher_members"] = info["members"]
    fscore = teacher_val_fscore(teacher_model, info, cfg, data_root) if teacher_model is not None else None
    if fscore is not None:
        extra["teacher_val_fscore"] = fscore
    soft_targets = None
    if teacher_model is not None and active_losses(cfg):
        if cfg.distill_mode == "offline":
            soft_targets, extra["soft_targets"] = offline_soft_targets(
                cfg, teacher_model, paths, data_root, stored_size(cfg, model), progress)
            teacher_model = None  # never run again: let its memory go before training
        else:
            teacher_model.to(pick_device())  # where fit puts the student and the batches
    result = fit(model, model_cfg, distillation_loss(cfg, teacher_model), cfg, out, data_root=data_root,
                 stage=stage, resume=resume, progress=progress, budget=budget, soft_targets=soft_targets,
                 reference_scores={} if fscore is None else {"teacher/val_fscore": fscore}, extra_config=extra)
    if soft_targets is not None:
        result["soft_targets_s"] = extra["soft_targets"]["seconds"]
    return result
