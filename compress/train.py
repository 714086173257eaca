"""`facekd prune`: prune a trained student to a target, then fine-tune it through the
distillation stage (same engine, same losses, teacher optional). `facekd finetune` is the
second half alone: it continues a trained student as it is.

prune_report.json holds each stage's params, MACs and val F (before, after pruning, after
fine-tuning). Their latencies are timed once fine-tuning is done, the three models side by
side by facekd.latency's one measurement, so that they can be compared with each other."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch.nn.functional as F

from compress.prune import (FLAGS, IMPORTANCES, KINDS, RECORDED_AS, PruneSettings, PruneTarget, check_targets,
                            prune_fastest_rounding, rebuild)
from distill.teacher import frozen_teacher
from distill.train import train_student
from facekd import distributed
from facekd.checkpoint import file_sha256, save_checkpoint
from facekd.files import load_checkpoint
from facekd.budget import Budget
from facekd.config import RunConfig
from facekd.cpu_kernels import safe_conv_backward
from facekd.data import load_split
from facekd.evaluation import evaluate
from facekd.inference import normalize
from facekd.latency import THREADS, latency_record
from facekd.models import build_model, load_model
from facekd.profile import model_cost
from facekd.run_folder import (RUN_FILES, EventWriter, refuse_existing_run, removed_if_budget_refused,
                               run_folder_lock)

# What pruning writes before fine-tuning: a user's own files of these names mark the folder too.
PRUNE_FILES = ("pruned.pt", "prune_report.json")


def taylor_gradients(data_root, size: int = 256, n: int = 16):
    """Gradients of the CE loss on a few training images, for Taylor importance."""
    split = load_split(data_root, "train", size, limit=n, show_progress=False)

    def gradient_fn(model):
        # Eval mode, not train mode with the buffers saved and restored: Taylor importance
        # estimates how the loss of the deployed network (BatchNorm on its running statistics)
        # changes when a channel goes. Batch statistics would differentiate another function,
        # in which BatchNorm cancels any rescaling of the conv before it, and a train-mode
        # forward would also move the running statistics the "after pruning" score is measured on.
        was_training = model.training
        model.eval()
        try:
            with safe_conv_backward(len(split), "cpu"):  # a train split of 15 images is an odd batch
                logits = model(normalize(split.images))
                logits = F.interpolate(logits, size=split.masks.shape[-2:], mode="bilinear", align_corners=False)
                F.cross_entropy(logits, split.masks.long()).backward()
        finally:
            model.train(was_training)
    return gradient_fn


STAGES = ("before", "after_pruning", "after_finetune")


def measure(model, val, input_size: int, flip_tta: bool) -> dict:
    """A stage's params, MACs and val F; time_stages adds its latency beside the other stages'."""
    return {**model_cost(model, latency=False), "val_fscore": evaluate(model, val, input_size, flip_tta)["fscore"]}


def time_stages(report: dict, models: dict, threads: int) -> None:
    """Time the stages' models side by side at the student's input size (interleaved rounds
    at 1 and 2 threads, and at `threads` if another); set report["latency"] to the record and
    each stage's latency_ms to its median at `threads`, the count its target was timed at."""
    record = latency_record(models, report["before"]["size"], tuple(sorted({*THREADS, threads})))
    for stage in models:
        report[stage]["latency_ms"] = record["threads"][str(threads)]["models"][stage]["median_ms"]
    report["latency"] = record


def closing_lines(report: dict, out) -> list[str]:
    """What `facekd prune` prints when done: the cut, the scores and latencies of the three
    stages, and where the rest is. prune_report.json (or --json) holds every figure (issue 34:
    printing it all was about 170 lines)."""
    target = PruneTarget.from_record(report["target"])
    stages = [report[stage] for stage in STAGES]
    return [f"pruned {report['source']} to {target.flag} {target.value:,}: {stages[0]['params']:,} -> "
            f"{stages[1]['params']:,} params in {report['pruning']['steps']} step(s)",
            "val F " + ", ".join(f"{s['val_fscore']:.4f} {name}" for s, name in
                                 zip(stages, ("before", "pruned", "fine-tuned"))),
            f"latency at {stages[0]['size']}x{stages[0]['size']}, {target.threads} thread(s): "
            + " -> ".join(f"{s['latency_ms']:.2f}" for s in stages) + " ms (medians)",
            f"wrote {Path(out) / 'best.pt'}; every figure is in {Path(out) / 'prune_report.json'} (--json prints it)"]


