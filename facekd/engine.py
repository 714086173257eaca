"""The one training loop. Every stage (teacher, distillation, fine-tuning after pruning)
calls `fit` with its own model and loss function; none of them owns a loop.

A loss function maps (logits, images, labels, soft_targets) to a dict of named terms plus
"loss", the total that is back-propagated; each term is logged separately. soft_targets is
None unless the stage hands `fit` stored class scores for the training images (a
teacher's, computed once), which then follow every flip and warp of the batch.

A run is sized in epochs (reproducible) or, with cfg.budget_minutes, in wall-clock time
(facekd/budget.py): then the learning rate and the resolution phases follow the share of
the budget used, and training ends, mid-epoch if need be, when it is spent.

Under torchrun (facekd/distributed.py) the same loop runs in every process: the model is
wrapped in DistributedDataParallel, each rank trains on its shard of every epoch, and
rank 0 alone validates and writes the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from facekd import distributed
from facekd.challenge import count_params
from facekd.budget import Budget, format_seconds, now
from facekd.budget_check import check_budget_fits, probe_budget
from facekd.checkpoint import (restore_training_state, resume_state, run_inputs, save_checkpoint,
                               training_state)
from facekd.config import RunConfig
from facekd.cpu_kernels import safe_conv_backward
from facekd.data import CachedSplit, load_split
from facekd.evaluation import evaluate
from facekd.labels import NUM_CLASSES, colourise
from facekd.losses import LossFn
from facekd.precision import autocast, resolve_precision
from facekd.run_folder import TrainingRun, run_folder_lock
from facekd.sampling import epoch_sampler
from facekd.transforms import AugmentConfig, train_batch

SCHEDULE_STEPS = 100_000  # under a budget the lr schedule runs on progress x this many ticks


@dataclass
class Loop:
    """What the training loop carries from step to step: the model and its optimiser, and
    the counters that last.pt saves."""
    cfg: RunConfig
    stage: str
    model: nn.Module                     # the plain model: checkpoints, EMA and BN syncs use it
    net: nn.Module                       # what the step calls: the model, maybe DDP-wrapped or compiled
    model_cfg: dict
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    augment: AugmentConfig
    generator: torch.Generator
    device: torch.device
    precision: str                       # resolved: "fp32" or "bf16" (the forward passes)
    run: TrainingRun
    val: CachedSplit | None              # rank 0 alone validates
    budget: Budget | None
    soft_targets: torch.Tensor | None
    reference_scores: dict
    n_params: int
    world: int
    rank: int
    progress_bars: bool
    step: int = 0
    epoch: int = -1
    best: float = -1.0
    train_seconds: float = 0.0
    images_seen: int = 0
    evals_done: int = 0
    config_record: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # run_inputs: saved with the config, for resume checks
    logged_start: bool = False
    finished: bool = False               # the last epoch (or the budget's end) was reached; resuming is a no-op
    epoch_images: int = 1                # images in one epoch, over every rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def progress(self) -> float:
        """The budget's progress as rank 0 reads it: every rank must agree on the schedule and
        on when to stop, or their weights (and collectives) would part ways."""
        if self.world == 1:
            return self.budget.progress()
        return float(distributed.broadcast(torch.tensor(self.budget.progress(), dtype=torch.float64)))


def train_step(loop: Loop, images: torch.Tensor, masks: torch.Tensor,
               soft: torch.Tensor | None) -> tuple[dict, float | None]:
    """One optimiser step on a uint8 batch. Returns the detached loss terms and, under a budget,
    the progress reading that set the next step's lr: the caller's stop and phase checks must
    use that same reading, since a fresh one could pass 1.0 while the lr sat above its floor,
    and the run would stop without a step at the floor."""
    images, labels, soft = train_batch(images, masks, loop.augment, loop.generator, soft, loop.cfg.channels_last)
    with autocast(loop.precision, loop.device):
        logits = loop.net(images)
    terms = loop.loss_fn(logits.float(), images, labels, soft)  # fp32: an online teacher casts itself
    check_finite(loop, terms["loss"])
    loop.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if loop.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(loop.model.parameters(), loop.cfg.grad_clip)
    loop.optimizer.step()
    loop.step += 1
    progress = loop.progress() if loop.budget else None
    loop.scheduler.step_update(loop.step if progress is None else int(progress * SCHEDULE_STEPS))
    if loop.ema is not None:
        loop.ema.update(loop.model, step=loop.step)
    return {k: float(v.detach()) for k, v in terms.items()}, progress


class NonFiniteLossError(ValueError):
    """The loss went to inf or NaN: training stops before the step that would spoil the weights."""


def check_finite(loop: Loop, loss: torch.Tensor) -> None:
    """Stop, before the optimiser step, on a loss that is inf or NaN on any rank (every rank
    must stop together); last.pt and best.pt keep the last good epoch."""
    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()) else 1.0)
    if loop.world > 1:
        bad = distributed.all_reduce(bad, "max")
    if bad.item():
        kept = f"last.pt keeps epoch {loop.epoch - 1}" if loop.epoch > 0 else "no epoch had finished"
        raise NonFiniteLossError(f"[{loop.stage}] epoch {loop.epoch}, step {loop.step + 1}: the loss is "
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


def train_one_epoch(loop: Loop, data: CachedSplit, order: torch.Tensor, size: int) -> tuple[dict, int, bool]:
    """Steps over one shuffled epoch. Returns (summed loss terms, images seen, budget spent).
    Under a budget the epoch also ends early when the resolution phase changes."""
    bar = tqdm(range(0, len(order), loop.cfg.batch_size), desc=f"epoch {loop.epoch} @{size}", leave=False,
               disable=not loop.progress_bars)
    with cleared_on_error(bar):
        return _steps(loop, data, order, size, bar)


def _steps(loop: Loop, data: CachedSplit, order: torch.Tensor, size: int, bar) -> tuple[dict, int, bool]:
    """train_one_epoch's loop over the batches `bar` yields the start of."""
    cfg, sums, seen, spent = loop.cfg, {}, 0, False
    for i in bar:
        idx = order[i:i + cfg.batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one (equal on all ranks)
            continue
        soft = None if loop.soft_targets is None else loop.soft_targets[idx].to(loop.device)
        t0 = now()
        with safe_conv_backward(len(idx), loop.device):  # odd CPU batches crash oneDNN (facekd/cpu_kernels.py)
            terms, progress = train_step(loop, data.images[idx].to(loop.device), data.masks[idx].to(loop.device), soft)
        if not loop.run.writer and loop.main:  # the run's first step
            check_budget_fits(loop, step_seconds=now() - t0)
            loop.run.open(cfg, loop.config_record)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * len(idx)
        seen += len(idx)
        postfix = {"loss": f"{terms['loss']:.3f}"}
        if loop.budget:
            postfix["left"] = format_seconds(loop.budget.left())
            spent = progress >= 1.0
            if spent or cfg.size_at_progress(progress) != size:
                break
        bar.set_postfix(postfix)
    return sums, seen, spent


def validate_and_keep_best(loop: Loop, val: CachedSplit, size: int, is_last: bool, record: dict) -> None:
    """Score the (EMA) model on val, log it, and write best.pt when it improved."""
    cfg, writer = loop.cfg, loop.run.writer
    eval_model = loop.ema.module if loop.ema is not None else loop.model
    summary, preds = evaluate(eval_model, val, size, cfg.flip_tta, cfg.batch_size, loop.device, return_preds=True,
                              progress=loop.progress_bars, precision=loop.precision)
    record["val_fscore"] = summary["fscore"]
    writer.add_scalar("val/fscore", summary["fscore"], loop.epoch)
    writer.add_scalar("val/left_right_swap_rate", summary["left_right_swap_rate"], loop.epoch)
    for name, f1 in summary["per_class"].items():
        writer.add_scalar(f"val_f1/{name}", f1, loop.epoch)
    if loop.evals_done % cfg.panel_every == 0 or is_last:
        k = min(4, len(val))
        panel = torch.cat([val.images[:k], colourise(val.masks[:k]), colourise(preds[:k])], 3)
        writer.add_images("val/input_gt_pred", panel, loop.epoch)
    loop.evals_done += 1
    if summary["fscore"] > loop.best:
        loop.best = summary["fscore"]
        save_checkpoint({"model": eval_model.state_dict(), "model_cfg": {**loop.model_cfg, "input_size": size},
                         "stage": loop.stage, "epoch": loop.epoch, "val_fscore": loop.best, "params": loop.n_params,
                         "precision": loop.precision,
                         # what this model cost to train, summed over every resume of its run
                         "train_seconds": loop.train_seconds, "images_seen": loop.images_seen,
                         "config": cfg.to_dict()}, loop.run.dir / "best.pt")
    # under a budget the epochs are cut short: say how much was trained (issue 34: "epoch 1 @384"
    # for a run of 0.42 epochs), not which epoch began
    trained = (f"{loop.images_seen / loop.epoch_images:.2f} epochs ({loop.images_seen} images)" if loop.budget
               else f"epoch {loop.epoch}")
    tqdm.write(f"[{loop.stage}] {trained} @{size}: loss {record.get('loss/loss', 0):.4f} "
               f"val F {summary['fscore']:.4f} (best {loop.best:.4f}) {record['images_per_s']:.1f} img/s"
               + (f", {loop.budget.describe()}" if loop.budget else ""))


def save_training_state(loop: Loop, rng_gens: list) -> None:
    progress = {"epoch": loop.epoch, "step": loop.step, "best_metric": loop.best,
                "train_seconds": loop.train_seconds, "images_seen": loop.images_seen, "finished": loop.finished}
    if loop.budget:
        progress.update(budget_spent=loop.budget.spent(), budget_train_start=loop.budget.train_start)
    save_checkpoint(training_state(model=loop.model, model_cfg=loop.model_cfg, stage=loop.stage,
                                   optimizer=loop.optimizer, scheduler=loop.scheduler, ema=loop.ema,
                                   progress=progress, config={**loop.cfg.to_dict(), **loop.inputs},
                                   params=loop.n_params,
                                   rng_gens=rng_gens, world_size=loop.world), loop.run.dir / "last.pt")


def end_of_epoch(loop: Loop, size: int, sums: dict, seen: int, elapsed: float, is_last: bool) -> None:
    """Reduce the epoch's statistics over ranks; rank 0 logs, validates and saves last.pt."""
    if loop.world > 1:
        # log losses and throughput over every rank's images, not rank 0's share
        keys = sorted(sums)
        totals = distributed.all_reduce(torch.tensor([seen] + [sums[k] for k in keys], dtype=torch.float64))
        seen, sums = int(totals[0]), dict(zip(keys, totals[1:].tolist()))
        # the last forward updated each rank's BatchNorm statistics with its own batch;
        # give every rank rank 0's, which are the ones rank 0 saves
        distributed.broadcast_buffers(loop.model)
    loop.images_seen += seen
    rng_gens = distributed.all_gather(loop.generator.get_state())  # each rank's augmentation RNG, for exact resume
    # Rank 0 validates the whole split alone while the others wait at the barrier below:
    # the F-score is a mean of per-image scores and the panel needs the first images,
    # so sharding validation would mean gathering per-image results, for little gain.
    if loop.main:
        t0 = now()
        loop.run.open(loop.cfg, loop.config_record)
        if not loop.logged_start:
            loop.logged_start = True
            loop.run.writer.add_scalar("model/params", loop.n_params, 0)
            for name, value in loop.reference_scores.items():
                loop.run.writer.add_scalar(name, value, 0)
        record = {"epoch": loop.epoch, "size": size, "lr": loop.optimizer.param_groups[0]["lr"],
                  "images_per_s": seen / max(elapsed, 1e-9), "train_seconds": loop.train_seconds,
                  **{f"loss/{k}": v / max(seen, 1) for k, v in sums.items()}}
        if loop.budget:
            record["budget_used"] = loop.budget.used_fraction()
        for k, v in record.items():
            if k != "epoch":
                loop.run.writer.add_scalar(k if "/" in k else f"train/{k}", v, loop.epoch)
        if loop.budget:
            loop.run.writer.add_scalar("budget/used_fraction", record["budget_used"], loop.epoch)
        if (loop.epoch + 1) % loop.cfg.eval_every == 0 or is_last:
            validate_and_keep_best(loop, loop.val, size, is_last, record)
        loop.run.log(record)
        save_training_state(loop, rng_gens)
        if loop.budget:  # what a validation and a checkpoint really cost here, held back for the last ones
            loop.budget.reserve = max(loop.budget.reserve, 1.2 * (now() - t0) + 1.0)
    if loop.world > 1:
        distributed.barrier()
        loop.best = float(distributed.broadcast(torch.tensor(loop.best, dtype=torch.float64)))


def _make_schedule(optimizer, cfg: RunConfig, lr: float, steps_per_epoch: int, budgeted: bool):
    """Warm-up then cosine to the floor: over steps for fixed epochs, over progress ticks under a budget."""
    if budgeted:
        total, warmup = SCHEDULE_STEPS, int(SCHEDULE_STEPS * cfg.warmup_epochs / cfg.epochs)
    else:
        total, warmup = steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch)
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=lr * cfg.min_lr_ratio, warmup_t=warmup,
                             warmup_lr_init=lr * 0.01, t_in_epochs=False)


