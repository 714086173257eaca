"""`facekd prune --sweep`: one student pruned to each of several targets, each pruned and
fine-tuned into its own sub-run by `prune_and_finetune`, and the results gathered in
sweep.json, so the cost of every size can be read off one table.

Every target is checked before anything is written: it must lie below the student's own
size and no lower than the floor a target search can reach (every layer cut by MAX_RATIO).
A sub-run that finished is skipped, so `--resume` continues a killed sweep.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from compress.prune import MAX_RATIO, prune_to_target
from compress.train import prune_and_finetune
from distill.soft_targets import offline_soft_targets, stored_size
from distill.teacher import load_teacher, teacher_paths, teacher_record
from facekd import distributed
from facekd.checkpoint import load_checkpoint
from facekd.models import load_model
from facekd.config import RunConfig
from facekd.run_folder import removed_if_budget_refused, run_folder_lock

# sweep kind -> prune_and_finetune's keyword for one target of that kind
KINDS = {"params": "target_params", "macs": "target_macs", "ratio": "ratio"}


def run_name(kind: str, value) -> str:
    return f"{kind}_{value:g}" if kind == "ratio" else f"{kind}_{value}"


def check_targets(student_path, kind: str, targets: list) -> dict:
    """The student's size and the smallest reachable size, {"student_size", "floor"} (empty
    for ratios); a ValueError names the first target that is above the one or below the other."""
    flag = "--ratio" if kind == "ratio" else f"--target-{kind}"
    if kind not in KINDS:
        raise ValueError(f"unknown sweep kind {kind!r}; choose from {sorted(KINDS)}")
    if not targets:
        raise ValueError(f"{flag}: give at least one target")
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ValueError(f"{flag}: {twice[0]} is listed twice")
    model = load_model(load_checkpoint(student_path), student_path, student_for="sweep")
    if kind == "ratio":
        bad = [r for r in targets if not 0 < r < 1]
        if bad:
            raise ValueError(f"--ratio {bad[0]:g}: a pruning ratio must be in (0, 1)")
        return {}
    # The target search runs the MAX_RATIO schedule and stops early; the widths each step
    # leaves do not depend on the importance, so the whole schedule gives the floor exactly.
    deepest = prune_to_target(model, ratio=MAX_RATIO)
    size = {"params": deepest["params_before"], "macs": deepest["macs_before"]}
    floor = {"params": deepest["params_after"], "macs": deepest["macs_after"]}
    for t in targets:
        if t >= size[kind]:
            raise ValueError(f"{flag} {t:,}: not below the student's own {size[kind]:,} {kind} ({student_path})")
        if t < floor[kind]:
            raise ValueError(f"{flag} {t:,}: unreachable; cutting every layer by {MAX_RATIO:.0%} leaves "
                             f"{floor[kind]:,} {kind} ({student_path})")
    return {"student_size": size, "floor": floor, "macs_at": deepest["macs_at"]}


def _finished(report_path: Path) -> dict | None:
    """The sub-run's prune report once fine-tuning has finished, else None."""
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    return report if "after_finetune" in report else None


def _row(kind: str, value, run: Path, report: dict) -> dict:
    tuned = report["after_finetune"]
    return {"target": value, "run": run.name, "params": tuned["params"],
            # MACs at the challenge's 512x512, as pruning counted them; latency at the
            # resolution the model predicts at, which is what it costs when deployed
            "macs": report["pruning"]["macs_after"], "latency_ms": tuned["latency_ms"], "latency_at": tuned["size"],
            "val_fscore_pruned": report["after_pruning"]["val_fscore"], "val_fscore_finetuned": tuned["val_fscore"]}


def sweep(cfg: RunConfig, data_root, out, student_path, teacher_path, *, kind: str, targets: list,
          importance: str = "magnitude", resume: bool = False, progress: bool = True) -> dict:
    """Prune and fine-tune student_path to each target in out/<kind>_<target>; returns sweep.json's content."""
    if distributed.is_distributed():
        raise ValueError("facekd prune --sweep runs as one process; under torchrun, prune one target at a time")
    out = Path(out)
    sweep_path = out / "sweep.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and sweep_path.exists():
        previous = json.loads(sweep_path.read_text())
        if (previous["student"], previous["kind"]) != (str(student_path), kind):
            raise ValueError(f"{sweep_path}: is a sweep of {previous['kind']} from {previous['student']}, "
                             f"not of {kind} from {student_path}")
    bounds = check_targets(student_path, kind, targets)
    teacher, _ = load_teacher(teacher_path)  # an unsafe or foreign teacher is refused before any pruning
    distils = teacher is not None
    if cfg.distill_mode == "offline" and not cfg.soft_target_cache and distils:
        # every target is fine-tuned on the same teacher maps: compute them once for the sweep
        cfg = dataclasses.replace(cfg, soft_target_cache=str(out / "soft_targets"))
    record = {"student": str(student_path), "teacher": teacher_record(teacher_path), "kind": kind,
              "importance": importance, **bounds, "targets": []}
    # a budget refused at the first target leaves nothing; finished targets are kept for --resume
    with run_folder_lock(out), removed_if_budget_refused(out, keep=lambda: bool(record["targets"])):
        if cfg.soft_target_cache and distils:
            # fill the cache before the first target, so that under --budget every target gets
            # the same time to fine-tune rather than the first paying for the teacher's pass
            offline_soft_targets(cfg, teacher, teacher_paths(teacher_path), data_root,
                                 stored_size(cfg, load_model(load_checkpoint(student_path), student_path)), progress)
        del teacher  # the targets load it again, each in its own run
        # largest model first: the mildest cut, and the first row a reader compares with the student
        for value in tqdm(sorted(targets, reverse=kind != "ratio"), desc="sweep", disable=not progress):
            run = out / run_name(kind, value)
            report = _finished(run / "prune_report.json") if resume else None
            if report is not None:
                tqdm.write(f"[sweep] {run.name}: done earlier, skipped")
            else:
                tqdm.write(f"[sweep] {run.name}: starting")
                report = prune_and_finetune(cfg, data_root, run, student_path, teacher_path, importance=importance,
                                            resume=resume, progress=progress, **{KINDS[kind]: value})["report"]
            record["student_val_fscore"] = report["before"]["val_fscore"]
            record["targets"].append(_row(kind, value, run, report))
            sweep_path.write_text(json.dumps(record, indent=2) + "\n")  # after each target, for a sweep killed later
    return record


def format_table(record: dict) -> str:
    lines = [f"sweep of {record['kind']} from {record['student']} (val F {record['student_val_fscore']:.4f})",
             f"{'run':<18} {'params':>10} {'MACs@512':>14} {'latency ms':>11} {'F pruned':>9} {'F tuned':>9}"]
    for r in record["targets"]:
        lines.append(f"{r['run']:<18} {r['params']:>10,} {r['macs']:>14,} {r['latency_ms']:>11.1f} "
                     f"{r['val_fscore_pruned']:>9.4f} {r['val_fscore_finetuned']:>9.4f}")
    return "\n".join(lines)
