"""The one training loop. Every stage (teacher, distillation, fine-tuning after pruning)
calls `fit` with its own model and loss function; none of them owns a loop.

A loss function maps (logits, images, labels) to a dict of named terms plus "loss", the
total that is back-propagated; each term is logged separately.

Under torchrun (facekd/distributed.py) the same loop runs in every process: the model is
wrapped in DistributedDataParallel, each rank trains on its shard of every epoch, and
rank 0 alone validates and writes the run directory.
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from facekd import distributed
from facekd.challenge import count_params
from facekd.checkpoint import load_checkpoint, save_checkpoint
from facekd.config import RunConfig, save_config
from facekd.data import CachedSplit, load_split
from facekd.inference import predict_logits
from facekd.labels import CLASS_NAMES, PALETTE
from facekd.metric import FScoreMeter
from facekd.transforms import IGNORE_INDEX, AugmentConfig, train_batch

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict]


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
    """Owns a run directory: config snapshot, TensorBoard, metrics.jsonl and checkpoints.
    With writes=False (torchrun ranks other than 0) it only checks the directory, so that
    every rank refuses an existing run alike instead of rank 0 failing alone."""

    def __init__(self, run_dir: Path, cfg: RunConfig, resume: bool, extra_config: dict | None = None,
                 writes: bool = True):
        self.dir = Path(run_dir)
        if (self.dir / "last.pt").exists() and not resume:
            raise FileExistsError(f"{self.dir} already holds a run; pass --resume to continue it "
                                  f"or choose another --out")
        self.writer = None
        if writes:
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
    distributed.setup()
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    progress = progress and main
    device = distributed.pick_device()
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU kernel")
    last_path = Path(run_dir) / "last.pt"
    # every rank reads the same file; checkpoints hold the unwrapped model, as without DDP
    resumed = load_checkpoint(last_path, map_location=device) if resume and last_path.exists() else None
    if resumed is not None and resumed.get("world_size", 1) != world:  # before anything is written
        raise ValueError(f"{last_path} was trained by {resumed.get('world_size', 1)} process(es); resume it "
                         f"with the same number (torchrun --nproc_per_node), not {world}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # each rank draws its own augmentations; rank 0 (and a single process) keeps the plain seed
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    # batch_size is per process, so one step sees batch_size x world images; the learning
    # rate is scaled linearly with it (Goyal et al., 2017), warm-up included
    lr = cfg.lr * world
    scale = {"world_size": world, "effective_batch_size": cfg.batch_size * world, "effective_lr": lr}
    run = TrainingRun(Path(run_dir), cfg, resume, {"data_root": str(data_root), **(extra_config or {}), **scale},
                      writes=main)
    if main and world > 1:
        tqdm.write(f"[{stage}] {world} processes x batch {cfg.batch_size} = effective batch "
                   f"{scale['effective_batch_size']}, lr {cfg.lr:g} x {world} = {lr:g}")
    input_size = cfg.resolutions[-1][0]
    model_cfg = {**model_cfg, "input_size": input_size}
    model.input_size = input_size
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        # same parameter and buffer names, so checkpoints still load into plain BatchNorm
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = count_params(model)

    train_cache: dict[int, CachedSplit] = {}

    def train_split(size: int) -> CachedSplit:
        if size not in train_cache:
            train_cache.clear()  # keep one resolution in memory at a time
            train_cache[size] = load_split(data_root, "train", size, cfg.train_limit, progress=progress)
        return train_cache[size]

    val = load_split(data_root, "val", None, progress=progress) if main else None  # rank 0 alone validates
    # The DataLoader's sharding without a DataLoader (batches come from cached tensors): every
    # rank shuffles with the same seed + epoch and takes every world-th index, padded so all
    # ranks take the same number of steps. With one process this is randperm(seed*1000+epoch).
    sampler = DistributedSampler(range(len(train_split(cfg.size_at(0)))), num_replicas=world, rank=rank,
                                 shuffle=True, seed=cfg.seed * 1000)
    steps_per_epoch = [math.ceil(len(sampler) / cfg.batch_size)] * cfg.epochs
    total_steps = sum(steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=lr * cfg.min_lr_ratio,
                                  warmup_t=int(cfg.warmup_epochs * steps_per_epoch[0]),
                                  warmup_lr_init=lr * 0.01, t_in_epochs=False)
    # only rank 0 evaluates and saves, so only it keeps an EMA
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 and main else None
    augment = AugmentConfig(flip=cfg.flip, scale=(cfg.scale_min, cfg.scale_max), rotate_deg=cfg.rotate_deg,
                            shift=cfg.shift, brightness=cfg.jitter, contrast=cfg.jitter, saturation=cfg.jitter)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    start_epoch, step, best, history_s = 0, 0, -1.0, 0.0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if ema is not None and "model_ema" in resumed:
            ema.module.load_state_dict(resumed["model_ema"])
        start_epoch, step, best = resumed["epoch"] + 1, resumed["step"], resumed["best_metric"]
        history_s = resumed.get("train_seconds", 0.0)
        torch.set_rng_state(resumed["rng_cpu"].cpu())  # RNG states must be CPU tensors, even for CUDA
        gen.set_state((resumed["rng_gen_ranks"][rank] if world > 1 else resumed["rng_gen"]).cpu())
        if main:
            tqdm.write(f"resumed {run.dir} at epoch {start_epoch}/{cfg.epochs}")
    del resumed  # its optimizer state would otherwise stay in memory for the whole run

    # DDP averages gradients across ranks and, before each forward, copies rank 0's buffers
    # to the others; the teacher of a distillation lives in loss_fn and is never wrapped.
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = torch.compile(net) if cfg.compile else net

    writer = run.writer
    if main:
        writer.add_scalar("model/params", n_params, 0)
        for name, value in (reference_scores or {}).items():
            writer.add_scalar(name, value, 0)
    evals_done = 0
    t_run = time.time()
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc=f"{stage} epochs", disable=not progress,
                      initial=start_epoch, total=cfg.epochs):
        size = cfg.size_at(epoch)
        data = train_split(size)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        net.train()
        sums, seen, t0 = {}, 0, time.time()
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch} @{size}", leave=False,
                   disable=not progress)
        for i in bar:
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one (equal on all ranks)
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
        if world > 1:
            # log losses and throughput over every rank's images, not rank 0's share
            keys = sorted(sums)
            totals = distributed.all_reduce(torch.tensor([seen] + [sums[k] for k in keys], dtype=torch.float64))
            seen, sums = int(totals[0]), dict(zip(keys, totals[1:].tolist()))
            # the last forward updated each rank's BatchNorm statistics with its own batch;
            # give every rank rank 0's, which are the ones rank 0 saves
            distributed.broadcast_buffers(model)
        rng_gens = distributed.all_gather(gen.get_state())  # each rank's augmentation RNG, for exact resume

        # Rank 0 validates the whole split alone while the others wait at the barrier below:
        # the F-score is a mean of per-image scores and the panel needs the first images,
        # so sharding validation would mean gathering per-image results, for little gain.
        if main:
            record = {"epoch": epoch, "size": size, "lr": optimizer.param_groups[0]["lr"],
                      "images_per_s": seen / elapsed, **{f"loss/{k}": v / max(seen, 1) for k, v in sums.items()}}
            for k, v in record.items():
                if k != "epoch":
                    writer.add_scalar(k if "/" in k else f"train/{k}", v, epoch)

            eval_model = ema.module if ema is not None else model
            is_last = epoch == cfg.epochs - 1
            if (epoch + 1) % cfg.eval_every == 0 or is_last:
                summary, preds = evaluate(eval_model, val, size, cfg.flip_tta, cfg.batch_size, device,
                                          return_preds=True)
                record["val_fscore"] = summary["fscore"]
                writer.add_scalar("val/fscore", summary["fscore"], epoch)
                writer.add_scalar("val/left_right_swap_rate", summary["left_right_swap_rate"], epoch)
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
                     "rng_cpu": torch.get_rng_state(), "rng_gen": rng_gens[0], "params": n_params,
                     "world_size": world}
            if world > 1:
                # a list, not a stack: Generator.set_state crashes on a row view of a stacked tensor
                state["rng_gen_ranks"] = rng_gens
            if ema is not None:
                state["model_ema"] = ema.module.state_dict()
            save_checkpoint(state, last_path)
        if world > 1:
            distributed.barrier()
            best = float(distributed.broadcast(torch.tensor(best, dtype=torch.float64)))
    distributed.dump_final_state(model)
    result = {"stage": stage, "val_fscore": best, "params": n_params, "train_seconds": history_s,
              "epochs": cfg.epochs, "run_dir": str(run.dir)}
    if main:
        writer.flush()
        writer.close()
        (run.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
