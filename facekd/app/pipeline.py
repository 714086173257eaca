"""`facekd pipeline`: label audit -> teacher -> distilled student -> pruned and fine-tuned
student -> exported solution -> submission zip, each stage in its own sub-run of RUN.

The audit stage writes a copy of the data whose mirrored training masks are fixed
(facekd/audit.py) and every later stage trains on that copy; val and test are linked as they are.

A stage that finished (its result file exists) is skipped, and one that was killed resumes
from its last.pt, so re-running with --resume continues where a pipeline stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from compress.train import prune_and_finetune
from distill.train import distill
from facekd import distributed
from facekd.audit import audit_split, save_panel, write_fixed
from facekd.config import resolve_config
from facekd.app.export import export
from facekd.app.models import load_model
from facekd.profile import model_cost
from facekd.app.submission import package
from teachers.train import train_teacher

# What the prune stage aims for, per preset: a fraction of the distilled student's params.
PRUNE_KEEP = {"smoke": 0.7, "cpu": 0.8, "gpu": 0.8}


def _cost(checkpoint: Path) -> dict:
    model, ckpt = load_model(checkpoint)
    return {"val_fscore": ckpt.get("val_fscore"), **model_cost(model)}


def run_pipeline(data_root, out, preset: str = "smoke", images=None, config_file: str | None = None,
                 resume: bool = False, progress: bool = True, audit: bool = True) -> dict:
    if distributed.is_distributed():
        # audit, export and packaging would run once per rank; the stages themselves are torchrun-ready
        raise ValueError("facekd pipeline runs as one process; under torchrun, run its stages "
                         "(train-teacher, distill, prune) one by one")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a pipeline; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"preset": preset, "stages": {}}
    stages = summary["stages"]

    def stage(name: str, fn, checkpoint: str | None = "best.pt"):
        """Run fn unless the stage already finished; record its cost and wall time."""
        if name in stages:
            tqdm.write(f"[pipeline] {name}: done earlier, skipped")
            return
        tqdm.write(f"[pipeline] {name}: starting")
        t0 = time.time()
        info = fn() or {}
        record = {"wall_s": time.time() - t0, **info}
        if checkpoint:
            record.update(_cost(out / name / checkpoint))
        stages[name] = record
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

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
        train_teacher(resolve_config("teacher", preset, config_file), data_root, out / "teacher",
                      resume=resume, progress=progress)

    def student_stage():
        distill(resolve_config("distill", preset, config_file), data_root, out / "student", teacher_ckpt,
                resume=resume, progress=progress)

    def prune_stage():
        target = int(stages["student"]["params"] * PRUNE_KEEP[preset])
        result = prune_and_finetune(resolve_config("prune", preset, config_file), data_root, out / "pruned",
                                    student_ckpt, teacher_ckpt, target_params=target, resume=resume,
                                    progress=progress)
        return {"target_params": target, "pruning": result["report"]["pruning"]}

    def export_stage():
        # ship the better of the two students by validation F-score
        best = max(("student", "pruned"), key=lambda n: stages[n]["val_fscore"] or 0)
        return {"from": best, **export(out / best / "best.pt", out / "solution")}

    stage("teacher", teacher_stage)
    stage("student", student_stage)
    stage("pruned", prune_stage)
    stage("solution", export_stage, checkpoint=None)
    if images is None:
        test_images = Path(data_root) / "test" / "images"
        images = test_images if test_images.is_dir() else Path(data_root) / "val" / "images"

    def package_stage():
        report = package(images, out / "solution", out / "submission.zip")
        if not report.ok:
            raise ValueError("submission check failed:\n" + "\n".join(report.faults))
        return {"images": str(images), "masks": report.masks, "zip": str(out / "submission.zip")}

    stage("package", package_stage, checkpoint=None)
    summary["total_wall_s"] = sum(s["wall_s"] for s in stages.values())
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
