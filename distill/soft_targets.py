"""Offline soft targets: the teacher's logits for every training image, computed once before
training (ReLabel, Yun et al. 2021; FKD, Shen and Xing 2022), so that a distillation step
costs what a scratch step costs whatever the teacher's size.

The teacher sees each whole image with its own test-time augmentation (flip with the
left/right swap, optionally several scales, logits averaged). The maps are kept in float16,
in the order of the training split, at the student's output stride of the largest training
resolution (96x96 for a student at stride 4 trained up to 384): the student's logits are
never finer than that, and the engine warps the maps with each batch at any resolution.
1000 images at 96x96 take 350 MB. Under torchrun every rank computes (or reads) the whole
set, since each epoch's shard differs; cache writes are atomic, so ranks may race on them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from facekd.checkpoint import file_sha256, hash_file
from facekd.config import RunConfig
from facekd.data import find_pairs, load_split
from facekd.distributed import pick_device
from facekd.files import InputError, atomic_write, read_torch_file
from facekd.inference import predict_logits
from facekd.precision import autocast, resolve_precision
from teachers.ensemble import Ensemble

CACHE_FORMAT = 2  # bump when what is stored changes, so that older cache files miss


@torch.no_grad()
def output_stride(model: nn.Module, probe: int = 64) -> int:
    """The model's output stride, read from one small forward pass (students predict at 4)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = model(torch.zeros(1, 3, probe, probe, device=device))
    model.train(was_training)
    return probe // out.shape[-1]


def stored_size(cfg: RunConfig, model: nn.Module) -> int:
    """Side of the stored maps: the student's output side at its largest training resolution."""
    return max(size for size, _ in cfg.resolutions) // output_stride(model)


def scaled_sizes(input_size: int, scales: list) -> list[int]:
    """The teacher's input side at each scale, rounded to a multiple of 32 (the deepest stride)."""
    return [max(32, round(input_size * s / 32) * 32) for s in scales]


def members(teacher: nn.Module) -> list[nn.Module]:
    """The models whose outputs make the soft targets: an ensemble's members, or the teacher itself."""
    return list(teacher.members) if isinstance(teacher, Ensemble) else [teacher]


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: torch.Tensor, out_size: int, scales: list,
                   batch_size: int = 8, device: torch.device | None = None, show_progress: bool = True,
                   precision: str = "fp32") -> torch.Tensor:
    """float16 N x C x out_size x out_size: the teacher's flip-TTA logits for uint8 N x 3 x H x W
    images, averaged over its input side times each scale. Logits, not probabilities, are
    averaged, so that the distillation temperature softens them as it does online. An
    ensemble's members each run at their own input sizes, and their logits are averaged too."""
    device = device or pick_device()
    runs = [(m.eval().to(device), s) for m in members(teacher) for s in scaled_sizes(m.input_size, scales)]
    soft_targets = None
    for i in tqdm(range(0, len(images), batch_size), desc=f"teacher soft targets @{[s for _, s in runs]}",
                  disable=not show_progress, leave=False):
        batch = images[i:i + batch_size].to(device)
        with autocast(precision, device):
            logits = sum(predict_logits(m, batch, s, out_size=(out_size, out_size)).float() for m, s in runs)
        logits = logits / len(runs)
        if soft_targets is None:
            soft_targets = torch.empty(len(images), logits.shape[1], out_size, out_size, dtype=torch.float16)
        soft_targets[i:i + len(batch)] = logits.to(torch.float16).cpu()
    return soft_targets


