"""The challenge's F-score, vectorised with one bincount confusion matrix per image.

Per image: for each class present in the ground truth, F1 with the reference's epsilon
placement, precision = tp/(tp+fp+eps), recall = tp/(tp+fn+eps),
f = 2*p*r/(p+r+eps); the image score is their mean. The dataset score is the mean over
images, not a pooled confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facekd.files import InputError
from facekd.labels import CLASS_NAMES, FLIP_PERMUTATION, NUM_CLASSES

EPS = 1e-7


def confusion_matrices(pred: torch.Tensor, gt: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """BxCx(C+1) int64 counts, rows = ground truth, cols = prediction. Pixels with gt >= C
    are skipped. Column C counts predicted ids outside 0..C-1: as in the reference scorer,
    such a pixel is a miss for its true class and a hit for none."""
    b = gt.shape[0]
    gt, pred = gt.reshape(b, -1).long(), pred.reshape(b, -1).long()
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    valid = gt < num_classes
    index = (torch.arange(b, device=gt.device).view(-1, 1) * num_classes + gt) * (num_classes + 1) + pred
    counts = torch.bincount(index[valid], minlength=b * num_classes * (num_classes + 1))
    return counts.view(b, num_classes, num_classes + 1)


def per_class_f1(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BxC F1, BxC bool 'present in ground truth') from BxCx(C+1) confusion matrices."""
    cm = cm.double()
    tp = cm.diagonal(dim1=1, dim2=2)
    gt_count, pred_count = cm.sum(2), cm[..., :-1].sum(1)
    precision = tp / (pred_count + EPS)
    recall = tp / (gt_count + EPS)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    return f1, gt_count > 0


def image_fscores(f1: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The challenge's per-image score from per_class_f1's output: the mean F1 over the
    classes each image's mask holds."""
    return (f1 * present).sum(1) / present.sum(1).clamp(min=1)


class FScoreMeter:
    """Accumulates per-image scores batch by batch."""

    def __init__(self):
        self.f1, self.present = [], []
        self.confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES + 1, dtype=torch.int64)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        cm = confusion_matrices(pred, gt)
        f1, present = per_class_f1(cm)
        self.f1.append(f1.cpu())
        self.present.append(present.cpu())
        self.confusion += cm.sum(0).cpu()

    def left_right_swap_rate(self) -> float:
        """Share of l_/r_ ground-truth pixels predicted as their mirror class: how often the
        model confuses the subject's sides, which per-class F1 alone does not separate out."""
        sided = [c for c in range(NUM_CLASSES) if FLIP_PERMUTATION[c] != c]
        swapped = sum(int(self.confusion[c, FLIP_PERMUTATION[c]]) for c in sided)
        return swapped / max(1, sum(int(self.confusion[c].sum()) for c in sided))

    def summary(self) -> dict:
        """The challenge score, each class's mean F1 over the images holding it, and each
        image's own score in the order the images came (to pair two models image by image)."""
        f1, present = torch.cat(self.f1), torch.cat(self.present)
        scores = image_fscores(f1, present)
        per_class = {}
        for c, name in enumerate(CLASS_NAMES):
            if present[:, c].any():
                per_class[name] = float(f1[present[:, c], c].mean())
        return {"fscore": float(scores.mean()), "per_class": per_class, "images": int(len(scores)),
                "image_fscores": scores.tolist(),
                "left_right_swap_rate": self.left_right_swap_rate(),
                "invalid_pixels": int(self.confusion[:, -1].sum())}


def name_some(names: list[str], shown: int = 5) -> str:
    """The first few of a list of file names, for a one-line message: a hundred missing masks
    are a count and an example or five, not 4 kB of names."""
    return ", ".join(names[:shown]) + (f" ... ({len(names) - shown} more)" if len(names) > shown else "")


def read_mask(path: Path) -> np.ndarray:
    """Read a mask exactly as the challenge's scorer does."""
    from PIL import Image
    with Image.open(path) as im:
        return np.array(im.convert("P"))


def read_checked_mask(path: Path) -> np.ndarray:
    """read_mask, refusing with a one-line error naming the file a mask it cannot read or
    whose values the scorer's convert("P") would requantise into other ids (RGB, 16-bit...)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(f"{path}: mode {im.mode!r}; masks must be palette (mode 'P') PNGs of class ids")
            return np.array(im.convert("P"))  # as read_mask, from the file opened once
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"{path}: unreadable mask ({e})") from e


def check_ground_truth(gt: np.ndarray, path: Path) -> None:
    """Refuse a ground-truth mask holding an id outside 0..18, naming the file. The scorer skips
    such pixels, so a corner of id 25 went unscored (a copy of the mask scored 1.0) and an
    all-255 mask scored 0.0 with no class, both without a word; training refuses the same
    masks (facekd.data.load_mask)."""
    outside = gt >= NUM_CLASSES
    if outside.any():
        ids = np.unique(gt[outside]).tolist()
        shown = ", ".join(map(str, ids[:5])) + (f" ... ({len(ids) - 5} more)" if len(ids) > 5 else "")
        raise InputError(f"{path}: ground truth holds id(s) {shown} outside 0..{NUM_CLASSES - 1} in "
                         f"{int(outside.sum()):,} of {gt.size:,} pixels; a ground-truth mask holds class ids only")


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, show_progress: bool = True) -> dict:
    """Score every ground-truth mask in gt_dir against the same stem in pred_dir. Predicted
    ids outside 0..18 score as misses and the files holding them are listed in
    `invalid_files`; a prediction holding no valid id at all is an error, and so is a
    ground-truth mask holding any id outside 0..18 (check_ground_truth)."""
    from tqdm import tqdm
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such folder")
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise FileNotFoundError(f"{gt_dir}: no ground-truth PNG masks")
    missing = [p.name for p in gts if not (pred_dir / p.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{pred_dir}: {len(missing)} predictions missing, e.g. {missing[:3]}")
    meter, invalid_files = FScoreMeter(), []
    for p in tqdm(gts, desc="evaluate", disable=not show_progress, leave=False):
        pred_path = pred_dir / p.name
        gt = read_checked_mask(p)
        check_ground_truth(gt, p)
        pred = read_checked_mask(pred_path)
        if gt.shape != pred.shape:
            raise InputError(f"{pred_path}: prediction is {pred.shape} but ground truth is {gt.shape}")
        invalid = pred >= NUM_CLASSES
        if invalid.all():
            raise InputError(f"{pred_path}: holds no class id in 0..{NUM_CLASSES - 1} (ids {int(pred.min())}.."
                             f"{int(pred.max())}); it is not a prediction")
        if invalid.any():
            invalid_files.append(pred_path.name)
        meter.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    # image_fscores follow the masks' sorted names: saying which lets two outputs pair by name
    return {**meter.summary(), "image_names": [p.name for p in gts], "invalid_files": invalid_files}
