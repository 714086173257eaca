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


def hflip_with_swap(images: torch.Tensor, masks: torch.Tensor, which: torch.Tensor):
    """Mirror the selected samples and swap l_/r_ label ids in their masks."""
    perm = torch.tensor(FLIP_PERMUTATION + list(range(len(FLIP_PERMUTATION), 256)),
                        dtype=torch.uint8 if masks.dtype == torch.uint8 else masks.dtype, device=masks.device)
    images = torch.where(which.view(-1, 1, 1, 1), images.flip(-1), images)
    flipped = perm[masks.flip(-1).long()]
    masks = torch.where(which.view(-1, 1, 1), flipped, masks)
    return images, masks


def random_affine(images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None):
    """Random scale, rotation and shift; bilinear for the image, nearest for the labels."""
    b, dev = images.shape[0], images.device
    u = lambda lo, hi: torch.empty(b, device=dev).uniform_(lo, hi, generator=gen)
    log_s = u(math.log(cfg.scale[0]), math.log(cfg.scale[1]))
    angle = u(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    inv_s = torch.exp(-log_s)  # the grid maps output to input coordinates, hence the inverse
    cos, sin = torch.cos(angle) * inv_s, torch.sin(angle) * inv_s
    theta = torch.stack([torch.stack([cos, -sin, u(-cfg.shift, cfg.shift) * 2], 1),
                         torch.stack([sin, cos, u(-cfg.shift, cfg.shift) * 2], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # shift ids by one so that zero padding marks "outside" rather than background
    shifted = (masks.float() + 1).unsqueeze(1)
    shifted = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    masks = torch.where(shifted == 0, IGNORE_INDEX, shifted - 1)
    return images, masks


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
                gen: torch.Generator | None = None):
    """uint8 batch -> (normalised float images in channels_last, int64 labels)."""
    b, dev = images_uint8.shape[0], images_uint8.device
    which = torch.rand(b, device=dev, generator=gen) < cfg.flip
    images, masks = hflip_with_swap(images_uint8, masks_uint8, which)
    images, masks = random_affine(images.float(), masks, cfg, gen)
    images = colour_jitter(images, cfg, gen)
    images = normalize(images).contiguous(memory_format=torch.channels_last)
    return images, masks
