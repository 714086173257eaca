"""Reading the challenge layout and caching decoded splits as uint8 tensors in memory.

Layout: <root>/<split>/images/<stem>.jpg and <root>/<split>/masks/<stem>.png.
Decoding 1000 512x512 JPEGs takes seconds; doing it once per run instead of once per
epoch is the first and cheapest speed-up.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from facekd.files import InputError
from facekd.inference import list_images, load_rgb, resize_images
from facekd.labels import NUM_CLASSES
from facekd.metric import name_some

SAMPLE_DATA = Path(__file__).parent / "sample_data"


class DataError(ValueError):
    """Bad data on disk; the message names the file or folder."""


def default_data_root() -> Path:
    """The small embedded sample, so every command runs on a fresh clone."""
    return SAMPLE_DATA


@dataclass
class Pair:
    stem: str
    image: Path
    mask: Path | None


def find_pairs(root: str | Path, split: str, require_masks: bool = True) -> list[Pair]:
    """Images of a split paired with masks by file stem. With require_masks, images that
    have no mask are dropped (val has 100 images but 69 masks; in train, where every image
    should have one, they are reported) and zero pairs is an error. Two images of one stem
    (x.jpg and x.JPG) are refused: one mask cannot label both."""
    image_dir, mask_dir = Path(root) / split / "images", Path(root) / split / "masks"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such folder")
    images = list_images(image_dir)
    _refuse_shared_stems(images)
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    pairs = [Pair(p.stem, p, masks.get(p.stem)) for p in images]
    if require_masks:
        unmasked = [p.image.name for p in pairs if p.mask is None]
        pairs = [p for p in pairs if p.mask is not None]
        if not pairs:
            raise DataError(f"{image_dir}: no image has a mask in {mask_dir}")
        if split == "train" and unmasked:
            _report_once(f"{image_dir}: {len(unmasked)} of {len(images)} images have no mask in {mask_dir}, so they "
                         f"are left out of training: {name_some(unmasked)}")
    elif not pairs:
        raise DataError(f"{image_dir}: no images")
    return pairs


def _refuse_shared_stems(images: list[Path]) -> None:
    by_stem: dict[str, list[str]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image.name)
    shared = [names for names in by_stem.values() if len(names) > 1]
    if shared:
        more = f" (and {len(shared) - 1} more stems)" if len(shared) > 1 else ""
        raise DataError(f"{images[0].parent}: {' and '.join(shared[0])} share one stem, so one mask would label "
                        f"both{more}; keep one of them")


_reported: set[str] = set()  # what this process has said already: a split is listed at every resolution


def _report_once(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        tqdm.write(f"facekd: warning: {message}", file=sys.stderr)


def load_mask(path: Path, expected_size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: mask must be a single-channel P or L PNG, got mode {im.mode}")
            mask = np.asarray(im, dtype=np.uint8).copy()
    except OSError as e:
        raise DataError(f"{path}: unreadable mask ({e})") from e
    if mask.shape != expected_size:
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{expected_size[1]}x{expected_size[0]}")
    if mask.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {mask.max()} is above {NUM_CLASSES - 1}")
    return mask


def _decode(pair: Pair, size: int | None):
    try:
        rgb = load_rgb(pair.image)
    except InputError as e:
        raise DataError(str(e)) from e
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    mask = None if pair.mask is None else torch.from_numpy(load_mask(pair.mask, rgb.shape[:2]))
    if size is not None:
        image = resize_images(image[None], size)[0]
        if mask is not None and mask.shape[-1] != size:
            mask = torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].to(torch.uint8)
    return image, mask


@dataclass
class CachedSplit:
    """A whole split decoded once: uint8 images Nx3xSxS and uint8 masks NxSxS."""
    stems: list[str]
    images: torch.Tensor
    masks: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.stems)


def load_split(root: str | Path, split: str, size: int | None = None, limit: int = 0,
               threads: int = 4, show_progress: bool = True) -> CachedSplit:
    """Decode a split's masked pairs, resized to size (None keeps the native size, which must
    then be the same for all images). PIL releases the GIL while decoding, so threads help."""
    pairs = find_pairs(root, split)
    if limit:
        pairs = pairs[:limit]
    with ThreadPoolExecutor(threads) as pool:
        items = list(tqdm(pool.map(lambda p: _decode(p, size), pairs), total=len(pairs),
                          desc=f"decode {split}@{size or 'native'}", disable=not show_progress, leave=False))
    shapes = {tuple(im.shape) for im, _ in items}
    if len(shapes) > 1:
        raise DataError(f"{Path(root) / split}: images differ in size {sorted(shapes)}; pass a size to resize them")
    return CachedSplit([p.stem for p in pairs], torch.stack([im for im, _ in items]),
                       torch.stack([m for _, m in items]))