def fit(model: nn.Module, model_cfg: dict, loss_fn: LossFn, cfg: RunConfig, run_dir: str | Path, *,
        data_root: str | Path, stage: str, resume: bool = False, extra_config: dict | None = None,
        reference_scores: dict | None = None, progress: bool = True, budget: Budget | None = None,
        soft_targets: torch.Tensor | None = None) -> dict:
    """Train, validate every cfg.eval_every epochs, keep best.pt and last.pt. Returns a summary.

    `budget` is the stage's running budget when the stage did work of its own first (loading a
    teacher, pruning); otherwise cfg.budget_minutes starts one here. `soft_targets` are stored
    class scores (N x C x h x w) in the order of the training split."""
    with run_folder_lock(run_dir, enabled=distributed.is_main()):  # one process writes a run folder at a time
        loop, train_split, sampler = _prepare(model, model_cfg, loss_fn, cfg, run_dir, data_root=data_root,
                                              stage=stage, resume=resume, extra_config=extra_config or {},
                                              progress=progress, budget=budget, soft_targets=soft_targets)
        loop.reference_scores = reference_scores or {}
        _train_epochs(loop, train_split, sampler)
        return _finish(loop)


def _train_epochs(loop: Loop, train_split: TrainSplit, sampler) -> None:
    """Epochs until the last one (or the budget's end); a finished run resumed does nothing."""
    cfg = loop.cfg
    epochs = itertools.count(loop.epoch + 1) if loop.budget else range(loop.epoch + 1, cfg.epochs)
    if loop.finished:  # a budgeted run resumed after its end would otherwise spend its reserve again
        epochs = ()
    bar = tqdm(epochs, desc=f"{loop.stage} epochs", disable=not loop.progress_bars, initial=loop.epoch + 1,
               total=None if loop.budget else cfg.epochs)
    with cleared_on_error(bar):
        for epoch in bar:
            if _run_epoch(loop, epoch, train_split, sampler):
                break


