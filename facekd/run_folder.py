"""What every command that writes a run folder (--out) shares: refusing a folder that already
holds a run, one process at a time per folder, and leaving nothing behind when a budget is
refused. Plain files and os calls only (no torch), so the CLI can use it before importing torch."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from facekd.budget import BudgetError

# What a run writes that a new run would overwrite or append to (a user's own files of these
# names included): any of them marks the folder as holding a run.
RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "result.json")
LOCK_NAME = "facekd.lock"
# folders this process holds: prune_and_finetune locks its --out, and the fit it calls locks
# the same folder again
_held: set[Path] = set()


class RunFolderLocked(OSError):
    """Another live process is writing to this run folder."""


def refuse_existing_run(folder, resume: bool) -> None:
    """A folder holding any of RUN_FILES is continued with --resume or not used at all."""
    found = [name for name in RUN_FILES if (Path(folder) / name).exists()]
    if found and not resume:
        raise FileExistsError(f"{folder} already holds a run ({', '.join(found)}); pass --resume to continue "
                              "it or choose another --out")


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