def cache_key(teacher_paths: list, data_root: str | Path, train_limit: int, scales: list, size: int,
              precision: str = "fp32") -> dict:
    """Everything the stored maps depend on. The images are identified by stem and content,
    not by mtime, so that a re-provisioned or copied dataset still hits (an mtime key missed
    every cache when the shared data was provisioned anew). Hashing the 1000 training JPEGs
    (33 MB) and the teacher took about 1 s on the 2-core development machine. An ensemble is
    keyed by every member's hash, sorted, since the order of an average does not matter; a
    single teacher keeps the one-hash key that older cache files were written with."""
    pairs = find_pairs(data_root, "train")
    pairs = pairs[:train_limit] if train_limit else pairs
    data = hashlib.sha256()
    for p in pairs:
        data.update(f"{p.stem}\0".encode())
        hash_file(data, p.image)
    teachers = sorted(file_sha256(p) for p in teacher_paths)
    key = {"format": CACHE_FORMAT, "teacher_sha256": teachers[0] if len(teachers) == 1 else teachers,
           "data_sha256": data.hexdigest(), "images": len(pairs), "train_limit": train_limit,
           "scales": [float(s) for s in scales], "size": size}
    # bf16 maps differ from fp32 ones in the last bits; fp32 keeps the key older files were written with
    return key if precision == "fp32" else {**key, "precision": precision}


def cache_file(cache_dir: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"soft_targets_{digest}.pt"


def soft_targets_sha256(soft_targets: torch.Tensor) -> str:
    """A checksum of the stored maps' bytes: torch reads a tensor's bytes from its zip without
    checking them, so bytes overwritten in a cache file would otherwise be trained on."""
    return hashlib.sha256(soft_targets.contiguous().view(torch.uint8).numpy()).hexdigest()


def _read_cache(path: Path, key: dict) -> torch.Tensor | None:
    """The cached maps, or None (a miss) for a missing, unreadable, foreign or damaged file,
    which is then recomputed and replaced."""
    if not path.is_file():
        return None
    try:
        stored = read_torch_file(path)
    except InputError as e:
        tqdm.write(f"soft targets: ignoring unreadable cache file ({e})")
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    if stored.get("targets_sha256") != soft_targets_sha256(stored["targets"]):
        tqdm.write(f"soft targets: {path}: its maps do not match their checksum (the file was damaged); "
                   "recomputing them")
        return None
    return stored["targets"]


def offline_soft_targets(cfg: RunConfig, teacher: nn.Module, teacher_paths: list[str], data_root: str | Path,
                         size: int, show_progress: bool = True) -> tuple[torch.Tensor, dict]:
    """(soft_targets, record): the stored maps for the training split (cfg.train_limit applied), from
    cfg.soft_target_cache when it holds them, and what they cost, for the run's config record.
    teacher_paths are the files `teacher` was loaded from (distill.teacher.teacher_paths), which
    key the cache."""
    if isinstance(teacher_paths, (str, Path)):
        raise TypeError("teacher_paths must be a list of checkpoint paths, not one path")
    t0 = time.perf_counter()
    scales = cfg.soft_target_scales
    precision = resolve_precision(cfg.precision, pick_device())
    input_sizes = sorted({s for m in members(teacher) for s in scaled_sizes(m.input_size, scales)})
    record = {"size": size, "scales": scales, "teacher_input_sizes": input_sizes, "precision": precision}
    key = path = None
    if cfg.soft_target_cache:
        key = cache_key(teacher_paths, data_root, cfg.train_limit, scales, size, precision)
        path = cache_file(cfg.soft_target_cache, key)
        soft_targets = _read_cache(path, key)
        if soft_targets is not None:
            record.update(cache="hit", file=str(path), shape=list(soft_targets.shape),
                          seconds=round(time.perf_counter() - t0, 2))
            return soft_targets, record
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # as training will; computing counts against the budget
    split = load_split(data_root, "train", max(record["teacher_input_sizes"]), cfg.train_limit, show_progress=show_progress)
    soft_targets = teacher_logits(teacher, split.images, size, scales, cfg.batch_size, show_progress=show_progress,
                                  precision=precision)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save({"key": key, "stems": split.stems, "targets": soft_targets,
                        "targets_sha256": soft_targets_sha256(soft_targets)}, f)
    record.update(cache="miss" if path else "off", shape=list(soft_targets.shape),
                  seconds=round(time.perf_counter() - t0, 2), **({"file": str(path)} if path else {}))
    tqdm.write(f"soft targets: {len(soft_targets)} maps of {size}x{size} from the teacher at "
               f"{record['teacher_input_sizes']} with flip TTA in {record['seconds']:.1f} s"
               + (f", cached in {path}" if path else ""))
    return soft_targets, record
