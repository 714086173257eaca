"""The model registry: build any facekd model, teacher or student, from its plain config,
or rebuild one from a checkpoint. The stages that need a model by name or by file
(distill, compress) and every application command come through here."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

import students
import teachers
from teachers.ensemble import Ensemble
from facekd.checkpoint import load_checkpoint
from facekd.inference import one_line
from facekd.labels import NUM_CLASSES


def named_config(name: str, input_size: int) -> dict:
    if name in students.STUDENTS:
        return {**students.STUDENTS[name], "input_size": input_size}
    if name in teachers.TEACHERS:
        return {**teachers.TEACHERS[name], "input_size": input_size}
    raise ValueError(f"unknown model {name!r}; teachers: {sorted(teachers.TEACHERS)}, "
                     f"students: {sorted(students.STUDENTS)}")


def is_teacher(model_cfg: dict) -> bool:
    return model_cfg.get("arch") in teachers.ARCHS


def build_model(model_cfg: dict, allow_over_budget: bool = False) -> nn.Module:
    if is_teacher(model_cfg):
        cfg = dict(model_cfg)
        return teachers.ARCHS[cfg.pop("arch")](**cfg)
    return students.build_student(model_cfg, allow_over_budget=allow_over_budget)


def load_model(checkpoint: str | Path | dict, device: torch.device | str | None = None,
               source: str | Path | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode with its weights, the checkpoint dict) from a checkpoint file or
    an already-loaded checkpoint dict. A checkpoint is rebuilt as it was trained, so an
    over-limit student loads too; export is where the limit is enforced. Weights that do
    not fit their model_cfg are an error that names the file."""
    if isinstance(checkpoint, dict):
        ckpt, source = checkpoint, source or "checkpoint"
    else:
        ckpt, source = load_checkpoint(checkpoint), source or checkpoint
    classes = ckpt["model_cfg"].get("num_classes", NUM_CLASSES) if isinstance(ckpt["model_cfg"], dict) else None
    if classes != NUM_CLASSES:
        raise ValueError(f"{source}: predicts {classes} classes; facekd models predict the {NUM_CLASSES} "
                         "CelebAMask-HQ classes")
    if ckpt.get("quantized"):
        from compress.quantize import int8_model  # the int8 runtime belongs to the quantize stage
        return int8_model(ckpt, source), ckpt  # on the CPU, whatever `device` asks: int8 kernels run there
    try:
        model = build_model(ckpt["model_cfg"], allow_over_budget=True)
    except (KeyError, TypeError, ValueError) as e:  # an unknown arch or a field its class does not take
        raise ValueError(f"{source}: its model_cfg cannot be built ({one_line(e)})") from e
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not match their model_cfg ({one_line(e)})") from e
    if device is not None:
        model.to(device)
    return model.eval(), ckpt


def load_models(checkpoints: list, device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """One checkpoint's (model, dict) as load_model gives them, or for several an Ensemble of
    them in eval mode and {"members": [...]} naming each member's file, arch, input size and
    recorded val F-score."""
    paths = [str(p) for p in checkpoints]
    if not paths:
        raise ValueError("no checkpoint given")
    loaded = [load_model(p, device) for p in paths]
    if len(loaded) == 1:
        return loaded[0]
    members = [{"path": p, "arch": c["model_cfg"]["arch"], "input_size": m.input_size,
                "val_fscore": c.get("val_fscore")} for p, (m, c) in zip(paths, loaded)]
    return Ensemble([m for m, _ in loaded]).eval(), {"members": members}


def load_student(checkpoint: str | Path, purpose: str) -> tuple[nn.Module, dict]:
    """load_model for a command that works on a student; a teacher checkpoint is refused by name,
    saying what the command would have done (`purpose`: "prune", "fine-tune", ...)."""
    model, ckpt = load_model(checkpoint)
    if is_teacher(ckpt["model_cfg"]):
        raise ValueError(f"{checkpoint}: is a teacher checkpoint; {purpose} a student")
    if ckpt.get("quantized"):
        raise ValueError(f"{checkpoint}: is an int8 checkpoint; {purpose} its fp32 source ({ckpt.get('source')})")
    return model, ckpt
