"""A run folder (--out): refusing one that already holds a run, one process at a time per
folder, leaving nothing behind when a budget is refused, and what the engine writes into it
(TrainingRun: the config snapshot, TensorBoard events, metrics.jsonl, result.json and the
HParams summary; checkpoints are facekd/checkpoint.py's). No torch at import, so the CLI can
use it before importing torch."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import threading
from pathlib import Path

from facekd.budget import BudgetError
from facekd.config import RunConfig, save_config
from facekd.registry import LOSSES

# What a run writes that a new run would overwrite or append to (a user's own files of these
# names included): any of them marks the folder as holding a run.
RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "result.json")
LOCK_NAME = "facekd.lock"
# folders this process holds: prune_and_finetune locks its --out, and the fit it calls locks
# the same folder again
_held: set[Path] = set()


class RunFolderLocked(OSError):
    """Another live process is writing to this run folder."""


def best_of_run(path, flag: str) -> str:
    """A checkpoint that `flag` names, where a run folder stands for its best.pt (issue 34:
    `--teacher runs/teacher` said "no such checkpoint"); other paths are returned as given."""
    if not Path(path).is_dir():
        return str(path)
    best = Path(path) / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{flag} {path}: a folder without best.pt; give a checkpoint, or the folder of a "
                                "run that has validated at least once")
    return str(best)


def refuse_existing_run(folder, resume: bool, names: tuple[str, ...] = RUN_FILES) -> None:
    """A folder holding any of `names` (a command's RUN_FILES and what else it writes) is
    continued with --resume or not used at all. --resume where there is no last.pt starts the
    run from scratch, which overwrites the folder's files: that is done only over what a run
    killed before its first last.pt leaves (written_before_last_pt), never over a user's own."""
    folder = Path(folder)
    found = [name for name in names if (folder / name).exists()]
    if found and not resume:
        raise FileExistsError(f"{folder} already holds a run ({', '.join(found)}); pass --resume to continue "
                              "it or choose another --out")
    if found and not (folder / "last.pt").exists():
        foreign = [name for name in found if not written_before_last_pt(folder, name)]
        if foreign:
            raise FileExistsError(f"--resume: {folder} holds no last.pt to continue, and starting from scratch "
                                  f"would overwrite its {', '.join(foreign)}; choose another --out")


# Keys that only facekd's own files hold: config.json's (the config and the engine's record of
# the run) and prune_report.json's.
_OWN_KEYS = {"config.json": {"model", "resolutions", "batch_size", "data_root", "world_size"},
             "prune_report.json": {"source", "target", "pruning", "before", "after_pruning"}}


def written_before_last_pt(folder: Path, name: str) -> bool:
    """Whether `name` in `folder` is a file a facekd run writes before its first last.pt (the
    config snapshot after the first step, and prune's pruned.pt and prune_report.json before
    fine-tuning), told from a user's own file of that name by its content."""
    if name == "pruned.pt":  # written just before its report, which vouches for it
        name = "prune_report.json"
    if name not in _OWN_KEYS:
        return False  # metrics.jsonl, best.pt and result.json come with or after last.pt
    try:
        content = json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and _OWN_KEYS[name] <= content.keys()


def _lock_owner(lock: Path) -> int | None:
    """The pid a lock file names, or None when it names no live process (a stale lock left by a
    killed run, or a file cut short while being written)."""
    try:
        pid = int(lock.read_text().split()[0])
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (OSError, ValueError, IndexError) as e:
        return pid if isinstance(e, PermissionError) else None  # alive, owned by another user
    return pid


def _take(lock: Path) -> None:
    """Create the lock file exclusively, naming this pid; take over a stale one once."""
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None or attempt:
                raise RunFolderLocked(f"{lock.parent} is in use by another facekd run (pid {owner}, "
                                      f"{lock}); wait for it to end or choose another --out") from None
            lock.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return


@contextlib.contextmanager
def run_folder_lock(folder, enabled: bool = True):
    """Hold `folder` for this process: a second run given the same --out is refused at once
    instead of interleaving its metrics and checkpoints with this one's. The lock is a file
    naming this pid, removed on exit; one left by a killed process is taken over. A folder
    created only to hold the lock is removed again if nothing else was written into it."""
    folder = Path(folder).resolve()
    if not enabled or folder in _held:  # off (torchrun ranks but 0), or an outer caller holds it
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        _take(lock)
    except RunFolderLocked:
        if created:
            folder.rmdir()
        raise
    _held.add(folder)
    try:
        yield
    finally:
        _held.discard(folder)
        lock.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()


@contextlib.contextmanager
def removed_if_budget_refused(folder, keep=lambda: False, only_new_since: set | None = None):
    """Undo what the block wrote into `folder` when it refuses its budget (BudgetError), so that
    a refused budget leaves nothing behind and a plain rerun with a larger one is accepted.
    `keep()` true at that point keeps everything (work worth resuming); `only_new_since` is the
    folder's listing taken earlier by the caller, when the caller wrote into it first."""
    folder = Path(folder)
    before = only_new_since if only_new_since is not None else set(folder.iterdir()) if folder.exists() else None
    try:
        yield
    except BudgetError:
        if keep():
            raise
        if before is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in set(folder.iterdir()) - before:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        raise


def _quiet_event_writer_threads() -> None:
    """Keep the traceback of a TensorBoard writer thread that failed to write (a full disk)
    off the terminal. SummaryWriter writes from a thread of its own, which prints its error
    and dies; the training thread's next call to the writer raises that error again, and
    EventWriter names the file there, in one line."""
    previous = threading.excepthook
    if getattr(previous, "quiets_event_writers", False):
        return

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)
    hook.quiets_event_writers = True
    threading.excepthook = hook


