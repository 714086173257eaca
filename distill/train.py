"""Distil a student from a frozen teacher, or train it from scratch with `--teacher none`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.losses import channel_wise_kd_loss, pixel_kd_loss
from facekd.config import RunConfig
from facekd.engine import LossFn, fit, supervised_loss
from facekd.app.models import build_model, load_model, named_config
from facekd.transforms import IGNORE_INDEX


def load_teacher(path: str | Path | None) -> tuple[nn.Module | None, dict]:
    """A frozen teacher in eval mode, or (None, {}) for 'none'."""
    if path is None or str(path).lower() == "none":
        return None, {}
    teacher, ckpt = load_model(path)
    teacher.eval().requires_grad_(False)
    return teacher, ckpt


def distillation_loss(cfg: RunConfig, teacher: nn.Module | None) -> LossFn:
    """Supervised terms plus, with a teacher, pixel KD and channel-wise KD on the logits."""
    supervised = supervised_loss(cfg)

    def loss_fn(logits, images, labels):
        terms = supervised(logits, images, labels)
        if teacher is None or (cfg.kd <= 0 and cfg.cwd <= 0):
            return terms
        with torch.no_grad():  # same augmented batch as the student sees
            target = teacher(images).float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        if cfg.kd > 0:
            small = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
            terms["kd"] = pixel_kd_loss(logits, target, cfg.temperature, valid=small != IGNORE_INDEX)
            terms["loss"] = terms["loss"] + cfg.kd * terms["kd"]
        if cfg.cwd > 0:
            terms["cwd"] = channel_wise_kd_loss(logits, target, cfg.temperature)
            terms["loss"] = terms["loss"] + cfg.cwd * terms["cwd"]
        return terms

    return loss_fn


def distill(cfg: RunConfig, data_root, out, teacher_path, resume: bool = False, progress: bool = True,
            model: nn.Module | None = None, model_cfg: dict | None = None, stage: str = "distill") -> dict:
    """Train a student with the shared engine. `model`/`model_cfg` let the pruning stage
    fine-tune an already-built (pruned) student through the very same path."""
    teacher, teacher_ckpt = load_teacher(teacher_path)
    if model is None:
        model_cfg = named_config(cfg.model, cfg.resolutions[-1][0])
        torch.manual_seed(cfg.seed)  # the initial weights follow --seed too
        model = build_model(model_cfg)
    reference = {"teacher/val_fscore": teacher_ckpt["val_fscore"]} if "val_fscore" in teacher_ckpt else {}
    return fit(model, model_cfg, distillation_loss(cfg, teacher), cfg, out, data_root=data_root, stage=stage,
               resume=resume, progress=progress, reference_scores=reference,
               extra_config={"teacher": str(teacher_path), "model_cfg": model_cfg})
