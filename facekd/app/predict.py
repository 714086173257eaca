"""Predict masks for a file or a folder with any facekd checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from teachers.ensemble import model_or_ensemble
from facekd.distributed import pick_device
from facekd.files import InputError, check_mask_jobs
from facekd.inference import list_images, load_rgb, predict_mask, save_mask


def predict_paths(weights, inputs, output_dir, flip_tta: bool = True, show_progress: bool = True) -> dict:
    """Write <output_dir>/<stem>.png for each input image, predicted by one checkpoint or, for
    a list of several, by their ensemble. Outputs that would overwrite an input or be shared
    by two inputs are refused before anything is predicted; unreadable inputs are reported,
    skipped and counted, and never leave a partial file."""
    weights = [weights] if isinstance(weights, (str, Path)) else list(weights)
    jobs = [(p, Path(output_dir) / f"{p.stem}.png") for p in list_images(inputs)]
    if not jobs:
        raise InputError(f"{inputs}: no images")
    check_mask_jobs(jobs, protected=tuple(Path(w) for w in weights))
    model, _ = model_or_ensemble(weights, pick_device())
    model.to(memory_format=torch.channels_last)
    failed, t0 = [], time.time()
    for image, mask in tqdm(jobs, desc="predict", disable=not show_progress):
        try:
            save_mask(predict_mask(model, load_rgb(image), model.input_size, flip_tta), mask)
        except InputError as e:
            failed.append(str(e))
    seconds = time.time() - t0
    return {"written": len(jobs) - len(failed), "failed": failed, "seconds": seconds,
            "images_per_s": (len(jobs) - len(failed)) / seconds}
