"""A run directory as the engine writes it: the config snapshot, TensorBoard events,
metrics.jsonl, result.json and the HParams summary (checkpoints: facekd/checkpoint.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from facekd.config import RunConfig, save_config
from facekd.registry import LOSSES


class TrainingRun:
    """Owns a run directory: config snapshot, TensorBoard, metrics.jsonl and checkpoints.

    Nothing is written until `open`, which the loop calls after its first step, so a run that
    fails before it trained at all (bad data, a budget too small) leaves no folder behind.
    With writes=False (torchrun ranks other than 0) it only checks the directory, so that
    every rank refuses an existing run alike instead of rank 0 failing alone."""

    def __init__(self, run_dir: Path, resume: bool, writes: bool = True):
        self.dir = Path(run_dir)
        if (self.dir / "last.pt").exists() and not resume:
            raise FileExistsError(f"{self.dir} already holds a run; pass --resume to continue it "
                                  f"or choose another --out")
        self.writes, self.writer = writes, None

    def open(self, cfg: RunConfig, config_record: dict) -> None:
        if self.writes and self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.dir, config_record)
            self.writer = SummaryWriter(str(self.dir))

    def log(self, record: dict) -> None:
        # standard JSON, which has no NaN or Infinity: a value that is not finite is logged as null
        record = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def close(self, cfg: RunConfig, stage: str, result: dict) -> None:
        """The run's main settings and final score on TensorBoard's HParams tab, written into
        the run's own events file so each run stays one file; then result.json."""
        from torch.utils.tensorboard.summary import hparams
        params = {"stage": stage, "model": cfg.model, "resolutions": json.dumps(cfg.resolutions),
                  "epochs": cfg.epochs, "budget_minutes": cfg.budget_minutes, "batch_size": cfg.batch_size,
                  "lr": cfg.lr, "weight_decay": cfg.weight_decay, "ema_decay": cfg.ema_decay, "seed": cfg.seed,
                  # every registered loss's weight, so that a new loss shows here without an edit
                  **{LOSSES[name].weight: getattr(cfg, LOSSES[name].weight) for name in LOSSES},
                  "dice_scope": cfg.dice_scope, "temperature": cfg.temperature,
                  "repeat_threshold": cfg.repeat_threshold, "distill_mode": cfg.distill_mode,
                  "params": result["params"]}
        metrics = {"hparam/val_fscore": result["val_fscore"], "hparam/train_seconds": result["train_seconds"]}
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value)
        self.writer.flush()
        self.writer.close()
        (self.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
