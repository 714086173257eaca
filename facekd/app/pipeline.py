"""`facekd pipeline`: label audit -> teacher -> distilled student -> pruned and fine-tuned
student -> exported solution -> submission zip, each stage in its own sub-run of RUN.

The audit stage writes a copy of the data whose mirrored training masks are fixed
(facekd/audit.py) and every later stage trains on that copy; val and test are linked as they are.

A stage that finished (its result file exists) is skipped, and one that was killed resumes
from its last.pt, so re-running with --resume continues where a pipeline stopped.

With --budget MINUTES the training stages share the pipeline's wall time (BUDGET_SHARES);
summary.json records each stage's planned and actual time, epochs and images seen.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from compress.train import prune_and_finetune
from distill.train import distill
from facekd import distributed
from facekd.audit import audit_split, save_panel, write_fixed
from facekd.budget import Budget, BudgetError
from facekd.config import resolve_config
from facekd.inference import list_images
from facekd.app.export import export
from facekd.app.models import load_model
from facekd.app.report import write_report
from facekd.profile import model_cost
from facekd.app.submission import package
from teachers.train import train_teacher

# What the prune stage aims for, per preset: a fraction of the distilled student's params.
PRUNE_KEEP = {"smoke": 0.7, "cpu": 0.8, "gpu": 0.8}
# How a pipeline --budget is shared among the training stages, per preset. Each stage gets
# its share of what is left when it starts, so time one stage leaves unused goes to the next.
BUDGET_SHARES = {"smoke": {"teacher": 0.4, "student": 0.4, "pruned": 0.2},
                 "cpu": {"teacher": 0.45, "student": 0.4, "pruned": 0.15},
                 "gpu": {"teacher": 0.45, "student": 0.4, "pruned": 0.15}}


def _cost(checkpoint: Path) -> dict:
    model, ckpt = load_model(checkpoint)
    return {"val_fscore": ckpt.get("val_fscore"), **model_cost(model)}


def _tail_seconds(images, data_root, stages: dict) -> float:
    """What follows the last training stage will cost: run.py predicting the test images
    (two passes each with flip TTA, plus decoding and writing), and the report scoring the
    three models on val. Priced per image from the student's measured latency once it exists,
    so the estimate follows the machine; the last training stage is planned with it."""
    latency_s = stages.get("student", {}).get("latency_ms", 30.0) / 1000
    n_val = len(list((Path(data_root) / "val" / "masks").glob("*.png")))
    n_images = len(list_images(images)) + 3 * n_val
    return 10.0 + n_images * (2 * latency_s + 0.03)


def run_pipeline(data_root, out, preset: str = "smoke", images=None, config_file: str | None = None,
                 resume: bool = False, progress: bool = True, audit: bool = True,
                 budget_minutes: float | None = None, assignments: list[str] | None = None) -> dict:
    if distributed.is_distributed():
        # audit, export and packaging would run once per rank; the stages themselves are torchrun-ready
        raise ValueError("facekd pipeline runs as one process; under torchrun, run its stages "
                         "(train-teacher, distill, prune) one by one")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a pipeline; pass --resume to continue it or choose another --out")
    if images is None:
        test_images = Path(data_root) / "test" / "images"
        images = test_images if test_images.is_dir() else Path(data_root) / "val" / "images"
    configs = {name: resolve_config(name, preset, config_file, assignments) for name in ("teacher", "distill", "prune")}
    budget = Budget(budget_minutes) if budget_minutes is not None else None
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"preset": preset, "stages": {}}
    stages = summary["stages"]
    if budget is not None:
        summary["budget_s"] = budget.seconds
        # a resumed pipeline has already spent what its finished stages took
        budget.resume(sum(s["wall_s"] for s in stages.values()), None)

    def stage_config(name: str, stage: str):
        """The stage's config, with its share of what is left of the pipeline's budget."""
        cfg = configs[stage]
        if budget is None:
            return cfg, None
        planned = summary.setdefault("planned_s", {})
        if name not in planned:  # a resumed stage keeps the budget it started with
            shares = BUDGET_SHARES[preset]
            later = [n for n in shares if n not in stages]
            left = budget.left() - _tail_seconds(images, data_root, stages)
            planned[name] = left * shares[name] / sum(shares[n] for n in later)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        if planned[name] <= 0:
            raise BudgetError(f"the pipeline's budget of {budget.seconds / 60:g} min is spent before its {name} stage")
        return dataclasses.replace(cfg, budget_minutes=planned[name] / 60), planned[name]

    def stage(name: str, fn, checkpoint: str | None = "best.pt"):
        """Run fn unless the stage already finished; record its cost and wall time."""
        if name in stages:
            tqdm.write(f"[pipeline] {name}: done earlier, skipped")
            return
        tqdm.write(f"[pipeline] {name}: starting" + (f" ({budget.describe()})" if budget else ""))
        t0 = time.time()
        info = fn() or {}
        if checkpoint:
            info.update(_cost(out / name / checkpoint))
        stages[name] = {"wall_s": time.time() - t0, **info}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    def trained(result: dict, planned_s: float | None) -> dict:
        return {"planned_s": planned_s, "epochs": result["epochs"], "images_seen": result["images_seen"]}

    teacher_ckpt, student_ckpt = out / "teacher" / "best.pt", out / "student" / "best.pt"

    def audit_stage():
        report = audit_split(data_root, "train", progress=progress)
        fixed = out / "audit" / "data"
        if fixed.exists():  # a killed earlier attempt; the copy is cheap to redo
            shutil.rmtree(fixed)
        write_fixed(report, fixed)
        panel = save_panel(report, out / "audit" / "flagged.png")
        return {"data": str(fixed), "mirrored": report["mirrored"], "inconsistent": report["inconsistent"],
                "panel": str(panel) if panel else None}

    if audit:
        stage("audit", audit_stage, checkpoint=None)
        data_root = out / "audit" / "data"

    def teacher_stage():
        cfg, planned = stage_config("teacher", "teacher")
        return trained(train_teacher(cfg, data_root, out / "teacher", resume=resume, progress=progress), planned)

    def student_stage():
        cfg, planned = stage_config("student", "distill")
        return trained(distill(cfg, data_root, out / "student", teacher_ckpt, resume=resume, progress=progress),
                       planned)

    def prune_stage():
        cfg, planned = stage_config("pruned", "prune")
        target = int(stages["student"]["params"] * PRUNE_KEEP[preset])
        result = prune_and_finetune(cfg, data_root, out / "pruned", student_ckpt, teacher_ckpt, target_params=target,
                                    resume=resume, progress=progress)
        return {"target_params": target, "pruning": result["report"]["pruning"], **trained(result, planned)}

    def export_stage():
        # ship the better of the two students by validation F-score
        best = max(("student", "pruned"), key=lambda n: stages[n]["val_fscore"] or 0)
        return {"from": best, **export(out / best / "best.pt", out / "solution")}

    stage("teacher", teacher_stage)
    stage("student", student_stage)
    stage("pruned", prune_stage)
    stage("solution", export_stage, checkpoint=None)

    def package_stage():
        report = package(images, out / "solution", out / "submission.zip")
        if not report.ok:
            raise ValueError("submission check failed:\n" + "\n".join(report.faults))
        return {"images": str(images), "masks": report.masks, "zip": str(out / "submission.zip")}

    stage("package", package_stage, checkpoint=None)
    # the page to open when it is done: every model, its curves, its worst images
    stage("report", lambda: {"page": str(write_report([out], out / "report", data_root, progress=progress))},
          checkpoint=None)
    summary["total_wall_s"] = sum(s["wall_s"] for s in stages.values())
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
