"""Predict masks for a file or a folder with any facekd checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from facekd.checkpoint import load_checkpoint
from facekd.inference import list_images
from facekd.engine import pick_device
from facekd.inference import InputError, load_rgb, predict_mask, save_mask
from facekd.models import build_model


def load_model(weights: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    ckpt = load_checkpoint(weights)
    model = build_model(ckpt["model_cfg"], allow_over_budget=True)
    model.load_state_dict(ckpt["model"])
    model.to(device or pick_device()).eval().to(memory_format=torch.channels_last)
    return model, ckpt


def predict_paths(weights, inputs, output_dir, flip_tta: bool = True, progress: bool = True) -> dict:
    """Write <output_dir>/<stem>.png for each input image. Unreadable inputs are reported,
    skipped and counted; they never leave a partial file."""
    model, ckpt = load_model(weights)
    paths = list_images(inputs)
    if not paths:
        raise FileNotFoundError(f"{inputs}: no images")
    failed, t0 = [], time.time()
    for p in tqdm(paths, desc="predict", disable=not progress):
        try:
            rgb = load_rgb(p)
        except InputError as e:
            failed.append(str(e))
            continue
        save_mask(predict_mask(model, rgb, ckpt["model_cfg"]["input_size"], flip_tta), Path(output_dir) / f"{p.stem}.png")
    seconds = time.time() - t0
    return {"written": len(paths) - len(failed), "failed": failed, "seconds": seconds,
            "images_per_s": (len(paths) - len(failed)) / seconds}
