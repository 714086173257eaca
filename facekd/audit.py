"""Label audit: find masks whose left/right convention disagrees with the rest of their split,
and write a corrected copy of the split.

Each of the pairs (l_eye, r_eye), (l_brow, r_brow), (l_ear, r_ear) votes on a mask's
convention by where its two regions' centroids lie: +1 when the l_ region is on the
image-right of the r_ region (the subject's left on the viewer's right), -1 otherwise. A pair
votes only when both regions are big enough and far enough apart to judge. The split's
convention is the majority of its masks' votes. A mask whose pairs all vote against it is
mirrored, and all of its left/right ids are swapped by a fix, lone parts such as a single
visible ear included. A mask whose pairs disagree with one another is inconsistent; a fix
swaps only the pairs that vote against the split.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from facekd.data import find_pairs
from facekd.files import check_output_folder
from facekd.labels import NUM_CLASSES, PALETTE

LR_PAIRS = {"eyes": (4, 5), "brows": (6, 7), "ears": (8, 9)}
MIN_AREA = 20         # pixels per region: smaller specks are annotation noise, not a part
MIN_SEPARATION = 4.0  # pixels between centroids: closer pairs say nothing about the side


@dataclass
class MaskAudit:
    stem: str
    mask: str
    votes: dict = field(default_factory=dict)   # pair name -> +1 / -1, for the pairs that could vote
    problems: list = field(default_factory=list)
    swap_pairs: list = field(default_factory=list)  # pairs a fix swaps

    @property
    def convention(self) -> int:
        """+1 or -1 when every vote agrees, 0 when there are none or they disagree."""
        signs = set(self.votes.values())
        return signs.pop() if len(signs) == 1 else 0


def pair_votes(mask: np.ndarray) -> dict:
    """Per left/right pair, +1 if the l_ centroid lies right of the r_ centroid, else -1."""
    flat = mask.ravel()
    columns = np.tile(np.arange(mask.shape[1], dtype=np.float64), mask.shape[0])
    area = np.bincount(flat, minlength=NUM_CLASSES)[:NUM_CLASSES]
    column_sum = np.bincount(flat, weights=columns, minlength=NUM_CLASSES)[:NUM_CLASSES]
    votes = {}
    for name, (left, right) in LR_PAIRS.items():
        if area[left] < MIN_AREA or area[right] < MIN_AREA:
            continue
        dx = column_sum[left] / area[left] - column_sum[right] / area[right]
        if abs(dx) >= MIN_SEPARATION:
            votes[name] = 1 if dx > 0 else -1
    return votes


def _read(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                return None, f"mode {im.mode}, not a single-channel P or L mask"
            return np.asarray(im, dtype=np.uint8), None
    except OSError as e:
        return None, f"unreadable ({e})"


def audit_split(root: str | Path, split: str = "train", show_progress: bool = True) -> dict:
    """Audit every masked pair of root/split. Returns the split's convention, one MaskAudit per
    mask with a problem, and counts."""
    pairs = find_pairs(root, split)
    audits = []
    for pair in tqdm(pairs, desc=f"audit {split}", disable=not show_progress, leave=False):
        a = MaskAudit(pair.stem, str(pair.mask))
        mask, error = _read(pair.mask)
        if error:
            a.problems.append(error)
            audits.append(a)
            continue
        with Image.open(pair.image) as im:  # the header is enough for the size
            image_size = im.size[::-1]
        if mask.shape != image_size:
            a.problems.append(f"size mismatch: mask {mask.shape[1]}x{mask.shape[0]}, "
                              f"image {image_size[1]}x{image_size[0]}")
        if mask.max() >= NUM_CLASSES:
            a.problems.append(f"label {int(mask.max())} out of range 0..{NUM_CLASSES - 1}")
        elif not mask.any():
            a.problems.append("empty: background only")
        else:
            a.votes = pair_votes(mask)
        audits.append(a)

    majority = int(np.sign(sum(a.convention for a in audits)))
    mirrored = inconsistent = 0
    for a in audits:
        if not majority or not a.votes:
            continue
        against = [name for name, v in a.votes.items() if v != majority]
        if not against:
            continue
        if a.convention == -majority:
            a.problems.append("mirrored: " + ", ".join(against) + " follow the other left/right convention")
            a.swap_pairs = list(LR_PAIRS)
            mirrored += 1
        else:
            a.problems.append("inconsistent: " + ", ".join(against) + " disagree with "
                              + ", ".join(n for n in a.votes if n not in against))
            a.swap_pairs = against
            inconsistent += 1
    return {
        "root": str(root), "split": split, "masks": len(audits),
        "judged": sum(1 for a in audits if a.votes),
        "convention": {1: "l_ on image-right", -1: "l_ on image-left", 0: "undecided"}[majority],
        "mirrored": mirrored, "inconsistent": inconsistent,
        "flagged": [a for a in audits if a.problems],
    }


def report_json(report: dict) -> dict:
    """The report with its MaskAudit records as plain dicts, for JSON."""
    return {**report, "flagged": [asdict(a) for a in report["flagged"]]}


def swap_lut(pair_names) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    for name in pair_names:
        left, right = LR_PAIRS[name]
        lut[left], lut[right] = right, left
    return lut


def _link(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def check_fix_target(out: str | Path) -> None:
    """The fixed copy goes to a new or empty folder; callers check this before auditing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: is a file; choose a new folder for the fixed copy")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out}: is not empty; choose a new folder for the fixed copy")
    check_output_folder(out)


