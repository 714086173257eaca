"""The one training loop. Every stage (teacher, student, fine-tuning after pruning) calls `fit`
with its own model and loss function; none of them owns a loop.

    fit                 prepare, then for each epoch: train_one_epoch, end_of_epoch; finish
    train_one_epoch     the batches of one epoch, each step written out in full

A loss function maps (logits, images, labels, soft_targets) to a dict of named terms plus
"loss", the total that is back-propagated; each term is logged separately. soft_targets is
None unless the stage hands `fit` a teacher's stored class scores for the training images
(computed once), which then follow every flip and warp of the batch.

What the loop works with comes in four parts, so that each function takes what it uses:
`Parts` (the model, optimiser, schedule, EMA and loss, built once), `Counters` (how far the
run has come: what last.pt saves), `RunContext` (config, processes, device, run folder and
the run's length) and `TrainingData`.

A run is sized in epochs or, with cfg.budget_minutes, in wall-clock time: `ctx.length`
(facekd/schedule.py) answers which resolution to train at, when an epoch or the run ends
and what to hold back, the same questions either way.

Under torchrun the same loop runs in every process (facekd/distributed.py's Processes): the
model is wrapped in DistributedDataParallel, each rank trains on its shard of every epoch,
and rank 0 alone validates and writes the run directory.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from facekd import distributed
from facekd.budget import Budget, now
from facekd.challenge import count_params
from facekd.checkpoint import restore_training_state, resume_state, run_inputs, save_checkpoint, training_state
from facekd.config import RunConfig
from facekd.cpu_kernels import safe_conv_backward
from facekd.data import CachedSplit, load_split
from facekd.distributed import Processes
from facekd.evaluation import evaluate
from facekd.labels import NUM_CLASSES, colourise
from facekd.losses import LossFn
from facekd.precision import autocast, resolve_precision
from facekd.run_folder import TrainingRun, run_folder_lock
from facekd.sampling import epoch_sampler
from facekd.schedule import FixedEpochs, TimeBudget, run_length, steps_per_epoch
from facekd.transforms import AugmentConfig, train_batch


def log(line: str) -> None:
    """A training log line, above any progress bar, on stderr: stdout is what a command
    prints as its result (prune --json)."""
    tqdm.write(line, file=sys.stderr)


@dataclass
class Parts:
    """What training is made of, built once before the first step and never replaced."""
    model: nn.Module                # the plain model: checkpoints, EMA and BN syncs use it
    net: nn.Module                  # what the step calls: the model, maybe DDP-wrapped or compiled
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None          # rank 0 alone keeps one: it alone validates and saves
    loss_fn: LossFn
    augment: AugmentConfig
    generator: torch.Generator      # this rank's augmentation draws
    precision: str                  # the forward passes': "fp32" or "bf16"


@dataclass
class Counters:
    """How far the run has come: what last.pt saves, and what a resumed run starts from."""
    epoch: int = -1
    step: int = 0
    best: float = -1.0
    images_seen: int = 0
    train_seconds: float = 0.0
    finished: bool = False          # the last epoch (or the budget's end) was reached: resuming is a no-op

    def state_dict(self) -> dict:
        # last.pt's keys, which checkpoints written before this class used too
        return {"epoch": self.epoch, "step": self.step, "best_metric": self.best, "images_seen": self.images_seen,
                "train_seconds": self.train_seconds, "finished": self.finished}

    @classmethod
    def from_state(cls, state: dict) -> Counters:
        return cls(epoch=state.get("epoch", -1), step=state.get("step", 0), best=state.get("best_metric", -1.0),
                   images_seen=state.get("images_seen", 0), train_seconds=state.get("train_seconds", 0.0),
                   finished=state.get("finished", False))


@dataclass
class RunContext:
    """Where and for how long the run trains, and where it writes."""
    cfg: RunConfig
    stage: str
    device: torch.device
    processes: Processes
    run: TrainingRun
    length: FixedEpochs | TimeBudget
    val: CachedSplit | None         # rank 0 alone validates
    model_cfg: dict
    n_params: int
    saved_config: dict              # the config and the run's inputs, as last.pt keeps them for --resume's checks
    show_progress: bool             # progress bars (rank 0 only)


class TrainSplit:
    """The training split at one resolution at a time (train_split(size)), decoded when the
    resolution changes; decode_s is what the latest decode took, the price of the next."""

    def __init__(self, cfg: RunConfig, data_root, show_progress: bool):
        self.cfg, self.data_root, self.show_progress = cfg, data_root, show_progress
        self.size, self.split, self.decode_s = None, None, 0.0

    def __call__(self, size: int) -> CachedSplit:
        if size != self.size:
            self.split = None  # keep one resolution in memory at a time
            t0 = now()
            self.split = load_split(self.data_root, "train", size, self.cfg.train_limit, show_progress=self.show_progress)
            self.size, self.decode_s = size, now() - t0
        return self.split


@dataclass
class TrainingData:
    """What the loop trains on."""
    split: TrainSplit
    sampler: DistributedSampler     # each epoch's order of this rank's training images
    soft_targets: torch.Tensor | None  # a teacher's stored class scores (N x C x h x w), in the split's order
    epoch_images: int               # images in one epoch, over every rank


def fit(model: nn.Module, model_cfg: dict, loss_fn: LossFn, cfg: RunConfig, run_dir: str | Path, *,
        data_root: str | Path, stage: str, resume: bool = False, extra_config: dict | None = None,
        reference_scores: dict | None = None, show_progress: bool = True, budget: Budget | None = None,
        soft_targets: torch.Tensor | None = None) -> dict:
    """Train, validate every cfg.eval_every epochs, keep best.pt and last.pt. Returns a summary.

    `budget` is the stage's running budget when the stage did work of its own first (loading a
    teacher, pruning); otherwise cfg.budget_minutes starts one here. `soft_targets` are stored
    class scores (N x C x h x w) in the order of the training split."""
    with run_folder_lock(run_dir, enabled=distributed.is_main()):  # one process writes a run folder at a time
        parts, counters, ctx, data = prepare(model, model_cfg, loss_fn, cfg, run_dir, data_root=data_root,
                                             stage=stage, resume=resume, extra_config=extra_config or {},
                                             reference_scores=reference_scores or {}, show_progress=show_progress,
                                             budget=budget, soft_targets=soft_targets)
        epochs = () if counters.finished else ctx.length.epochs(counters.epoch + 1)
        bar = tqdm(epochs, desc=f"{stage} epochs", disable=not ctx.show_progress, initial=counters.epoch + 1,
                   total=ctx.length.epoch_count())
        with cleared_on_error(bar):
            for epoch in bar:
                counters.epoch = epoch
                size, split = ctx.length.epoch_data(epoch, data.split)
                data.sampler.set_epoch(epoch)
                parts.net.train()
                t0 = time.time()
                sums, seen = train_one_epoch(parts, counters, ctx, split, torch.tensor(list(data.sampler)), size,
                                             data.soft_targets)
                elapsed = time.time() - t0
                counters.train_seconds += elapsed
                counters.finished = ctx.length.is_last(epoch)
                end_of_epoch(parts, counters, ctx, size, sums, seen, elapsed, data.epoch_images)
                if counters.finished:
                    break
        return finish(parts, counters, ctx, data.epoch_images)


def train_one_epoch(parts: Parts, counters: Counters, ctx: RunContext, split: CachedSplit, order: torch.Tensor,
                    size: int, soft_targets: torch.Tensor | None = None) -> tuple[dict, int]:
    """Optimiser steps over one shuffled epoch of `split`, until its end or until the run's
    length ends it early (a budget spent, a new resolution phase). Returns the loss terms
    summed over images, and the number of images."""
    cfg, device = ctx.cfg, ctx.device
    sums, seen = {}, 0
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {counters.epoch} @{size}", leave=False,
               disable=not ctx.show_progress)
    with cleared_on_error(bar):
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one (equal on all ranks)
                continue
            t0 = now()
            images, labels, batch_soft_targets = train_batch(
                split.images[idx].to(device), split.masks[idx].to(device), parts.augment, parts.generator,
                None if soft_targets is None else soft_targets[idx].to(device), cfg.channels_last)
            with safe_conv_backward(len(idx), device):  # odd CPU batches crash oneDNN (facekd/cpu_kernels.py)
                with autocast(parts.precision, device):
                    logits = parts.net(images)
                # the loss in fp32; an online teacher casts itself
                terms = parts.loss_fn(logits.float(), images, labels, batch_soft_targets)
                stop_unless_finite(terms["loss"], counters, ctx)
                parts.optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
            parts.optimizer.step()
            counters.step += 1
            parts.scheduler.step_update(ctx.length.lr_tick(counters.step))
            if parts.ema is not None:
                parts.ema.update(parts.model, step=counters.step)
            if ctx.processes.is_main and ctx.run.writer is None:  # the run's first step: does the budget hold it?
                ctx.length.check_fits(parts.model, ctx.val, device, parts.precision, step_seconds=now() - t0)
                ctx.run.open()
            terms = {name: float(value.detach()) for name, value in terms.items()}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{terms['loss']:.3f}", **ctx.length.status())
            if ctx.length.epoch_over(size):
                break
    return sums, seen


class NonFiniteLossError(ValueError):
    """The loss went to inf or NaN: training stops before the step that would spoil the weights."""


def stop_unless_finite(loss: torch.Tensor, counters: Counters, ctx: RunContext) -> None:
    """Stop, before the optimiser step, on a loss that is inf or NaN on any rank (every rank
    must stop together); last.pt and best.pt keep the last good epoch."""
    if ctx.processes.any(not torch.isfinite(loss.detach())):
        kept = f"last.pt keeps epoch {counters.epoch - 1}" if counters.epoch > 0 else "no epoch had finished"
        raise NonFiniteLossError(f"[{ctx.stage}] epoch {counters.epoch}, step {counters.step + 1}: the loss is "
                                 f"{float(loss.detach()):g}; training stopped ({kept}); lower lr or the loss weights")


@contextlib.contextmanager
def cleared_on_error(bar: tqdm):
    """Close a progress bar, clearing it when an error ends its loop: a user's error is then
    the last and only line, not one under a bar left standing."""
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def end_of_epoch(parts: Parts, counters: Counters, ctx: RunContext, size: int, sums: dict, seen: int,
                 elapsed: float, epoch_images: int) -> None:
    """Sum the epoch's statistics over ranks; rank 0 logs, validates and saves last.pt."""
    sums, seen = ctx.processes.reduce_epoch_stats(sums, seen)
    ctx.processes.share_buffers(parts.model)
    counters.images_seen += seen
    rng_states = ctx.processes.gather_rng(parts.generator)
    # Rank 0 validates the whole split alone while the others wait at the barrier below:
    # the F-score is a mean of per-image scores and the panel needs the first images,
    # so sharding validation would mean gathering per-image results, for little gain.
    if ctx.processes.is_main:
        t0 = now()
        ctx.run.open()
        record = {"epoch": counters.epoch, "size": size, "lr": parts.optimizer.param_groups[0]["lr"],
                  "images_per_s": seen / max(elapsed, 1e-9), "train_seconds": counters.train_seconds,
                  **{f"loss/{k}": v / max(seen, 1) for k, v in sums.items()}, **ctx.length.epoch_record()}
        for k, v in record.items():
            if k != "epoch":
                ctx.run.writer.add_scalar(k if "/" in k else f"train/{k}", v, counters.epoch)
        if (counters.epoch + 1) % ctx.cfg.eval_every == 0 or counters.finished:
            validate_and_keep_best(parts, counters, ctx, size, record)
            log(f"[{ctx.stage}] {ctx.length.trained(counters.epoch, counters.images_seen, epoch_images)} "
                f"@{size}: loss {record.get('loss/loss', 0):.4f} val F {record['val_fscore']:.4f} "
                f"(best {counters.best:.4f}) {record['images_per_s']:.1f} img/s{ctx.length.note()}")
        ctx.run.log(record)
        save_checkpoint(training_state(model=parts.model, model_cfg=ctx.model_cfg, stage=ctx.stage,
                                       optimizer=parts.optimizer, scheduler=parts.scheduler, ema=parts.ema,
                                       counters={**counters.state_dict(), **ctx.length.state_dict()},
                                       config=ctx.saved_config, params=ctx.n_params, rng_gens=rng_states,
                                       world_size=ctx.processes.world), ctx.run.dir / "last.pt")
        ctx.length.hold_back(now() - t0)
    ctx.processes.barrier()
    counters.best = ctx.processes.agree(counters.best)