def log_stages(out: Path, report: dict) -> None:
    """The report's stages in TensorBoard, as steps 0, 1 and 2 of prune/<metric>."""
    writer = EventWriter(out)
    for step, stage in enumerate(STAGES):
        for metric in ("params", "macs", "latency_ms", "val_fscore"):
            writer.add_scalar(f"prune/{metric}", report[stage][metric], step)
    writer.close()


def _load(path):
    return load_model(load_checkpoint(path), path)


def prune_and_finetune(cfg: RunConfig, data_root, out, student_path, teacher_path, target: PruneTarget,
                       settings: PruneSettings = PruneSettings(), *, resume: bool = False,
                       show_progress: bool = True) -> dict:
    """Prune student_path to `target` (a latency: one image at its input size on target.threads
    threads) in out/pruned.pt, then fine-tune it in out; returns train_student's result with the
    prune report."""
    budget = Budget.from_minutes(cfg.budget_minutes)  # pruning and its measurements count too
    out = Path(out)
    frozen_teacher(teacher_path)  # an unsafe, foreign or mis-sized teacher is refused before pruning, not after
    distributed.setup()  # under torchrun, for the barriers below
    with run_folder_lock(out, enabled=distributed.is_main()), removed_if_budget_refused(out):
        model, model_cfg, report = _pruned_model(cfg, data_root, out, student_path, target, settings, resume,
                                                 show_progress)
        result = train_student(cfg, data_root, out, teacher_path, resume, show_progress=show_progress, model=model,
                               model_cfg=model_cfg, stage="prune", budget=budget)
    report_path = out / "prune_report.json"
    # a finished run resumed is a no-op: its report, timings and TensorBoard points stand
    if distributed.is_main() and "after_finetune" not in report:
        best = load_checkpoint(out / "best.pt")
        tuned = load_model(best, out / "best.pt")
        report["after_finetune"] = {**model_cost(tuned, latency=False), "val_fscore": best["val_fscore"]}
        models = {"before": _load(student_path), "after_pruning": _load(out / "pruned.pt"), "after_finetune": tuned}
        time_stages(report, models, target.threads)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        log_stages(out, report)
    distributed.barrier()
    if not distributed.is_main():
        report = json.loads(report_path.read_text())
    return {**result, "report": report}


def _pruned_model(cfg: RunConfig, data_root, out: Path, student_path, target: PruneTarget,
                  settings: PruneSettings, resume: bool, show_progress: bool) -> tuple:
    """(model, model_cfg, report): the student pruned here, or when resuming a run whose
    architecture was already cut, rebuilt from last.pt's plain config."""
    report_path = out / "prune_report.json"
    if resume and (out / "last.pt").exists():
        report = resumable_report(out, student_path, target, settings)
        model_cfg = load_checkpoint(out / "last.pt")["model_cfg"]
        model = build_model(model_cfg, allow_over_budget=True)  # last.pt's weights come back in fit
        return model, model_cfg, report
    refuse_existing_run(out, resume, RUN_FILES + PRUNE_FILES)
    # Under torchrun rank 0 alone prunes and the others rebuild its result from pruned.pt:
    # Taylor importance comes from gradients, which need not agree bit for bit across
    # GPUs, and one differing channel choice would give the ranks different models.
    if distributed.is_main():
        pruned = _prune(cfg, data_root, out, student_path, target, settings, show_progress)
    distributed.barrier()
    if distributed.is_main():
        return pruned
    pruned = load_checkpoint(out / "pruned.pt")
    model = load_model(pruned, out / "pruned.pt")
    return model, pruned["model_cfg"], json.loads(report_path.read_text())


# prune_report.json's "target" keys -> the flags that set them, for --resume to name a change
TARGET_FLAGS = {**{RECORDED_AS[kind]: FLAGS[kind] for kind in KINDS}, "threads": "--threads"}


