"""Sub-1.82M face-parsing students, built from plain config. Depends on torch alone."""

from __future__ import annotations

import torch.nn as nn

from facekd.challenge import PARAM_LIMIT, count_params

from students.resfpn import ResFPN
from students.unet import UNetLite

ARCHS = {"resfpn": ResFPN, "unet": UNetLite}

# Named students: a plain kwargs dict per name; "arch" picks the class.
STUDENTS = {
    "resfpn": dict(arch="resfpn", stem=[16, 32], widths=[32, 64, 128, 160], depths=[2, 2, 2, 2],
                   fpn_dim=64, head_dim=48),
    "unet": dict(arch="unet", stem=24, widths=[32, 64, 128, 192], depths=[1, 2, 2, 1], decoder=[96, 64, 48]),
    # deliberately over budget: distilled wide, then pruned below the limit
    "resfpn_wide": dict(arch="resfpn", stem=[24, 48], widths=[48, 96, 160, 224], depths=[2, 2, 2, 2],
                        fpn_dim=96, head_dim=64, over_budget=True),
    # a few thousand parameters, for tests
    "tiny": dict(arch="resfpn", stem=[8, 8], widths=[8, 16, 16, 16], depths=[1, 1, 1, 1], fpn_dim=8, head_dim=8),
}


def student_config(name: str, **overrides) -> dict:
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose from {sorted(STUDENTS)}")
    return {**STUDENTS[name], **overrides}


def build_student(model_cfg: dict, allow_over_budget: bool = False) -> nn.Module:
    """Build a student from its plain config; refuse one at or above the challenge limit
    unless its config says `over_budget=True` (a wide student meant to be pruned) or the
    caller explicitly allows it (rebuilding a checkpoint as it was trained)."""
    cfg = dict(model_cfg)
    arch = cfg.pop("arch", None)
    allow_over_budget = cfg.pop("over_budget", False) or allow_over_budget
    if arch not in ARCHS:
        raise ValueError(f"unknown student arch {arch!r}; choose from {sorted(ARCHS)}")
    model = ARCHS[arch](**cfg)
    n = count_params(model)
    if n >= PARAM_LIMIT and not allow_over_budget:
        raise ValueError(f"student {arch} has {n:,} trainable parameters, over the challenge limit "
                         f"(< {PARAM_LIMIT:,}); mark a wide student to prune with over_budget=True")
    return model


def model_config(model: nn.Module) -> dict:
    """Plain config of a (possibly pruned) student, read back from its weights."""
    arch = next(k for k, cls in ARCHS.items() if type(model) is cls)
    return {"arch": arch, **model.config_from_weights()}
