"""Distil a student from a frozen teacher, or train it from scratch with `--teacher none`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.losses import channel_wise_kd_loss, pixel_kd_loss
from distill.soft_targets import offline_soft_targets, stored_size
from facekd.budget import Budget
from facekd.config import RunConfig
from facekd.distributed import pick_device
from facekd.engine import LossFn, fit, supervised_loss
from facekd.app.models import build_model, load_model, named_config
from facekd.transforms import IGNORE_INDEX


def names_teacher(path: str | Path | None) -> bool:
    """Whether a --teacher value names a checkpoint: None and 'none' (any case) mean labels alone."""
    return path is not None and str(path).lower() != "none"


def teacher_record(path: str | Path | None) -> str:
    """How a run's config records its teacher: the checkpoint's path, or "none" for labels alone."""
    return str(path) if names_teacher(path) else "none"


def load_teacher(path: str | Path | None) -> tuple[nn.Module | None, dict]:
    """A frozen teacher in eval mode, or (None, {}) for 'none'."""
    if not names_teacher(path):
        return None, {}
    teacher, ckpt = load_model(path)
    teacher.eval().requires_grad_(False)
    return teacher, ckpt


def valid_pixels(labels: torch.Tensor, size, margin: int = 0) -> torch.Tensor:
    """BxHxW mask of the pixels at `size` whose label is not IGNORE_INDEX (warped in from
    outside), shrunk by `margin` pixels away from those."""
    invalid = F.interpolate(labels[:, None].float(), size=size, mode="nearest") == IGNORE_INDEX
    if margin:
        invalid = F.max_pool2d(invalid.float(), 2 * margin + 1, 1, margin) > 0
    return ~invalid[:, 0]


def distillation_loss(cfg: RunConfig, teacher: nn.Module | None) -> LossFn:
    """Supervised terms plus pixel KD and channel-wise KD on the logits, against the teacher
    run on the batch (online) or, when the engine passes them, the stored soft targets that
    followed the batch's flip and warp (offline; then `teacher` is None)."""
    supervised = supervised_loss(cfg)

    def loss_fn(logits, images, labels, soft_targets=None):
        terms = supervised(logits, images, labels)
        if (teacher is None and soft_targets is None) or (cfg.kd_weight <= 0 and cfg.cwd_weight <= 0):
            return terms
        offline = soft_targets is not None
        if offline:
            target = soft_targets.float()
        else:
            with torch.no_grad():  # same augmented batch as the student sees
                target = teacher(images).float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        # Online, the teacher saw the padding the warp brought in, so CWD keeps those pixels as
        # it always has. Offline, they hold zeros that no teacher produced, and the bilinear warp
        # blends those zeros into the first stored pixel inside the image: both are left out.
        valid = valid_pixels(labels, logits.shape[-2:], margin=1 if offline else 0)
        if cfg.kd_weight > 0:
            terms["kd"] = pixel_kd_loss(logits, target, cfg.temperature, valid=valid)
            terms["loss"] = terms["loss"] + cfg.kd_weight * terms["kd"]
        if cfg.cwd_weight > 0:
            terms["cwd"] = channel_wise_kd_loss(logits, target, cfg.temperature, valid=valid if offline else None)
            terms["loss"] = terms["loss"] + cfg.cwd_weight * terms["cwd"]
        return terms

    return loss_fn


def build_student(cfg: RunConfig) -> tuple[nn.Module, dict]:
    """The freshly initialised student cfg names, predicting at its last training size."""
    model_cfg = named_config(cfg.model, cfg.resolutions[-1][0])
    torch.manual_seed(cfg.seed)  # the initial weights follow --seed too
    return build_model(model_cfg), model_cfg


def distill(cfg: RunConfig, data_root, out, teacher_path, resume: bool = False, progress: bool = True,
            model: nn.Module | None = None, model_cfg: dict | None = None, stage: str = "distill",
            budget: Budget | None = None) -> dict:
    """Train a student with the shared engine. `model`/`model_cfg` let the pruning stage
    fine-tune an already-built (pruned) student through the very same path, within the
    `budget` it started (otherwise cfg.budget_minutes starts one here, before the teacher loads)."""
    budget = budget or Budget.from_minutes(cfg.budget_minutes)
    teacher, teacher_ckpt = load_teacher(teacher_path)
    if model is None:
        model, model_cfg = build_student(cfg)
    reference = {"teacher/val_fscore": teacher_ckpt["val_fscore"]} if "val_fscore" in teacher_ckpt else {}
    extra = {"teacher": teacher_record(teacher_path), "model_cfg": model_cfg}
    soft_targets = None
    if teacher is not None and (cfg.kd_weight > 0 or cfg.cwd_weight > 0):
        if cfg.distill_mode == "offline":
            soft_targets, extra["soft_targets"] = offline_soft_targets(
                cfg, teacher, teacher_path, data_root, stored_size(cfg, model), progress)
            teacher = None  # never run again: let its memory go before training
        else:
            teacher.to(pick_device())  # where fit puts the student and the batches
    result = fit(model, model_cfg, distillation_loss(cfg, teacher), cfg, out, data_root=data_root, stage=stage,
                 resume=resume, progress=progress, reference_scores=reference, budget=budget,
                 soft_targets=soft_targets, extra_config=extra)
    if soft_targets is not None:
        result["soft_targets_s"] = extra["soft_targets"]["seconds"]
    return result