def resumable_report(out: Path, student_path, target: PruneTarget, settings: PruneSettings) -> dict:
    """The prune report of the run in `out` that --resume continues. Refused, before anything is
    written: a last.pt that is not a prune run's (a distill run's folder: pruning wrote pruned.pt
    and prune_report.json into it before fit refused it), and a student, target or pruning
    setting other than the run's own, which the run would ignore while rewriting its config.json
    and result.json as if it had used them."""
    report_path = out / "prune_report.json"
    if not report_path.is_file():
        stage = load_checkpoint(out / "last.pt").get("stage", "unknown")
        raise ValueError(f"--resume: {out} holds a {stage} run's last.pt but no prune_report.json, so prune cannot "
                         "continue it; choose another --out")
    report = json.loads(report_path.read_text())
    shown = lambda value: "unset" if value is None else repr(value)
    saved, new = report["target"], target.record()
    conflicts = [f"{TARGET_FLAGS[key]}: {shown(saved.get(key))} != {shown(new[key])}"
                 for key in TARGET_FLAGS if saved.get(key) != new[key]]
    pruning = report["pruning"]
    if pruning["importance"] != settings.importance:
        conflicts.append(f"--importance: {pruning['importance']!r} != {settings.importance!r}")
    if settings.round_to != "auto" and pruning["round_to"] != settings.round_to:  # auto accepts what it chose
        conflicts.append(f"--round-to: {pruning['round_to']} != {settings.round_to}")
    conflicts = _changed_student(report, student_path) + conflicts
    if conflicts:
        raise ValueError(f"{out / 'last.pt'} cannot be resumed with these settings; they differ from the run's own "
                         f"({report_path.name}): " + "; ".join(conflicts))
    return report


def _changed_student(report: dict, student_path) -> list[str]:
    """A conflict when --checkpoint is not the student the run pruned: by content where the report
    holds its hash and the file is there to hash, else by path."""
    if "source_sha256" in report and Path(student_path).is_file():
        if file_sha256(student_path) == report["source_sha256"]:
            return []
        return [f"--checkpoint {student_path}: not the student this run pruned ({report['source']}, sha256 "
                f"{report['source_sha256'][:12]}...)"]
    same = Path(report["source"]).resolve() == Path(student_path).resolve()
    return [] if same else [f"--checkpoint: {report['source']!r} != {str(student_path)!r}"]


def finetune(cfg: RunConfig, data_root, out, student_path, teacher_path, resume: bool = False,
             show_progress: bool = True) -> dict:
    """Continue training a student checkpoint (pruned or not) with the prune stage's config,
    under the teacher or, with teacher_path None or 'none', from labels alone."""
    ckpt = load_checkpoint(student_path)
    model = load_model(ckpt, student_path, student_for="fine-tune")
    return train_student(cfg, data_root, out, teacher_path, resume, show_progress=show_progress, model=model,
                         model_cfg=ckpt["model_cfg"], stage="finetune")


def _prune(cfg: RunConfig, data_root, out: Path, student_path, target: PruneTarget, settings: PruneSettings,
           show_progress: bool) -> tuple:
    """Prune the student, save pruned.pt and prune_report.json; returns (model, model_cfg, report)."""
    ckpt = load_checkpoint(student_path)
    student = load_model(ckpt, student_path, student_for="prune")
    # before the search, which ran to its end on a target at or above the student's size and failed
    # after it on one at or below zero
    check_targets(student, target.kind, [target.value], target.threads, student_path, settings.bounds)
    input_size = ckpt["model_cfg"]["input_size"]
    val = load_split(data_root, "val", None, show_progress=show_progress)
    before = measure(student, val, input_size, cfg.flip_tta)
    gradient_fn = taylor_gradients(data_root) if IMPORTANCES[settings.importance].needs_gradients else None
    model, pruning = prune_fastest_rounding(copy.deepcopy(student), target, round_to=settings.round_to,
                                            importance=settings.importance, gradient_fn=gradient_fn)
    model, model_cfg = rebuild(model)
    after = measure(model, val, input_size, cfg.flip_tta)
    report = {"source": str(student_path), "source_sha256": file_sha256(student_path),  # what --resume compares
              "target": target.record(), "pruning": pruning, "before": before, "after_pruning": after}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_cfg": model_cfg, "stage": "pruned",
                     "val_fscore": after["val_fscore"], "params": after["params"]}, out / "pruned.pt")
    (out / "prune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return model, model_cfg, report
