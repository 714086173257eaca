"""Stage 1: train a teacher from scratch with the shared engine."""

from __future__ import annotations

from facekd.config import RunConfig
from facekd.engine import fit
from facekd.losses import training_loss
from facekd.models import init_model


def train_teacher(cfg: RunConfig, data_root, out, resume: bool = False, progress: bool = True) -> dict:
    model, model_cfg = init_model(cfg)
    return fit(model, model_cfg, training_loss(cfg), cfg, out, data_root=data_root, stage="teacher",
               resume=resume, progress=progress)
