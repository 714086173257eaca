"""The one training loop. Every stage (teacher, distillation, fine-tuning after pruning)
calls `fit` with its own model and loss function; none of them owns a loop.

A loss function maps (logits, images, labels) to a dict of named terms plus "loss", the
total that is back-propagated; each term is logged separately.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from facekd.checkpoint import load_checkpoint, save_checkpoint
from facekd.config import RunConfig, save_config
from facekd.data import CachedSplit, load_split
from facekd.inference import predict_logits
from facekd.labels import CLASS_NAMES, PALETTE
from facekd.metric import FScoreMeter
from facekd.transforms import IGNORE_INDEX, AugmentConfig, train_batch
from students import count_params

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft multi-class Dice over the classes present in the batch; ignores padded pixels."""
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(labels.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1) / (total + 1)
    return 1 - dice[present].mean()


def supervised_loss(cfg: RunConfig) -> LossFn:
    """Cross-entropy plus optional Dice, on logits upsampled to the label resolution."""
    def loss_fn(logits, images, labels):
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        terms = {"ce": F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)}
        if cfg.dice > 0:
            terms["dice"] = dice_loss(logits, labels)
        terms["loss"] = cfg.ce * terms["ce"] + cfg.dice * terms.get("dice", 0.0)
        return terms
    return loss_fn


