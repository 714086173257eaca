"""Which teacher a stage distils from: none (labels alone), one checkpoint, or an ensemble of
several, as a --teacher value names them, and what the run records of it."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

import compress.quantize  # noqa: F401  (registers the int8 format, so that an int8 teacher is named as one)
from facekd import distributed
from facekd.config import RunConfig
from facekd.data import load_split
from facekd.distributed import pick_device
from facekd.evaluation import evaluate
from teachers.ensemble import model_or_ensemble


def teacher_paths(value) -> list[str]:
    """The checkpoints a --teacher value names: none for None, [] or 'none' (labels alone), one
    for a path, several (an ensemble) for a list of paths."""
    items = [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)
    paths = [str(p) for p in items if str(p).lower() != "none"]
    if paths and len(paths) != len(items):
        raise ValueError(f"--teacher: 'none' (labels alone) cannot be combined with checkpoints {paths}")
    return paths


def teacher_record(value) -> str | list[str]:
    """How a run's config records its teacher: "none" for labels alone, the checkpoint's path,
    or the list of an ensemble's paths."""
    paths = teacher_paths(value)
    return "none" if not paths else paths[0] if len(paths) == 1 else paths


def frozen_teacher(value) -> tuple[nn.Module | None, dict]:
    """A frozen teacher in eval mode and its checkpoint dict, an Ensemble of several with
    {"members": [...]}, or (None, {}) for labels alone."""
    paths = teacher_paths(value)
    if not paths:
        return None, {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--teacher {path}: no such checkpoint")
    teacher, info = model_or_ensemble(paths, fp32_for="distil from")  # an int8 teacher is refused by name
    teacher.requires_grad_(False)
    return teacher, info


def teacher_val_fscore(teacher: nn.Module, info: dict, cfg: RunConfig, data_root) -> float | None:
    """The teacher's val F-score: the one its checkpoint recorded or, for an ensemble, which no
    file records, scored here like any model (flip TTA as cfg says, at its input size)."""
    if "members" not in info:
        return info.get("val_fscore")
    if not distributed.is_main():
        return None
    val = load_split(data_root, "val", None, progress=False)
    return evaluate(teacher, val, teacher.input_size, cfg.flip_tta, cfg.batch_size, pick_device())["fscore"]
