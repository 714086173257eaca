"""Predict masks for a file or a folder with any facekd checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from facekd.app.models import load_model
from facekd.distributed import pick_device
from facekd.inference import InputError, list_images, load_rgb, predict_mask, save_mask


def predict_paths(weights, inputs, output_dir, flip_tta: bool = True, progress: bool = True) -> dict:
    """Write <output_dir>/<stem>.png for each input image. Unreadable inputs are reported,
    skipped and counted; they never leave a partial file."""
    model, ckpt = load_model(weights, pick_device())
    model.to(memory_format=torch.channels_last)
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
