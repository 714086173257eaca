"""Every training loss, supervised and distillation alike, registered by name; its weight is
cfg.loss_weights[name] (torchdistill's pattern: one registered function plus a weight in the
config). A stage trains on `training_loss(cfg, teacher)`: the sum of the registered losses
whose weight is above zero.

Adding a loss is one decorated function here, or in a plugin module (docs/EXTENDING.md), and
no edit to facekd/config.py: `--set toy_weight=1`, a TOML key or a preset then turns on the
loss registered as "toy". A loss says what it compares the logits with:
- "labels": fn(logits, labels, cfg), logits upsampled to the labels' size;
- "teacher": fn(student, teacher, temperature, valid), both BxCxHxW at the student's output
  size (the labels' with teacher_term_size = "labels"), `valid` an optional BxHxW mask of the
  pixels to compare. These run only when the stage has a teacher, or its stored soft targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.precision import autocast, resolve_precision
from facekd.registry import LOSSES
from facekd.transforms import IGNORE_INDEX

LossFn = Callable[..., dict]  # (logits, images, labels, soft_targets) -> {"loss": total, **terms}


@dataclass(frozen=True)
class Loss:
    name: str                  # its key in cfg.loss_weights; absent (or 0) turns it off
    fn: Callable[..., torch.Tensor]
    uses: str                  # "labels" or "teacher"
    # Online, the teacher saw the padding a warp brought in, so a loss may keep those pixels;
    # offline they hold zeros that no teacher produced, and every loss leaves them out.
    masks_online: bool = True

    @property
    def setting(self) -> str:
        """How a user sets its weight: `--set kd_weight=1`, or `kd_weight = 1` in a TOML file."""
        return f"{self.name}_weight"


def register_loss(name: str, uses: str = "teacher", masks_online: bool = True):
    if uses not in ("labels", "teacher"):
        raise ValueError(f"loss {name!r}: uses must be 'labels' or 'teacher', not {uses!r}")

    def add(fn):
        LOSSES.add(name, Loss(name, fn, uses, masks_online))
        return fn
    return add


def weight_of(cfg, loss: Loss) -> float:
    return cfg.loss_weights.get(loss.name, 0.0)


def check_loss_names(cfg) -> None:
    """Refuse a weight for a loss no module registered: a typo would otherwise be a loss
    silently left out."""
    unknown = sorted(set(cfg.loss_weights) - set(LOSSES))
    if unknown:
        raise ValueError(", ".join(f"{name}_weight" for name in unknown) + ": no such loss; the registered ones are "
                         + ", ".join(f"{name}_weight" for name in LOSSES))


def active_losses(cfg, uses: str | None = None) -> list[Loss]:
    """The registered losses (of one kind, if given) that cfg weighs above zero, in registration order."""
    check_loss_names(cfg)
    return [LOSSES[name] for name in LOSSES
            if weight_of(cfg, LOSSES[name]) > 0 and uses in (None, LOSSES[name].uses)]


def losses_trained(cfg, has_teacher: bool) -> dict:
    """{name: weight} of the losses a run actually trains on, for its config record: a preset's
    teacher-loss weights stay in the config of a run from labels alone, where they do nothing,
    and a reader of its config.json should not take them for part of the recipe."""
    return {loss.name: weight_of(cfg, loss) for loss in active_losses(cfg, None if has_teacher else "labels")}


def valid_pixels(labels: torch.Tensor, size, margin: int = 0) -> torch.Tensor:
    """BxHxW mask of the pixels at `size` whose label is not IGNORE_INDEX (warped in from
    outside), shrunk by `margin` pixels away from those."""
    invalid = F.interpolate(labels[:, None].float(), size=size, mode="nearest") == IGNORE_INDEX
    if margin:
        invalid = F.max_pool2d(invalid.float(), 2 * margin + 1, 1, margin) > 0
    return ~invalid[:, 0]


def training_loss(cfg, teacher: nn.Module | None = None) -> LossFn:
    """The weighted sum of cfg's active losses. The teacher's side is the teacher run on the
    batch (online) or, when the engine passes them, the stored soft targets that followed the
    batch's flip and warp (offline; then `teacher` is None). Without either, the teacher
    losses are left out: the stage trains from labels alone."""
    label_losses, teacher_losses = active_losses(cfg, "labels"), active_losses(cfg, "teacher")
    if not label_losses and not teacher_losses:
        raise ValueError("every loss weight is 0: give at least one of "
                         + ", ".join(LOSSES[name].setting for name in LOSSES) + " a positive value")

    def loss_fn(logits, images, labels, soft_targets=None):
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        terms = {loss.name: loss.fn(upsampled, labels, cfg) for loss in label_losses}
        if teacher_losses and (teacher is not None or soft_targets is not None):
            student = upsampled if cfg.teacher_term_size == "labels" else logits
            terms.update(_teacher_terms(teacher_losses, cfg, teacher, student, images, labels, soft_targets))
        terms["loss"] = sum(weight_of(cfg, LOSSES[name]) * value for name, value in terms.items())
        return terms
    return loss_fn


def _teacher_terms(losses: list[Loss], cfg, teacher, logits, images, labels, soft_targets) -> dict:
    offline = soft_targets is not None
    if offline:
        soft_targets = soft_targets.float()
    else:
        # the same augmented batch as the student sees, at the run's forward precision
        with torch.no_grad(), autocast(resolve_precision(cfg.precision, images.device), images.device):
            soft_targets = teacher(images).float()
    # Offline, the pixels warped in from outside hold zeros that no teacher produced, and the
    # bilinear warp blends those zeros into the first stored pixel inside: both are left out,
    # the margin being one stored pixel on the grid compared.
    margin = -(-logits.shape[-1] // soft_targets.shape[-1]) if offline else 0
    soft_targets = F.interpolate(soft_targets, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    valid = valid_pixels(labels, logits.shape[-2:], margin=margin)
    return {loss.name: loss.fn(logits, soft_targets, cfg.temperature, valid=valid if offline or loss.masks_online else None)
            for loss in losses}


# --- supervised ------------------------------------------------------------------------------

@register_loss("ce", uses="labels")
def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, cfg) -> torch.Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


@register_loss("dice", uses="labels")
def dice_term(logits: torch.Tensor, labels: torch.Tensor, cfg) -> torch.Tensor:
    return dice_loss(logits, labels, per_image=cfg.dice_scope == "image")


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Soft multi-class Dice over the classes present in the labels; ignores padded pixels.

    Pooled over the batch by default. With per_image, each image's Dice is averaged over the
    classes its own labels hold and then over images: the shape of the challenge's score, in
    which a necklace in one image weighs as much as that image's skin."""
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(labels.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter, probs_sum, pixels = (probs * onehot).sum((2, 3)), probs.sum((2, 3)), onehot.sum((2, 3))  # B x C
    if not per_image:  # the whole batch scored as one image
        inter, probs_sum, pixels = inter.sum(0, True), probs_sum.sum(0, True), pixels.sum(0, True)
    dice = (2 * inter + 1) / (probs_sum + pixels + 1)
    present = pixels > 0
    counts = present.sum(1)
    scored = counts > 0  # an image warped entirely into padding has nothing to score
    return 1 - ((dice * present).sum(1)[scored] / counts[scored]).mean()


# --- distillation ----------------------------------------------------------------------------

@register_loss("kd")
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


@register_loss("cwd", masks_online=False)
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


@register_loss("dist")
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