def _epoch_data(loop: Loop, epoch: int, train_split: TrainSplit) -> tuple[int, CachedSplit]:
    """The epoch's resolution and the training split at it. Under a budget the time spent
    decoding a new resolution is set aside from training time, and what the switches still to
    come will spend decoding is held back, so that a slow decode cannot push the run past
    its end (issue 28: 193 s of a 180-s budget) and the last phase still gets its share."""
    if not loop.budget:
        return loop.cfg.size_at(epoch), train_split(loop.cfg.size_at(epoch))
    progress = loop.progress()
    size = loop.cfg.size_at_progress(progress)
    t0 = now()
    data = train_split(size)
    loop.budget.set_aside(now() - t0)
    loop.budget.ahead = train_split.decode_s * loop.cfg.switches_after(progress)
    return size, data


def _run_epoch(loop: Loop, epoch: int, train_split: TrainSplit, sampler) -> bool:
    """Train one epoch, then log, validate and save; returns whether it was the last."""
    loop.epoch = epoch
    size, data = _epoch_data(loop, epoch, train_split)
    sampler.set_epoch(epoch)
    loop.net.train()
    t0 = time.time()
    sums, seen, spent = train_one_epoch(loop, data, torch.tensor(list(sampler)), size)
    elapsed = time.time() - t0
    loop.train_seconds += elapsed
    is_last = spent if loop.budget else epoch == loop.cfg.epochs - 1
    loop.finished = is_last
    end_of_epoch(loop, size, sums, seen, elapsed, is_last)
    return is_last


