"""Checkpoints are plain dicts of tensors and primitives, written atomically and loaded
with weights_only=True, so loading one never runs pickled code."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed mid-write keeps the previous checkpoint intact


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{path}: not a loadable facekd checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_cfg" not in ckpt:
        raise ValueError(f"{path}: not a facekd checkpoint (expected a dict with 'model' and 'model_cfg')")
    return ckpt
