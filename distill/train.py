"""Train a student: distil it from a frozen teacher, train it from labels alone
(`--teacher none`), or fine-tune one already built (a pruned student, `facekd finetune`)."""

from __future__ import annotations

import torch.nn as nn

from distill.soft_targets import offline_soft_targets, stored_size
from distill.teacher import frozen_teacher, teacher_paths, teacher_record, teacher_val_fscore
from facekd.budget import Budget
from facekd.config import RunConfig
from facekd.distributed import pick_device
from facekd.engine import fit
from facekd.losses import active_losses, losses_trained, training_loss
from facekd.models import init_model
from facekd.registry import STUDENTS, TEACHERS


def train_student(cfg: RunConfig, data_root, out, teacher, resume: bool = False, show_progress: bool = True,
                  model: nn.Module | None = None, model_cfg: dict | None = None, stage: str = "distill",
                  budget: Budget | None = None) -> dict:
    """Train a student with the shared engine, with or without a teacher. `teacher` is a checkpoint path, a list of them
    (an ensemble), or None / "none" for labels alone. `model`/`model_cfg` let the pruning stage
    fine-tune an already-built (pruned) student through the very same path, within the
    `budget` it started (otherwise cfg.budget_minutes starts one here, before the teacher loads)."""
    if model is None and cfg.model in TEACHERS:  # export and prune would refuse what it trained
        raise ValueError(f"--arch {cfg.model}: is a teacher; distill trains a student ({', '.join(STUDENTS.names())}), "
                         "and facekd train-teacher trains teachers")
    budget = budget or Budget.from_minutes(cfg.budget_minutes)
    paths = teacher_paths(teacher)
    teacher_model, info = frozen_teacher(paths)
    if model is None:
        model, model_cfg = init_model(cfg)
    extra = {"teacher": teacher_record(paths), "model_cfg": model_cfg,
             "losses_trained": losses_trained(cfg, has_teacher=teacher_model is not None)}
    if "members" in info:
        extra["teacher_members"] = info["members"]
    fscore = teacher_val_fscore(teacher_model, info, cfg, data_root) if teacher_model is not None else None
    if fscore is not None:
        extra["teacher_val_fscore"] = fscore
    soft_targets = None
    if teacher_model is not None and active_losses(cfg, "teacher"):
        if cfg.distill_mode == "offline":
            soft_targets, extra["soft_targets"] = offline_soft_targets(
                cfg, teacher_model, paths, data_root, stored_size(cfg, model), show_progress)
            teacher_model = None  # never run again: let its memory go before training
        else:
            teacher_model.to(pick_device())  # where fit puts the student and the batches
    result = fit(model, model_cfg, training_loss(cfg, teacher_model), cfg, out, data_root=data_root,
                 stage=stage, resume=resume, show_progress=show_progress, budget=budget, soft_targets=soft_targets,
                 reference_scores={} if fscore is None else {"teacher/val_fscore": fscore}, extra_config=extra)
    if soft_targets is not None:
        result["soft_targets_s"] = extra["soft_targets"]["seconds"]
    return result
