"""Several trained models taught as one teacher (Hinton, Vinyals and Dean, 2015: distilling an
ensemble that cannot be shipped into one model that can).

The members may differ in architecture, input size and output stride. Each sees the batch at
its own share of the ensemble's input size, so that at that size (the one predict and the
offline targets use) every member runs at the size it was trained for; under online
distillation, at a smaller training size, each keeps its proportion. Their logits are
resized to the finest member's output and averaged.

Logits, not probabilities, are averaged. The stored targets then stay logits, which every
distillation loss reads with its own temperature as it reads a single teacher's, and the
flip and scale test-time augmentation already average logits: the ensemble is one more
average of the same kind. Softmax of the mean logit is the normalised geometric mean of the
members' distributions, which, for members trained alike, ranks classes as their
arithmetic mean does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.distributed import device_for
from facekd.files import load_checkpoint
from facekd.models import load_model


def member_size(batch_size: int, member_input: int, ensemble_input: int) -> int:
    """A member's input side for a batch of side batch_size, a multiple of 32 (the deepest stride)."""
    return max(32, round(batch_size * member_input / ensemble_input / 32) * 32)


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.input_size = max(m.input_size for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for m in self.members:
            side = member_size(x.shape[-1], m.input_size, self.input_size)
            xm = x if side == x.shape[-1] else F.interpolate(x, size=(side, side), mode="bilinear",
                                                              align_corners=False, antialias=True)
            outs.append(m(xm.contiguous(memory_format=torch.channels_last)).float())
        size = max((o.shape[-2:] for o in outs), key=lambda s: s[0] * s[1])
        return sum(o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                   for o in outs) / len(outs)


def model_or_ensemble(paths: list, device=None, fp32_for: str | None = None) -> tuple[nn.Module, dict]:
    """One checkpoint's model (eval mode) and its dict or, for several, an Ensemble of them with
    {"members": [...]} naming each member's file, arch, input size and recorded val F-score.
    `fp32_for` (what the caller does with them, e.g. "distil from") refuses int8 members, which
    predicting takes but training does not."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no checkpoint given")
    ckpts = [load_checkpoint(p) for p in paths]
    models = [load_model(c, p, fp32_for=fp32_for) for p, c in zip(paths, ckpts)]
    device = device_for(models, device)  # an int8 member keeps them all on the CPU: one forward, one device
    models = [m.to(device) for m in models]
    if len(paths) == 1:
        return models[0], ckpts[0]
    members = [{"path": p, "arch": c["model_cfg"]["arch"], "input_size": m.input_size,
                "val_fscore": c.get("val_fscore")} for p, c, m in zip(paths, ckpts, models)]
    return Ensemble(models).eval(), {"members": members}
