"""Distillation losses on logits, each registered by name with the config weight that turns
it on (torchdistill's pattern: a loss is one function plus one weight in the config).

Every loss takes student and teacher logits of the same shape BxCxHxW (the caller resizes the
teacher's to the student's output size), the run's temperature, and an optional BxHxW mask of
the pixels to compare. Adding a loss is one decorated function here and a float field of that
name in facekd/config.py's RunConfig.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillationLoss:
    name: str
    weight: str                # the RunConfig field that weighs it; 0 turns it off
    fn: Callable[..., torch.Tensor]
    # Online, the teacher saw the padding a warp brought in, so a loss may keep those pixels;
    # offline they hold zeros that no teacher produced, and every loss leaves them out.
    masks_online: bool = True


DISTILLATION_LOSSES: dict[str, DistillationLoss] = {}


def register_distillation_loss(name: str, weight: str, masks_online: bool = True):
    def add(fn):
        if name in DISTILLATION_LOSSES:
            raise ValueError(f"distillation loss {name!r} is registered twice")
        DISTILLATION_LOSSES[name] = DistillationLoss(name, weight, fn, masks_online)
        return fn
    return add


def active_losses(cfg) -> list[DistillationLoss]:
    """The registered losses whose weight in cfg is positive, in registration order."""
    return [loss for loss in DISTILLATION_LOSSES.values() if getattr(cfg, loss.weight) > 0]


@register_distillation_loss("kd", weight="kd_weight")
def pixel_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel KL(teacher || student) between temperature-softened class distributions,
    averaged over valid pixels and scaled by T^2 so its gradient does not shrink with T."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # BxHxW
    if valid is not None:
        kl = kl[valid]
    return kl.mean() * temperature ** 2


@register_distillation_loss("cwd", weight="cwd_weight", masks_online=False)
def channel_wise_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each class channel becomes a
    distribution over spatial positions, and the student matches the teacher's by KL.
    It stresses where each class is most confident rather than every pixel equally.
    With a BxHxW `valid` mask the distributions are over the valid positions only."""
    b, c = student.shape[:2]
    student, teacher = student / temperature, teacher / temperature
    if valid is not None:
        # pushing a position's logits far below any real one gives it zero probability on both
        # sides, hence zero KL and zero gradient there, without the NaNs that -inf would make;
        # one broadcast add is cheaper on CPU than masked_fill's forward and backward
        outside = (~valid).unsqueeze(1).to(student.dtype) * -1e4
        student, teacher = student + outside, teacher + outside
    log_p_s = F.log_softmax(student.reshape(b * c, -1), dim=1)
    log_p_t = F.log_softmax(teacher.reshape(b * c, -1), dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # one value per (sample, channel)
    return kl.mean() * temperature ** 2


def _unit(x: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """x centred and scaled to unit length along dim: dot products of such vectors are Pearson
    correlations."""
    x = x - x.mean(dim, keepdim=True)
    return x / (x.norm(dim=dim, keepdim=True) + eps)


@register_distillation_loss("dist", weight="dist_weight")
def dist_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"):
    match the relations of the logits rather than their values. One minus the Pearson
    correlation between student and teacher, across the classes of each pixel (inter-class)
    plus across the pixels of each class (intra-class), each averaged; pixels of the whole
    batch are the samples.

    The paper correlates softmax(z / T). Here both relations are taken on the logits
    standardised per pixel (centred and scaled over the classes), so the loss does not change
    when a pixel's student logits are scaled by any positive factor or shifted: a student
    need not match a stronger teacher's confidence, only how it ranks and spaces the classes
    at each pixel and where each class is strong. The temperature is therefore not used."""
    c = student.shape[1]
    s, t = (x.permute(0, 2, 3, 1).reshape(-1, c) for x in (student, teacher))  # pixels x classes
    if valid is not None:
        s, t = s[valid.reshape(-1)], t[valid.reshape(-1)]
    s, t = _unit(s.float(), 1), _unit(t.float(), 1)
    inter = 1 - (s * t).sum(1).mean()
    intra = 1 - (_unit(s, 0) * _unit(t, 0)).sum(0).mean()
    return inter + intra
