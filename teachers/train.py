"""Stage 1: train a teacher from scratch with the shared engine."""

from __future__ import annotations

import torch

from facekd.config import RunConfig
from facekd.engine import fit, supervised_loss
from facekd.app.models import build_model, named_config


def train_teacher(cfg: RunConfig, data_root, out, resume: bool = False, progress: bool = True) -> dict:
    model_cfg = named_config(cfg.model, cfg.resolutions[-1][0])
    torch.manual_seed(cfg.seed)  # the initial weights follow --seed too
    model = build_model(model_cfg)
    return fit(model, model_cfg, supervised_loss(cfg), cfg, out, data_root=data_root, stage="teacher",
               resume=resume, progress=progress)
