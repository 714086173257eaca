"""Augmentation applied to a whole batch of tensors at once (on the GPU when there is one).

Per-sample PIL transforms cost more than the forward pass of a small student on CPU;
one affine_grid/grid_sample call for the batch costs a fraction of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facekd.inference import normalize
from facekd.labels import FLIP_PERMUTATION

IGNORE_INDEX = 255  # pixels that the affine warp brought in from outside the image


@dataclass
class AugmentConfig:
    flip: float = 0.5
    scale: tuple[float, float] = (0.8, 1.25)
    rotate_deg: float = 15.0
    shift: float = 0.08
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25

    @classmethod
    def from_run_config(cls, cfg) -> AugmentConfig:
        """What a RunConfig asks for; its one `jitter` sets brightness, contrast and saturation."""
        return cls(flip=cfg.flip, scale=(cfg.scale_min, cfg.scale_max), rotate_deg=cfg.rotate_deg, shift=cfg.shift,
                   brightness=cfg.jitter, contrast=cfg.jitter, saturation=cfg.jitter)


def hflip_with_swap(images: torch.Tensor, masks: torch.Tensor, which: torch.Tensor):
    """Mirror the selected samples and swap l_/r_ label ids in their masks."""
    perm = torch.tensor(FLIP_PERMUTATION + list(range(len(FLIP_PERMUTATION), 256)),
                        dtype=torch.uint8 if masks.dtype == torch.uint8 else masks.dtype, device=masks.device)
    images = torch.where(which.view(-1, 1, 1, 1), images.flip(-1), images)
    flipped = perm[masks.flip(-1).long()]
    masks = torch.where(which.view(-1, 1, 1), flipped, masks)
    return images, masks


def hflip_soft_targets(soft_targets: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Mirror the selected samples of BxCxHxW class scores and swap the l_/r_ channels,
    so that stored soft targets follow hflip_with_swap exactly."""
    perm = torch.tensor(FLIP_PERMUTATION, device=soft_targets.device)
    return torch.where(which.view(-1, 1, 1, 1), soft_targets.flip(-1).index_select(1, perm), soft_targets)


def random_theta(b: int, cfg: AugmentConfig, device, gen: torch.Generator | None = None) -> torch.Tensor:
    """Bx2x3 affine matrices (random scale, rotation and shift) in the normalised
    coordinates of affine_grid, so one matrix warps maps of any resolution alike."""
    u = lambda lo, hi: torch.empty(b, device=device).uniform_(lo, hi, generator=gen)
    log_s = u(math.log(cfg.scale[0]), math.log(cfg.scale[1]))
    angle = u(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    inv_s = torch.exp(-log_s)  # the grid maps output to input coordinates, hence the inverse
    cos, sin = torch.cos(angle) * inv_s, torch.sin(angle) * inv_s
    return torch.stack([torch.stack([cos, -sin, u(-cfg.shift, cfg.shift) * 2], 1),
                        torch.stack([sin, cos, u(-cfg.shift, cfg.shift) * 2], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
                  soft_targets: torch.Tensor | None = None):
    """Random scale, rotation and shift; bilinear for the image (and any soft targets given
    along), nearest for the labels. Returns (images, masks, soft_targets)."""
    theta = random_theta(images.shape[0], cfg, images.device, gen)
    images = warp(images, theta)
    # shift ids by one so that zero padding marks "outside" rather than background
    shifted = warp((masks.float() + 1).unsqueeze(1), theta, mode="nearest")[:, 0].long()
    masks = torch.where(shifted == 0, IGNORE_INDEX, shifted - 1)
    return images, masks, None if soft_targets is None else warp(soft_targets, theta)


def colour_jitter(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None):
    """Brightness, contrast and saturation on float images in [0, 255]."""
    b, dev = images.shape[0], images.device
    u = lambda r: torch.empty(b, 1, 1, 1, device=dev).uniform_(1 - r, 1 + r, generator=gen)
    images = images * u(cfg.brightness)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * u(cfg.contrast) + mean
    gray = images.mean(dim=1, keepdim=True)
    images = (images - gray) * u(cfg.saturation) + gray
    return images.clamp(0, 255)


def train_batch(images_uint8: torch.Tensor, masks_uint8: torch.Tensor, cfg: AugmentConfig,
                gen: torch.Generator | None = None, soft_targets: torch.Tensor | None = None, channels_last: bool = True):
    """uint8 batch -> (normalised float images, int64 labels, soft_targets). The images are
    channels_last unless `channels_last` is False (the run's `channels_last = false`): a conv
    runs channels_last when its input or its weights are, so a contiguous model alone would not
    keep the kernels off that layout.

    `soft_targets` (BxCxhxw, any h and w, e.g. a teacher's stored logits) get the same flip, with
    the l_/r_ channels swapped, and the same affine warp as the images; colour jitter does
    not touch them. Pixels warped in from outside come out as zeros; their labels are
    IGNORE_INDEX, which is how a loss finds them."""
    b, dev = images_uint8.shape[0], images_uint8.device
    which = torch.rand(b, device=dev, generator=gen) < cfg.flip
    images, masks = hflip_with_swap(images_uint8, masks_uint8, which)
    if soft_targets is not None:
        soft_targets = hflip_soft_targets(soft_targets.float(), which)
    images, masks, soft_targets = random_affine(images.float(), masks, cfg, gen, soft_targets)
    images = colour_jitter(images, cfg, gen)
    images = normalize(images).contiguous(memory_format=torch.channels_last if channels_last
                                          else torch.contiguous_format)
    return images, masks, soft_targets
