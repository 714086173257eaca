"""Which teacher a stage distils from: none (labels alone), one checkpoint, or an ensemble of
several, as a --teacher value names them, and what the run records of it."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from facekd import distributed
from facekd.checkpoint import file_sha256
from facekd.config import RunConfig
from facekd.data import load_split
from facekd.distributed import pick_device
from facekd.evaluation import evaluate
from facekd.losses import active_losses, weight_of
from facekd.precision import resolve_precision
from facekd.run_folder import best_of_run
from teachers.ensemble import model_or_ensemble


def teacher_paths(value) -> list[str]:
    """The checkpoints a --teacher value names: none for None, [] or 'none' (labels alone), one
    for a path, several (an ensemble) for a list of paths; a run folder names its best.pt."""
    items = [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)
    paths = [best_of_run(p, "--teacher") for p in items if str(p).lower() != "none"]
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
    refuse_repeated_members(paths)
    teacher, info = model_or_ensemble(paths, fp32_for="distil from")  # an int8 teacher is refused by name
    teacher.requires_grad_(False)
    return teacher, info


def refuse_repeated_members(paths: list[str]) -> None:
    """Refuse one checkpoint given twice as an ensemble, by the same path, another path to it
    (a link, ./x) or a copy: an ensemble of one model twice is that model, at twice the cost.
    Files are hashed only when another member has their size, which copies must have."""
    first: dict = {}  # resolved path, then content hash -> the first --teacher that named it
    for path in paths:
        key = Path(path).resolve()
        if key in first:
            raise ValueError(f"--teacher {path}: the same file as --teacher {first[key]}; an ensemble needs "
                             "different models")
        first[key] = path
    sizes = [Path(p).stat().st_size for p in paths]
    for path, size in zip(paths, sizes):
        if sizes.count(size) > 1:
            digest = file_sha256(path)
            if digest in first:
                raise ValueError(f"--teacher {path}: a copy of --teacher {first[digest]} (the same bytes); an "
                                 "ensemble needs different models")
            first[digest] = path


# Settings that only a teacher gives an effect, besides the weights of the losses that read it:
# each with what counts as set (a non-default value would do nothing either).
TEACHER_SETTINGS = {"temperature": lambda v: True, "distill_mode": lambda v: v == "offline",
                    "teacher_term_size": lambda v: v == "labels",
                    "soft_target_cache": lambda v: bool(v), "soft_target_scales": lambda v: True}


def settings_without_teacher(cfg: RunConfig, given: set[str]) -> list[str]:
    """'key=value' for each setting among `given` (the keys a user set, by --set or a TOML
    file) that does something only with a teacher, where its value would have an effect: a
    teacher loss's weight above 0, distill_mode offline, a soft-target cache... A preset's
    own teacher losses are not the user's doing, and are not listed."""
    unused = [f"{loss.setting}={weight_of(cfg, loss):g}" for loss in active_losses(cfg, "teacher")
              if {loss.setting, loss.name} & given]  # --set kd_weight=1, or kd in a loss_weights table
    unused += [f"{key}={getattr(cfg, key)!r}" for key, has_effect in TEACHER_SETTINGS.items()
               if key in given and has_effect(getattr(cfg, key))]
    return unused


def teacher_val_fscore(teacher: nn.Module, info: dict, cfg: RunConfig, data_root) -> float | None:
    """The teacher's val F-score: the one its checkpoint recorded or, for an ensemble, which no
    file records, scored here like any model (flip TTA as cfg says, at its input size)."""
    if "members" not in info:
        return info.get("val_fscore")
    if not distributed.is_main():
        return None
    val = load_split(data_root, "val", None, show_progress=False)
    device = pick_device()
    return evaluate(teacher, val, teacher.input_size, cfg.flip_tta, cfg.batch_size, device,
                    precision=resolve_precision(cfg.precision, device))["fscore"]