@torch.no_grad()
def evaluate(model: nn.Module, val: CachedSplit, input_size: int, flip_tta: bool, batch_size: int = 8,
             device: torch.device | None = None, return_preds: bool = False):
    """The challenge F-score on a cached split at its native size (512 for the real data)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter, preds = FScoreMeter(), []
    for i in range(0, len(val), batch_size):
        images = val.images[i:i + batch_size].to(device)
        pred = predict_logits(model, images, input_size, flip_tta=flip_tta).argmax(1)
        meter.update(pred, val.masks[i:i + batch_size].to(device))
        if return_preds:
            preds.append(pred.to(torch.uint8).cpu())
    model.train(was_training)
    summary = meter.summary()
    return (summary, torch.cat(preds)) if return_preds else summary


def colourise(masks: torch.Tensor) -> torch.Tensor:
    palette = torch.tensor(PALETTE, dtype=torch.uint8).view(-1, 3)
    return palette[masks.long()].permute(0, 3, 1, 2)


class TrainingRun:
    """Owns a run directory: config snapshot, TensorBoard, metrics.jsonl and checkpoints."""

    def __init__(self, run_dir: Path, cfg: RunConfig, resume: bool, extra_config: dict | None = None):
        self.dir = Path(run_dir)
        if (self.dir / "last.pt").exists() and not resume:
            raise FileExistsError(f"{self.dir} already holds a run; pass --resume to continue it "
                                  f"or choose another --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.dir, extra_config)
        self.writer = SummaryWriter(str(self.dir))

    def log(self, record: dict) -> None:
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


def fit(model: nn.Module, model_cfg: dict, loss_fn: LossFn, cfg: RunConfig, run_dir: str | Path, *,
        data_root: str | Path, stage: str, resume: bool = False, extra_config: dict | None = None,
        reference_scores: dict | None = None, progress: bool = True) -> dict:
    """Train, validate every cfg.eval_every epochs, keep best.pt and last.pt. Returns a summary."""
    device = pick_device()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    run = TrainingRun(Path(run_dir), cfg, resume, {"data_root": str(data_root), **(extra_config or {})})
    input_size = cfg.resolutions[-1][0]
    model_cfg = {**model_cfg, "input_size": input_size}
    model.input_size = input_size
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = count_params(model)

    train_cache: dict[int, CachedSplit] = {}

    def train_split(size: int) -> CachedSplit:
        if size not in train_cache:
            train_cache.clear()  # keep one resolution in memory at a time
            train_cache[size] = load_split(data_root, "train", size, cfg.train_limit, progress=progress)
        return train_cache[size]

    val = load_split(data_root, "val", None, progress=progress)
    steps_per_epoch = [math.ceil(len(train_split(cfg.size_at(0))) / cfg.batch_size)] * cfg.epochs
    total_steps = sum(steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.lr * cfg.min_lr_ratio,
                                  warmup_t=int(cfg.warmup_epochs * steps_per_epoch[0]),
                                  warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    augment = AugmentConfig(flip=cfg.flip, scale=(cfg.scale_min, cfg.scale_max), rotate_deg=cfg.rotate_deg,
                            shift=cfg.shift, brightness=cfg.jitter, contrast=cfg.jitter, saturation=cfg.jitter)
    compiled = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    start_epoch, step, best, history_s = 0, 0, -1.0, 0.0
    last_path = run.dir / "last.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best_metric"]
        history_s = state.get("train_seconds", 0.0)
        torch.set_rng_state(state["rng_cpu"])
        gen.set_state(state["rng_gen"].to(gen.get_state().device) if device.type == "cpu" else state["rng_gen"])
        tqdm.write(f"resumed {run.dir} at epoch {start_epoch}/{cfg.epochs}")

    writer = run.writer
    writer.add_scalar("model/params", n_params, 0)
    for name, value in (reference_scores or {}).items():
        writer.add_scalar(name, value, 0)
    evals_done = 0
    t_run = time.time()
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc=f"{stage} epochs", disable=not progress,
                      initial=start_epoch, total=cfg.epochs):
        size = cfg.size_at(epoch)
        data = train_split(size)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        model.train()
        sums, seen, t0 = {}, 0, time.time()
        bar = tqdm(range(0, len(data), cfg.batch_size), desc=f"epoch {epoch} @{size}", leave=False,
                   disable=not progress)
        for i in bar:
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            images, labels = train_batch(data.images[idx].to(device), data.masks[idx].to(device), augment, gen)
            with autocast:
                logits = compiled(images)
                terms = loss_fn(logits.float(), images, labels)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(model, step=step)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
        elapsed = time.time() - t0
        history_s += elapsed
        record = {"epoch": epoch, "size": size, "lr": optimizer.param_groups[0]["lr"],
                  "images_per_s": seen / elapsed, **{f"loss/{k}": v / max(seen, 1) for k, v in sums.items()}}
        for k, v in record.items():
            if k != "epoch":
                writer.add_scalar(k if "/" in k else f"train/{k}", v, epoch)

        eval_model = ema.module if ema is not None else model
        is_last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.eval_every == 0 or is_last:
            summary, preds = evaluate(eval_model, val, size, cfg.flip_tta, cfg.batch_size, device, return_preds=True)
            record["val_fscore"] = summary["fscore"]
            writer.add_scalar("val/fscore", summary["fscore"], epoch)
            for name, f1 in summary["per_class"].items():
                writer.add_scalar(f"val_f1/{name}", f1, epoch)
            if evals_done % cfg.panel_every == 0 or is_last:
                k = min(4, len(val))
                panel = torch.cat([val.images[:k], colourise(val.masks[:k]), colourise(preds[:k])], 3)
                writer.add_images("val/input_gt_pred", panel, epoch)
            evals_done += 1
            if summary["fscore"] > best:
                best = summary["fscore"]
                save_checkpoint({"model": eval_model.state_dict(), "model_cfg": {**model_cfg, "input_size": size},
                                 "stage": stage, "epoch": epoch, "val_fscore": best, "params": n_params,
                                 "config": cfg.to_dict()}, run.dir / "best.pt")
            tqdm.write(f"[{stage}] epoch {epoch} @{size}: loss {record.get('loss/loss', 0):.4f} "
                       f"val F {summary['fscore']:.4f} (best {best:.4f}) {record['images_per_s']:.1f} img/s")
        run.log(record)
        state = {"model": model.state_dict(), "model_cfg": model_cfg, "stage": stage,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                 "step": step, "best_metric": best, "config": cfg.to_dict(), "train_seconds": history_s,
                 "rng_cpu": torch.get_rng_state(), "rng_gen": gen.get_state(), "params": n_params}
        if ema is not None:
            state["model_ema"] = ema.module.state_dict()
        save_checkpoint(state, last_path)
    writer.flush()
    writer.close()
    result = {"stage": stage, "val_fscore": best, "params": n_params, "train_seconds": history_s,
              "epochs": cfg.epochs, "run_dir": str(run.dir)}
    (run.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