def validate_and_keep_best(parts: Parts, counters: Counters, ctx: RunContext, size: int, record: dict) -> None:
    """Score the (EMA) model on val, log it, and write best.pt when it improved."""
    cfg, writer, val = ctx.cfg, ctx.run.writer, ctx.val
    eval_model = parts.ema.module if parts.ema is not None else parts.model
    summary, preds = evaluate(eval_model, val, size, cfg.flip_tta, cfg.batch_size, ctx.device, return_preds=True,
                              show_progress=ctx.show_progress, precision=parts.precision)
    record["val_fscore"] = summary["fscore"]
    writer.add_scalar("val/fscore", summary["fscore"], counters.epoch)
    writer.add_scalar("val/left_right_swap_rate", summary["left_right_swap_rate"], counters.epoch)
    for name, f1 in summary["per_class"].items():
        writer.add_scalar(f"val_f1/{name}", f1, counters.epoch)
    if counters.epoch // cfg.eval_every % cfg.panel_every == 0 or counters.finished:
        k = min(4, len(val))
        panel = torch.cat([val.images[:k], colourise(val.masks[:k]), colourise(preds[:k])], 3)
        writer.add_images("val/input_gt_pred", panel, counters.epoch)
    if summary["fscore"] > counters.best:
        counters.best = summary["fscore"]
        save_checkpoint({"model": eval_model.state_dict(), "model_cfg": {**ctx.model_cfg, "input_size": size},
                         "stage": ctx.stage, "epoch": counters.epoch, "val_fscore": counters.best,
                         "params": ctx.n_params, "precision": parts.precision,
                         # what this model cost to train, summed over every resume of its run
                         "train_seconds": counters.train_seconds, "images_seen": counters.images_seen,
                         "config": cfg.to_dict()}, ctx.run.dir / "best.pt")


