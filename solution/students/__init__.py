"""Sub-1.82M face-parsing students. Importing this package registers their architectures
and named configs (facekd/registry.py); facekd.models builds them from plain config.

It depends on torch, facekd.challenge and facekd.registry alone, because it ships inside
the exported solution.
"""

from __future__ import annotations

import torch.nn as nn

from facekd.registry import STUDENT_ARCHS, register_student
from students import resfpn as _resfpn, unet as _unet  # noqa: F401  (they register their architectures)


@register_student("resfpn")
def resfpn_student() -> dict:
    """The at-limit student the toolkit ships (1,372,419 parameters once pruned)."""
    return dict(arch="resfpn", stem=[16, 32], widths=[32, 64, 128, 160], depths=[2, 2, 2, 2], fpn_dim=64,
                head_dim=48)


@register_student("unet")
def unet_student() -> dict:
    return dict(arch="unet", stem=24, widths=[32, 64, 128, 192], depths=[1, 2, 2, 1], decoder=[96, 64, 48])


@register_student("resfpn_wide")
def resfpn_wide_student() -> dict:
    """Deliberately over the limit: distilled wide, then pruned below it."""
    return dict(arch="resfpn", stem=[24, 48], widths=[48, 96, 160, 224], depths=[2, 2, 2, 2], fpn_dim=96,
                head_dim=64, over_budget=True)


@register_student("tiny")
def tiny_student() -> dict:
    """A few thousand parameters, for tests."""
    return dict(arch="resfpn", stem=[8, 8], widths=[8, 16, 16, 16], depths=[1, 1, 1, 1], fpn_dim=8, head_dim=8)


def model_config(model: nn.Module) -> dict:
    """Plain config of a (possibly pruned) student, read back from its weights."""
    arch = next(name for name in STUDENT_ARCHS if type(model) is STUDENT_ARCHS[name])
    return {"arch": arch, **model.config_from_weights()}
