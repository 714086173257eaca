"""The one implementation of pre- and post-processing, shared by `facekd predict`,
validation and the exported `solution/run.py`: images in, logits, masks out.

Depends only on torch, numpy and pillow, because the export ships this file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from facekd.files import InputError, atomic_write
from facekd.labels import FLIP_PERMUTATION, NUM_CLASSES, PALETTE

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# One list for a folder and for a single file, so the two never disagree.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Challenge images are 512x512. 4096x4096 covers any camera photo worth parsing; beyond it
# the full-size logits alone (19 floats per pixel) pass 1.2 GB, and a tiny PNG can claim
# 15000x15000 (a decompression bomb).
MAX_PIXELS = 4096 * 4096
# Modes that convert("RGB") does not take directly, or takes wrongly (palette transparency).
_VIA = {"P": "RGBA", "PA": "RGBA", "La": "LA"}


def list_images(path: str | os.PathLike) -> list[Path]:
    """A file as itself, or a folder's images sorted by name."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _open_checked(path: Path) -> Image.Image:
    """Image.open, with anything over MAX_PIXELS refused before its pixels are decoded."""
    limit = f"the maximum is {MAX_PIXELS:,} pixels (4096x4096)"
    # Pillow warns above its own limit (89 MP) and refuses above twice that; both are far
    # above ours, so both mean "too large" here, and neither may print a stray warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"{path}: image too large ({limit})") from None
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise InputError(f"{path}: image too large ({im.width}x{im.height}; {limit})")
    return im


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode.startswith("I;16"):
        # 16-bit grey: scale to 8 bits; convert("RGB") would clip every value above 255 to white
        grey = ((np.asarray(im).astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        raise InputError(f"{path}: mode {im.mode} (32-bit {'integer' if im.mode == 'I' else 'float'} pixels) has no "
                         "fixed range to scale from; save it as an 8- or 16-bit image")
    if im.mode in _VIA:
        im = im.convert(_VIA[im.mode])
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _as_displayed(im: Image.Image) -> Image.Image:
    """The image turned as a viewer shows it. A phone stores a portrait sideways with an EXIF
    orientation tag saying how to turn it; read as stored, the face lies on its side, and the
    model, trained on upright faces, parses it badly (issue 34: 60% agreement). A damaged
    EXIF block leaves the pixels good, so they are kept as stored."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow raises many types for a malformed EXIF block
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image as HxWx3 uint8 RGB, in its displayed orientation (its EXIF orientation
    applied), so that its mask is too. Every Pillow mode with a known range is converted
    (16-bit scaled, alpha dropped, CMYK/LAB/HSV/YCbCr to RGB); the rest, and images over
    MAX_PIXELS, are refused with an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with _open_checked(path) as im:
            im.load()  # PIL decodes lazily; force it so a truncated file fails here
            return _to_rgb(_as_displayed(im), path)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
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


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live. An int8 model packs its weights and has no parameters;
    its kernels run on the CPU."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


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
    device = model_device(model)
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
    """Write the mask atomically (see atomic_write); a path that cannot be written is an
    InputError naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            mask_image(mask).save(f, format="PNG")
    except OSError as e:  # a folder the up-front checks could not see through, e.g. on /proc or a full disk
        raise InputError(f"{path}: cannot write the mask ({e.strerror or e})") from e


