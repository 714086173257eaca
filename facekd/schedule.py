"""How long a run trains and at which resolution: the one object the training loop asks
"which resolution now?", "is this epoch over?", "was that the last one?" and "what must be
held back?". A run is sized in epochs (FixedEpochs, reproducible) or in wall-clock time
(TimeBudget, facekd/budget.py), and the loop reads both alike, with no branch of its own.

Each also drives the learning rate: warm-up, then cosine to the floor, over steps for fixed
epochs, over the share of the budget used for a budget, so that the rate reaches its floor
just as the time runs out.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from facekd.budget import Budget, format_seconds, now
from facekd.budget_check import check_budget_fits, probe_budget
from facekd.config import RunConfig
from facekd.data import CachedSplit
from facekd.distributed import Processes

SCHEDULE_STEPS = 100_000  # under a budget the lr schedule runs on progress x this many ticks


def cosine_schedule(optimizer: torch.optim.Optimizer, cfg: RunConfig, lr: float, total: int,
                    warmup: int) -> CosineLRScheduler:
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=lr * cfg.min_lr_ratio, warmup_t=warmup,
                             warmup_lr_init=lr * 0.01, t_in_epochs=False)


class FixedEpochs:
    """cfg.epochs epochs, each at cfg.size_at(epoch); the lr schedule is counted in steps."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def lr_scheduler(self, optimizer, lr: float, steps_per_epoch: int) -> CosineLRScheduler:
        return cosine_schedule(optimizer, self.cfg, lr, steps_per_epoch * self.cfg.epochs,
                               int(self.cfg.warmup_epochs * steps_per_epoch))

    def epochs(self, first: int):
        return range(first, self.cfg.epochs)

    def epoch_count(self) -> int | None:
        return self.cfg.epochs

    def epoch_data(self, epoch: int, train_split) -> tuple[int, CachedSplit]:
        size = self.cfg.size_at(epoch)
        return size, train_split(size)

    def lr_tick(self, step: int) -> int:
        return step

    def epoch_over(self, size: int) -> bool:
        return False

    def is_last(self, epoch: int) -> bool:
        return epoch == self.cfg.epochs - 1

    def probe(self, *args) -> None:
        pass

    def start(self) -> None:
        pass

    def check_fits(self, *args, **kwargs) -> None:
        pass

    def hold_back(self, seconds: float) -> None:
        pass

    def status(self) -> dict:
        return {}

    def trained(self, epoch: int, images_seen: int, epoch_images: int) -> str:
        return f"epoch {epoch}"

    def note(self) -> str:
        return ""

    def epoch_record(self) -> dict:
        return {}

    def result_record(self) -> dict:
        return {}

    def where(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.cfg.epochs}"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TimeBudget:
    """Train until the budget is spent, the resolution phases and the lr following the share of
    it used. Every rank must agree on that share, or their schedules (and collectives) would
    part ways: rank 0's reading is the one all use."""

    def __init__(self, cfg: RunConfig, budget: Budget, processes: Processes):
        self.cfg, self.budget, self.processes = cfg, budget, processes
        self.reading = 0.0     # the progress read after the latest step; see lr_tick
        self.spent = False

    def lr_scheduler(self, optimizer, lr: float, steps_per_epoch: int) -> CosineLRScheduler:
        return cosine_schedule(optimizer, self.cfg, lr, SCHEDULE_STEPS,
                               int(SCHEDULE_STEPS * self.cfg.warmup_epochs / self.cfg.epochs))

    def epochs(self, first: int):
        return itertools.count(first)

    def epoch_count(self) -> int | None:
        return None

    def progress(self) -> float:
        return self.processes.agree(self.budget.progress())

    def epoch_data(self, epoch: int, train_split) -> tuple[int, CachedSplit]:
        """The resolution the budget's progress asks for, and the split at it. The time spent
        decoding a new resolution is set aside from training time, and what the switches still
        to come will spend decoding is held back, so that a slow decode cannot push the run
        past its end (issue 28: 193 s of a 180-s budget) and the last phase still gets its share."""
        progress = self.progress()
        size = self.cfg.size_at_progress(progress)
        t0 = now()
        data = train_split(size)
        self.budget.set_aside(now() - t0)
        self.budget.ahead = train_split.decode_s * self.cfg.switches_after(progress)
        return size, data

    def lr_tick(self, step: int) -> int:
        """Where the lr schedule stands after a step. The progress read here is the one the
        stop and phase checks (epoch_over) use: a fresh reading could pass 1.0 while the lr sat
        above its floor, and the run would stop without a step at the floor."""
        self.reading = self.progress()
        return int(self.reading * SCHEDULE_STEPS)

    def epoch_over(self, size: int) -> bool:
        """The budget is spent, or its next phase trains at another resolution."""
        self.spent = self.reading >= 1.0
        return self.spent or self.cfg.size_at_progress(self.reading) != size

    def is_last(self, epoch: int) -> bool:
        return self.spent

    def probe(self, model: nn.Module, loss_fn, data_root, device: torch.device) -> None:
        """Refuse, before the data is decoded, a budget that cannot hold the run (facekd/budget_check.py)."""
        if self.processes.world == 1:  # under torchrun every rank would have to agree
            probe_budget(model, loss_fn, self.cfg, data_root, self.budget, device)

    def start(self) -> None:
        """The training loop begins: progress counts from here."""
        self.budget.start_training()

    def check_fits(self, model, val: CachedSplit, device, precision: str, step_seconds: float) -> None:
        check_budget_fits(self.budget, model, val, self.cfg, device, precision, step_seconds)

    def hold_back(self, seconds: float) -> None:
        """What a validation and a checkpoint really cost here, held back for the last ones."""
        self.budget.reserve = max(self.budget.reserve, 1.2 * seconds + 1.0)

    def status(self) -> dict:
        return {"left": format_seconds(self.budget.left())}

    def trained(self, epoch: int, images_seen: int, epoch_images: int) -> str:
        # the epochs are cut short: say how much was trained (issue 34: "epoch 1 @384" for a
        # run of 0.42 epochs), and what is left
        return f"{images_seen / epoch_images:.2f} epochs ({images_seen} images)"

    def note(self) -> str:
        return f", {self.budget.describe()}"

    def epoch_record(self) -> dict:
        return {"budget_used": self.budget.used_fraction()}

    def result_record(self) -> dict:
        return {"budget_s": self.budget.seconds, "budget_spent_s": self.budget.spent()}

    def where(self, epoch: int) -> str:
        return f"epoch {epoch} ({self.budget.describe()})"

    def state_dict(self) -> dict:
        return {"budget_spent": self.budget.spent(), "budget_train_start": self.budget.train_start}

    def load_state_dict(self, state: dict) -> None:
        self.budget.resume(state.get("budget_spent", 0.0), state.get("budget_train_start"))


def run_length(cfg: RunConfig, budget: Budget | None, processes: Processes) -> FixedEpochs | TimeBudget:
    return FixedEpochs(cfg) if budget is None else TimeBudget(cfg, budget, processes)


def steps_per_epoch(n_indices: int, batch_size: int) -> int:
    return math.ceil(n_indices / batch_size)