def _finish(loop: Loop) -> dict:
    distributed.dump_final_state(loop.model)
    # "epochs" counts what was trained, in epochs of the training split: a budget that ends one
    # early, or a resolution switch that cuts one short, leaves a fraction; epochs_started counts
    # every epoch begun (what metrics.jsonl logs a line for)
    result = {"stage": loop.stage, "val_fscore": loop.best, "params": loop.n_params,
              "train_seconds": loop.train_seconds, "epochs": round(loop.images_seen / loop.epoch_images, 2),
              "epochs_started": loop.epoch + 1, "steps": loop.step, "images_seen": loop.images_seen,
              "precision": loop.precision, "run_dir": str(loop.run.dir)}
    if loop.budget:
        result.update(budget_s=loop.budget.seconds, budget_spent_s=loop.budget.spent())
    if loop.main and loop.run.writer:
        loop.run.close(loop.cfg, loop.stage, result)
    return result


class TrainSplit:
    """The training split at one resolution at a time (train_split(size)), decoded when the
    resolution changes; decode_s is what the latest decode took, the price of the next."""

    def __init__(self, cfg: RunConfig, data_root, progress: bool):
        self.cfg, self.data_root, self.progress = cfg, data_root, progress
        self.size, self.split, self.decode_s = None, None, 0.0

    def __call__(self, size: int) -> CachedSplit:
        if size != self.size:
            self.split = None  # keep one resolution in memory at a time
            t0 = now()
            self.split = load_split(self.data_root, "train", size, self.cfg.train_limit, progress=self.progress)
            self.size, self.decode_s = size, now() - t0
        return self.split