def finish(parts: Parts, counters: Counters, ctx: RunContext, epoch_images: int) -> dict:
    distributed.dump_final_state(parts.model)
    # "epochs" counts what was trained, in epochs of the training split: a budget that ends one
    # early, or a resolution switch that cuts one short, leaves a fraction; epochs_started counts
    # every epoch begun (what metrics.jsonl logs a line for)
    result = {"stage": ctx.stage, "val_fscore": counters.best, "params": ctx.n_params,
              "train_seconds": counters.train_seconds, "epochs": round(counters.images_seen / epoch_images, 2),
              "epochs_started": counters.epoch + 1, "steps": counters.step, "images_seen": counters.images_seen,
              "precision": parts.precision, "run_dir": str(ctx.run.dir), **ctx.length.result_record()}
    if ctx.processes.is_main and ctx.run.writer:
        ctx.run.close(ctx.stage, result)
    return result


# --- before the first step ---------------------------------------------------------------

def prepare(model: nn.Module, model_cfg: dict, loss_fn: LossFn, cfg: RunConfig, run_dir: str | Path, *,
            data_root: str | Path, stage: str, resume: bool, extra_config: dict, reference_scores: dict,
            show_progress: bool, budget: Budget | None,
            soft_targets: torch.Tensor | None) -> tuple[Parts, Counters, RunContext, TrainingData]:
    """Everything before the first step: processes, resume checks, data, optimiser, state."""
    processes, device = Processes.join(), distributed.pick_device()
    length = run_length(cfg, budget or Budget.from_minutes(cfg.budget_minutes), processes)
    model_cfg = {**model_cfg, "input_size": cfg.resolutions[-1][0]}
    inputs = run_inputs(data_root, extra_config)
    resumed = resume_state(run_dir, resume, device, processes.world, cfg, model_cfg, inputs)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # batch_size is per process, so one step sees batch_size x world images; the learning
    # rate is scaled linearly with it (Goyal et al., 2017), warm-up included
    lr = cfg.lr * processes.world
    precision = resolve_precision(cfg.precision, device)
    record = {"data_root": str(data_root), **extra_config, "world_size": processes.world,
              "precision_used": precision, "effective_batch_size": cfg.batch_size * processes.world,
              "effective_lr": lr}
    n_params = count_params(model)
    run = TrainingRun(Path(run_dir), resume, processes.is_main, cfg, record,
                      {"model/params": n_params, **reference_scores})
    if processes.is_main and processes.world > 1:
        log(f"[{stage}] {processes.world} processes x batch {cfg.batch_size} = effective batch "
            f"{record['effective_batch_size']}, lr {cfg.lr:g} x {processes.world} = {lr:g}")
    model = place_model(model, cfg, model_cfg["input_size"], device, processes.world)
    if resumed is None:
        length.probe(model, loss_fn, data_root, device)
    data, val = training_data(cfg, data_root, processes, show_progress, soft_targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    parts = Parts(model=model, net=wrap(model, cfg, device, processes.world), optimizer=optimizer,
                  scheduler=length.lr_scheduler(optimizer, lr, steps_per_epoch(len(data.sampler), cfg.batch_size)),
                  ema=ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 and processes.is_main else None,
                  loss_fn=loss_fn, augment=AugmentConfig.from_run_config(cfg),
                  # each rank draws its own augmentations; rank 0 (and a single process) keeps the plain seed
                  generator=torch.Generator(device=device).manual_seed(cfg.seed + processes.rank),
                  precision=precision)
    ctx = RunContext(cfg=cfg, stage=stage, device=device, processes=processes, run=run, length=length, val=val,
                     model_cfg=model_cfg, n_params=n_params, saved_config={**cfg.to_dict(), **inputs},
                     show_progress=show_progress and processes.is_main)
    counters = Counters() if resumed is None else restore(parts, ctx, resumed)
    length.start()
    return parts, counters, ctx, data


def training_data(cfg: RunConfig, data_root, processes: Processes, show_progress: bool,
                  soft_targets: torch.Tensor | None) -> tuple[TrainingData, CachedSplit | None]:
    """The training data, and the val split on rank 0 (None elsewhere)."""
    train_split = TrainSplit(cfg, data_root, show_progress and processes.is_main)
    val = load_split(data_root, "val", None, show_progress=show_progress) if processes.is_main else None
    first = train_split(cfg.size_at(0))
    if len(first) < 2:
        raise ValueError(f"{data_root}: {len(first)} training pair(s); a step needs at least 2 (BatchNorm)")
    if soft_targets is not None and len(soft_targets) != len(first):
        raise ValueError(f"{len(soft_targets)} soft targets for {len(first)} training images")
    # The DataLoader's sharding without a DataLoader (batches come from cached tensors): every
    # rank shuffles with the same seed + epoch and takes every world-th index, padded so all
    # ranks take the same number of steps. With one process and no repeat threshold this is
    # randperm(seed*1000+epoch).
    sampler = epoch_sampler(first.masks, NUM_CLASSES, cfg.repeat_threshold, processes.world, processes.rank,
                            seed=cfg.seed * 1000)
    return TrainingData(train_split, sampler, soft_targets, len(sampler) * processes.world), val


def place_model(model: nn.Module, cfg: RunConfig, input_size: int, device: torch.device, world: int) -> nn.Module:
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU kernel")
    model.input_size = input_size
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        # same parameter and buffer names, so checkpoints still load into plain BatchNorm
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, cfg: RunConfig, device: torch.device, world: int) -> nn.Module:
    """What each step calls. DDP averages gradients across ranks and, before each forward, copies
    rank 0's buffers to the others; the teacher of a distillation lives in loss_fn and is never wrapped."""
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def restore(parts: Parts, ctx: RunContext, state: dict) -> Counters:
    """last.pt's weights, optimiser, schedule, EMA, RNGs and budget back in place; returns its counters."""
    restore_training_state(state, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
                           ema=parts.ema, generator=parts.generator, rank=ctx.processes.rank)
    ctx.length.load_state_dict(state)
    ctx.run.open()  # the run exists already; its snapshot is rewritten
    counters = Counters.from_state(state)
    if ctx.processes.is_main:
        log(f"resumed {ctx.run.dir} at {ctx.length.where(counters.epoch + 1)}")
    return counters
