"""The one implementation of pre- and post-processing, shared by `facekd predict`,
validation and the exported `solution/run.py`.

Depends only on torch, numpy and pillow, because the export ships this file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from facekd.labels import FLIP_PERMUTATION, NUM_CLASSES, PALETTE

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(ValueError):
    """A bad input file; the message names the file."""


def list_images(path: str | os.PathLike) -> list[Path]:
    """A file as itself, or a folder's images sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image as HxWx3 uint8 RGB; gray, RGBA, CMYK and palette images are converted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()  # PIL decodes lazily; force it so a truncated file fails here
            if im.mode != "RGB":
                im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"{path}: unreadable image ({e})") from e


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 Bx3xHxW -> float, ImageNet mean/std (a fixed affine map, not pretrained statistics)."""
    mean = torch.tensor(IMAGE_MEAN, device=images_uint8.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGE_STD, device=images_uint8.device).view(1, 3, 1, 1) * 255
    return (images_uint8.float() - mean) / std


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 or float Bx3xHxW batch to size x size (antialiased bilinear)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


def flip_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mirror logits back and swap the left/right class channels."""
    perm = torch.tensor(FLIP_PERMUTATION, device=logits.device)
    return logits.flip(-1).index_select(1, perm)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images_uint8: torch.Tensor, input_size: int,
                   out_size: tuple[int, int] | None = None, flip_tta: bool = True) -> torch.Tensor:
    """Class scores for a uint8 Bx3xHxW batch at out_size (default: the input's size).

    The model sees the batch at its own input_size; it may predict at a stride and its
    logits are upsampled bilinearly, which is much cheaper than a full-resolution decoder.
    """
    out_size = out_size or tuple(images_uint8.shape[-2:])
    x = normalize(resize_images(images_uint8, input_size)).contiguous(memory_format=torch.channels_last)
    logits = model(x).float()
    if flip_tta:
        logits = 0.5 * (logits + flip_logits(model(x.flip(-1)).float()))
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def predict_mask(model: torch.nn.Module, rgb: np.ndarray, input_size: int, flip_tta: bool = True) -> np.ndarray:
    """HxW uint8 class ids for one HxWx3 uint8 image, at the image's own size."""
    device = next(model.parameters()).device
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(device)
    logits = predict_logits(model, x, input_size, flip_tta=flip_tta)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def mask_image(mask: np.ndarray) -> Image.Image:
    """A single-channel mode-"P" image with the challenge palette; pixel values are class ids."""
    if mask.ndim != 2 or mask.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"mask must be HxW with ids < {NUM_CLASSES}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    im.putpalette(PALETTE)
    return im


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write the mask atomically, so a crash never leaves a partial PNG behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            mask_image(mask).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
