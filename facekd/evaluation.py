"""The challenge F-score of a model on a cached split, as training validates and the
commands report it."""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from facekd.data import CachedSplit
from facekd.inference import model_device, predict_logits
from facekd.metric import FScoreMeter
from facekd.precision import autocast


@torch.no_grad()
def evaluate(model: nn.Module, val: CachedSplit, input_size: int, flip_tta: bool, batch_size: int = 8,
             device: torch.device | None = None, return_preds: bool = False, show_progress: bool = False,
             precision: str = "fp32"):
    """The challenge F-score on a cached split at its native size (512 for the real data), with
    the forward passes at a resolved `precision` (facekd/precision.py)."""
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    meter, preds = FScoreMeter(), []
    for i in tqdm(range(0, len(val), batch_size), desc="validate", unit="batch", leave=False, disable=not show_progress):
        images = val.images[i:i + batch_size].to(device)
        with autocast(precision, device):
            pred = predict_logits(model, images, input_size, flip_tta=flip_tta).argmax(1)
        meter.update(pred, val.masks[i:i + batch_size].to(device))
        if return_preds:
            preds.append(pred.to(torch.uint8).cpu())
    model.train(was_training)
    summary = meter.summary()
    return (summary, torch.cat(preds)) if return_preds else summary