class EventWriter:
    """TensorBoard's SummaryWriter for a run folder, each of its calls naming the events file
    when a write fails: the OS error names no file ("[Errno 28] No space left on device")."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # here: the CLI imports this module before torch

        from facekd.files import naming_failed_writes  # it imports torch, which this module must not
        _quiet_event_writer_threads()
        self._naming = naming_failed_writes
        # SummaryWriter writes its first event as it starts, before its file's name is known here
        with naming_failed_writes(folder / "events.out.tfevents.*"):
            self._writer = SummaryWriter(str(folder))
        # the events file SummaryWriter chose: events.out.tfevents.<time>.<host>.<pid>.<n>
        self.path = getattr(self._writer.file_writer.event_writer, "_file_name", folder)

    def __getattr__(self, name):
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def named(*args, **kwargs):
            with self._naming(self.path):
                return attr(*args, **kwargs)
        return named


class TrainingRun:
    """Owns a run directory: config snapshot, TensorBoard, metrics.jsonl and result.json
    (checkpoints are facekd/checkpoint.py's).

    Nothing is written until `open`, which the loop calls after its first step, so a run that
    fails before it trained at all (bad data, a budget too small) leaves no folder behind.
    With writes=False (torchrun ranks other than 0) it only checks the directory, so that
    every rank refuses an existing run alike instead of rank 0 failing alone.
    `config_record` goes into config.json beside the config; `first_scalars` (the model's
    size, the teacher's score) are logged at step 0 when the run opens."""

    def __init__(self, run_dir: Path, resume: bool, writes: bool, cfg: RunConfig, config_record: dict,
                 first_scalars: dict):
        self.dir = Path(run_dir)
        refuse_existing_run(self.dir, resume)
        self.writes, self.writer = writes, None
        self.cfg, self.config_record, self.first_scalars = cfg, config_record, first_scalars

    def open(self) -> None:
        if self.writes and self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.dir, self.config_record)
            self.writer = EventWriter(self.dir)
            for name, value in self.first_scalars.items():
                self.writer.add_scalar(name, value, 0)

    def log(self, record: dict) -> None:
        from facekd.files import naming_failed_writes  # here: it imports torch, which this module must not
        # standard JSON, which has no NaN or Infinity: a value that is not finite is logged as null
        record = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}
        with naming_failed_writes(self.dir / "metrics.jsonl"), (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def close(self, stage: str, result: dict) -> None:
        """The run's main settings and final score on TensorBoard's HParams tab, written into
        the run's own events file so each run stays one file; then result.json."""
        from torch.utils.tensorboard.summary import hparams

        from facekd.files import naming_failed_writes
        cfg = self.cfg
        params = {"stage": stage, "model": cfg.model, "resolutions": json.dumps(cfg.resolutions),
                  "epochs": cfg.epochs, "budget_minutes": cfg.budget_minutes, "batch_size": cfg.batch_size,
                  "lr": cfg.lr, "weight_decay": cfg.weight_decay, "ema_decay": cfg.ema_decay, "seed": cfg.seed,
                  # every registered loss's weight, so that a new loss shows here without an edit
                  **{f"{name}_weight": cfg.loss_weights.get(name, 0.0) for name in LOSSES},
                  "dice_scope": cfg.dice_scope, "temperature": cfg.temperature,
                  "repeat_threshold": cfg.repeat_threshold, "distill_mode": cfg.distill_mode,
                  "teacher_term_size": cfg.teacher_term_size,
                  "params": result["params"]}
        metrics = {"hparam/val_fscore": result["val_fscore"], "hparam/train_seconds": result["train_seconds"]}
        with naming_failed_writes(self.writer.path):
            for summary in hparams(params, metrics):
                self.writer.file_writer.add_summary(summary)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value)
        self.writer.flush()
        self.writer.close()
        with naming_failed_writes(self.dir / "result.json"):
            (self.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