def _training_data(cfg: RunConfig, data_root, world: int, rank: int, progress: bool, soft_targets):
    """(the training split, by resolution; val on rank 0; the epoch sampler)."""
    train_split = TrainSplit(cfg, data_root, progress and rank == 0)
    val = load_split(data_root, "val", None, progress=progress) if rank == 0 else None
    first = train_split(cfg.size_at(0))
    if len(first) < 2:
        raise ValueError(f"{data_root}: {len(first)} training pair(s); a step needs at least 2 (BatchNorm)")
    if soft_targets is not None and len(soft_targets) != len(first):
        raise ValueError(f"{len(soft_targets)} soft targets for {len(first)} training images")
    # The DataLoader's sharding without a DataLoader (batches come from cached tensors): every
    # rank shuffles with the same seed + epoch and takes every world-th index, padded so all
    # ranks take the same number of steps. With one process and no repeat threshold this is
    # randperm(seed*1000+epoch).
    sampler = epoch_sampler(first.masks, NUM_CLASSES, cfg.repeat_threshold, world, rank, seed=cfg.seed * 1000)
    return train_split, val, sampler


def _prepare(model: nn.Module, model_cfg: dict, loss_fn: LossFn, cfg: RunConfig, run_dir: str | Path, *,
             data_root: str | Path, stage: str, resume: bool, extra_config: dict, progress: bool,
             budget: Budget | None, soft_targets: torch.Tensor | None) -> tuple[Loop, TrainSplit, object]:
    """Everything before the first step: process set-up, resume checks, data, optimiser, state."""
    distributed.setup()
    world, rank, device = distributed.world_size(), distributed.rank(), distributed.pick_device()
    budget = budget or Budget.from_minutes(cfg.budget_minutes)
    model_cfg = {**model_cfg, "input_size": cfg.resolutions[-1][0]}
    inputs = run_inputs(data_root, extra_config)
    resumed = resume_state(run_dir, resume, device, world, cfg, model_cfg, inputs)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # batch_size is per process, so one step sees batch_size x world images; the learning
    # rate is scaled linearly with it (Goyal et al., 2017), warm-up included
    lr = cfg.lr * world
    precision = resolve_precision(cfg.precision, device)
    record = {"data_root": str(data_root), **extra_config, "world_size": world, "precision_used": precision,
              "effective_batch_size": cfg.batch_size * world, "effective_lr": lr}
    run = TrainingRun(Path(run_dir), resume, writes=rank == 0)
    if rank == 0 and world > 1:
        tqdm.write(f"[{stage}] {world} processes x batch {cfg.batch_size} = effective batch "
                   f"{record['effective_batch_size']}, lr {cfg.lr:g} x {world} = {lr:g}")
    model = _place_model(model, cfg, model_cfg["input_size"], device, world)
    if budget is not None and resumed is None and world == 1:  # under torchrun every rank would have to agree
        probe_budget(model, loss_fn, cfg, data_root, budget, device)
    train_split, val, sampler = _training_data(cfg, data_root, world, rank, progress, soft_targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    scheduler = _make_schedule(optimizer, cfg, lr, math.ceil(len(sampler) / cfg.batch_size), budget is not None)
    loop = Loop(cfg=cfg, stage=stage, model=model, net=_wrap(model, cfg, device, world), model_cfg=model_cfg,
                loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                # only rank 0 evaluates and saves, so only it keeps an EMA
                ema=ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 and rank == 0 else None,
                augment=AugmentConfig.from_run_config(cfg),
                # each rank draws its own augmentations; rank 0 (and a single process) keeps the plain seed
                generator=torch.Generator(device=device).manual_seed(cfg.seed + rank),
                device=device, precision=precision, run=run, val=val, budget=budget, soft_targets=soft_targets, reference_scores={},
                n_params=count_params(model), world=world, rank=rank, progress_bars=progress and rank == 0,
                config_record=record, inputs=inputs, epoch_images=len(sampler) * world)
    if resumed is not None:
        _restore(loop, resumed)
    if budget is not None:
        budget.start_training()
    return loop, train_split, sampler


def _place_model(model: nn.Module, cfg: RunConfig, input_size: int, device: torch.device, world: int) -> nn.Module:
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


def _wrap(model: nn.Module, cfg: RunConfig, device: torch.device, world: int) -> nn.Module:
    """What each step calls. DDP averages gradients across ranks and, before each forward, copies
    rank 0's buffers to the others; the teacher of a distillation lives in loss_fn and is never wrapped."""
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def _restore(loop: Loop, state: dict) -> None:
    counters = restore_training_state(state, model=loop.model, optimizer=loop.optimizer, scheduler=loop.scheduler,
                                      ema=loop.ema, generator=loop.generator, rank=loop.rank)
    loop.epoch, loop.step, loop.best = counters["epoch"], counters["step"], counters["best_metric"]
    loop.train_seconds, loop.images_seen = counters["train_seconds"], counters["images_seen"]
    loop.finished = counters["finished"]
    if loop.budget is not None:
        loop.budget.resume(counters["budget_spent"], counters["budget_train_start"])
    loop.run.open(loop.cfg, loop.config_record)  # the run exists already; its snapshot is rewritten
    if loop.main:
        tqdm.write(f"resumed {loop.run.dir} at epoch {loop.epoch + 1}"
                   + (f" ({loop.budget.describe()})" if loop.budget else f"/{loop.cfg.epochs}"))