def write_fixed(report: dict, out: str | Path, copy: bool = False) -> Path:
    """A corrected copy of the audited dataset root at out: the audited split with flagged
    masks' left/right ids swapped, everything else linked (or copied), and audit.json. The
    input is never modified."""
    root, split, out = Path(report["root"]), report["split"], Path(out)
    check_fix_target(out)
    fixes = {a.stem: a for a in report["flagged"] if a.swap_pairs}
    # The other splits (val, test) come along whole, so out works as a --data root.
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p.name != split):
        out.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copytree(other, out / other.name)
        else:
            _link(other, out / other.name, copy=False)
    (out / split / "images").mkdir(parents=True, exist_ok=True)
    (out / split / "masks").mkdir(parents=True, exist_ok=True)
    changed = []
    for pair in find_pairs(root, split):
        _link(pair.image, out / split / "images" / pair.image.name, copy)
        dst = out / split / "masks" / pair.mask.name
        audit = fixes.get(pair.stem)
        if audit is None:
            _link(pair.mask, dst, copy)
            continue
        with Image.open(pair.mask) as im:
            palette = im.getpalette() or PALETTE
            fixed = Image.fromarray(swap_lut(audit.swap_pairs)[np.asarray(im, dtype=np.uint8)], mode="P")
        fixed.putpalette(palette)
        fixed.save(dst)
        changed.append({"stem": pair.stem, "swapped": audit.swap_pairs, "why": audit.problems})
    record = {k: v for k, v in report.items() if k != "flagged"}
    record["flagged"] = [asdict(a) for a in report["flagged"]]
    record["changed"] = changed
    (out / "audit.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _colour(mask: np.ndarray) -> Image.Image:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(PALETTE)
    return im.convert("RGB")


def save_panel(report: dict, path: str | Path, limit: int = 6, size: int = 192) -> Path | None:
    """A PNG with one row per flagged mask: the image, its mask, and the fixed mask, so a
    person can check the flags by eye. None when nothing was flagged."""
    rows = [a for a in report["flagged"] if a.swap_pairs][:limit]
    if not rows:
        return None
    images = {p.stem: p.image for p in find_pairs(report["root"], report["split"])}
    panel = Image.new("RGB", (3 * size, len(rows) * size), "white")
    for r, a in enumerate(rows):
        mask, _ = _read(Path(a.mask))
        tiles = (Image.open(images[a.stem]).convert("RGB"), _colour(mask),
                 _colour(swap_lut(a.swap_pairs)[mask]))
        for c, tile in enumerate(tiles):
            panel.paste(tile.resize((size, size), Image.NEAREST), (c * size, r * size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.save(path)
    return path


def format_table(report: dict) -> str:
    lines = [f"{report['root']}/{report['split']}: {report['masks']} masks, {report['judged']} judged by "
             f"left/right geometry; split convention: {report['convention']}",
             f"mirrored {report['mirrored']}, inconsistent {report['inconsistent']}, "
             f"flagged in all {len(report['flagged'])}"]
    if report["flagged"]:
        lines.append(f"{'mask':<36} {'eyes':>5} {'brows':>6} {'ears':>5}  problem")
        for a in report["flagged"]:
            votes = [{1: "+", -1: "-"}.get(a.votes.get(n), ".") for n in LR_PAIRS]
            lines.append(f"{a.stem:<36} {votes[0]:>5} {votes[1]:>6} {votes[2]:>5}  {'; '.join(a.problems)}")
    return "\n".join(lines)

