"""Checkpoints are plain dicts of tensors and primitives, written atomically and loaded
with weights_only=True, so loading one never runs pickled code."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from tqdm import tqdm

from facekd.config import RunConfig, resume_conflicts
from facekd.files import atomic_write, load_checkpoint
from facekd.run_folder import refuse_existing_run


def hash_file(h, path: str | os.PathLike):
    """Feed a file's bytes into the hash object `h`, in chunks; returns `h`."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def file_sha256(path: str | os.PathLike) -> str:
    """A file's SHA-256: what identifies a checkpoint, whose path may be rewritten in place."""
    return hash_file(hashlib.sha256(), path).hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` atomically, making its folder if need be: `quantize --out newdir/i.pt`
    failed here, after all its work (the folder was checked to be makeable up front)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a run killed mid-write keeps the previous checkpoint intact
        torch.save(state, f)


# The full training state that --resume continues from. Its layout lives here, beside the
# loader, so that the engine only says what to save, not how it is laid out.

def training_state(*, model, model_cfg: dict, stage: str, optimizer, scheduler, ema, counters: dict,
                   config: dict, params: int, rng_gens: list, world_size: int) -> dict:
    """A plain dict for last.pt. `counters` holds the counters (epoch, step, best_metric,
    train_seconds, images_seen, and the budget's spent seconds under a budget)."""
    state = {"model": model.state_dict(), "model_cfg": model_cfg, "stage": stage,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **counters,
             "config": config, "params": params, "world_size": world_size,
             "rng_cpu": torch.get_rng_state(), "rng_gen": rng_gens[0]}
    if world_size > 1:
        # a list, not a stack: Generator.set_state crashes on a row view of a stacked tensor
        state["rng_gen_ranks"] = rng_gens
    if ema is not None:
        state["model_ema"] = ema.module.state_dict()
    return state


def restore_training_state(state: dict, *, model, optimizer, scheduler, ema, generator, rank: int) -> None:
    """Load last.pt's weights, optimiser, schedule, EMA and RNG states in place (its counters
    are the engine's Counters.from_state)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and "model_ema" in state:
        ema.module.load_state_dict(state["model_ema"])
    torch.set_rng_state(state["rng_cpu"].cpu())  # RNG states must be CPU tensors, even for CUDA
    generator.set_state((state["rng_gen_ranks"][rank] if "rng_gen_ranks" in state else state["rng_gen"]).cpu())


# What --resume checks before it continues a run: the same model, config, data and teacher.

def run_inputs(data_root, extra_config: dict | None) -> dict:
    """What a resumed run must share with the run it continues, beside its config: the data it
    trains and validates on, and its teacher(s) (a path, a list of paths, or "none"), as absolute
    paths so that the same files given from another folder still match, with each teacher's
    content hash ("teacher_sha256", in the same shape): a path alone let a teacher rewritten in
    place (train-teacher --resume rewrites its best.pt) pass for the one the run started with."""
    def absolute(value):
        if isinstance(value, (list, tuple)):
            return [absolute(v) for v in value]
        return value if value == "none" else str(Path(value).resolve())
    inputs = {"data_root": data_root, **{k: v for k, v in (extra_config or {}).items() if k == "teacher"}}
    inputs = {k: absolute(v) for k, v in inputs.items()}
    teacher = inputs.get("teacher", "none")
    if teacher != "none":
        inputs["teacher_sha256"] = [file_sha256(t) for t in teacher] if isinstance(teacher, list) else \
            file_sha256(teacher)
    return inputs


def changed_teachers(saved: dict, inputs: dict) -> list[str]:
    """A conflict for each teacher that is the same file as the run's but whose content is not.
    Runs saved before teachers were hashed have no hashes, and are not compared."""
    if "teacher_sha256" not in saved or saved.get("teacher") != inputs.get("teacher"):
        return []  # another teacher altogether is resume_conflicts' "teacher:" conflict
    listed = lambda value: value if isinstance(value, list) else [value]
    return [f"--teacher {path}: its content changed since the run started (sha256 {then[:12]}... then, "
            f"{now[:12]}... now)" for path, then, now in
            zip(listed(inputs["teacher"]), listed(saved["teacher_sha256"]), listed(inputs["teacher_sha256"]))
            if then != now]


def resume_state(run_dir: Path, resume: bool, device, world: int, cfg: RunConfig, model_cfg: dict,
                  inputs: dict) -> dict | None:
    """last.pt when resuming, after checking that it can continue with this model and config."""
    last_path = Path(run_dir) / "last.pt"
    if not resume:
        return None
    if not last_path.exists():
        refuse_existing_run(run_dir, resume)  # before saying so: a folder of a user's own files is refused
        tqdm.write(f"--resume: {run_dir} holds no last.pt, so this run starts from scratch", file=sys.stderr)
        return None
    # every rank reads the same file; checkpoints hold the unwrapped model, as without DDP
    state = load_checkpoint(last_path)
    if state.get("world_size", 1) != world:  # before anything is written
        raise ValueError(f"{last_path} was trained by {state.get('world_size', 1)} process(es); resume it "
                         f"with the same number (torchrun --nproc_per_node), not {world}")
    saved = state.get("config", {})
    conflicts = changed_teachers(saved, inputs) + resume_conflicts(
        {k: v for k, v in saved.items() if k != "teacher_sha256"}, {**cfg.to_dict(), **inputs})
    if state["model_cfg"] != model_cfg:
        conflicts.insert(0, f"model_cfg: {state['model_cfg']} != {model_cfg}")
    if conflicts:
        raise ValueError(f"{last_path} cannot be resumed with these settings; they differ from the run's own: "
                         + "; ".join(conflicts))
    return state
