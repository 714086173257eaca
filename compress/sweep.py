"""`facekd prune --sweep`: one student pruned to each of several targets, each pruned and
fine-tuned into its own sub-run by `prune_and_finetune`, and the results gathered in
sweep.json, so the cost of every size can be read off one table.

Every target is checked before anything is written: it must lie below the student's own
size and no lower than the floor a target search can reach (every layer cut by MAX_RATIO).
A sub-run that finished is skipped, so `--resume` continues a killed sweep.

Once every target is done, the student and every fine-tuned model are timed side by side
(facekd.latency: interleaved rounds at 1 and 2 threads) and sweep.json gets each model's
latency spread and the rank correlation of latency with MACs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from compress.prune import PruneSettings, PruneTarget, check_targets
from compress.train import prune_and_finetune
from distill.soft_targets import offline_soft_targets, stored_size
from distill.teacher import frozen_teacher, teacher_paths, teacher_record
from facekd import distributed
from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.challenge import count_params
from facekd.config import RunConfig
from facekd.latency import latency_record, spearman
from facekd.profile import count_macs
from facekd.run_folder import removed_if_budget_refused, run_folder_lock


def run_name(target: PruneTarget) -> str:
    value = f"{target.value:g}" if isinstance(target.value, float) else target.value
    return f"{target.kind}_{value}"


def check_sweep_targets(student_path, kind: str, targets: list, threads: int = 1) -> dict:
    """compress.prune.check_targets on the student in `student_path`: its size and the smallest
    reachable size, {"student_size", "floor"} (empty for ratios; for latency, both timed side by
    side at `threads`); a ValueError names the first target that cannot be pruned to."""
    model = load_model(load_checkpoint(student_path), student_path, student_for="sweep")
    return check_targets(model, kind, targets, threads, student_path)


def _finished(report_path: Path) -> dict | None:
    """The sub-run's prune report once fine-tuning has finished, else None."""
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    return report if "after_finetune" in report else None


def _row(target: PruneTarget, run: Path, report: dict) -> dict:
    tuned = report["after_finetune"]
    return {"target": target.value, "run": run.name, "params": tuned["params"],
            # MACs at the challenge's 512x512, as pruning counted them; latency at the input
            # size, from the side-by-side timing once the whole sweep is done (time_sweep)
            "macs": report["pruning"]["macs_after"], "round_to": report["pruning"]["round_to"],
            "val_fscore_pruned": report["after_pruning"]["val_fscore"], "val_fscore_finetuned": tuned["val_fscore"]}


def _load(path):
    return load_model(load_checkpoint(path), path)


def time_sweep(record: dict, out: Path, student_path, macs_at: int) -> None:
    """Time the student and every target's best.pt side by side, at the student's input size;
    fill in each row's latency (median at 1 thread in latency_ms, every spread in latency) and
    the Spearman correlation of latency with MACs (at macs_at) at each thread count, over the
    targets and the student."""
    student = _load(student_path)
    models = {"student": student, **{r["run"]: _load(out / r["run"] / "best.pt") for r in record["targets"]}}
    timed = latency_record(models, student.input_size)
    record["student_params"], record["student_macs"] = count_params(student), count_macs(student, macs_at)
    macs = {"student": record["student_macs"], **{r["run"]: r["macs"] for r in record["targets"]}}
    for n, at in timed["threads"].items():
        at["spearman_latency_macs"] = spearman([macs[m] for m in models],
                                               [at["models"][m]["median_ms"] for m in models])
    for r in record["targets"]:
        r["latency"] = {n: at["models"][r["run"]] for n, at in timed["threads"].items()}
        r["latency_ms"] = r["latency"]["1"]["median_ms"]
    record["latency"] = timed


def sweep(cfg: RunConfig, data_root, out, student_path, teacher_path, *, kind: str, targets: list, threads: int = 1,
          settings: PruneSettings = PruneSettings(), resume: bool = False, show_progress: bool = True) -> dict:
    """Prune and fine-tune student_path to each target (values of one `kind`, latencies timed on
    `threads` threads) in out/<kind>_<target>; returns sweep.json's content."""
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
    bounds = check_sweep_targets(student_path, kind, targets, threads)
    teacher, _ = frozen_teacher(teacher_path)  # an unsafe or foreign teacher is refused before any pruning
    distils = teacher is not None
    if cfg.distill_mode == "offline" and not cfg.soft_target_cache and distils:
        # every target is fine-tuned on the same teacher maps: compute them once for the sweep
        cfg = dataclasses.replace(cfg, soft_target_cache=str(out / "soft_targets"))
    record = {"student": str(student_path), "teacher": teacher_record(teacher_path), "kind": kind,
              "importance": settings.importance, **bounds, "targets": []}
    # a budget refused at the first target leaves nothing; finished targets are kept for --resume
    with run_folder_lock(out), removed_if_budget_refused(out, keep=lambda: bool(record["targets"])):
        if cfg.soft_target_cache and distils:
            # fill the cache before the first target, so that under --budget every target gets
            # the same time to fine-tune rather than the first paying for the teacher's pass
            offline_soft_targets(cfg, teacher, teacher_paths(teacher_path), data_root,
                                 stored_size(cfg, _load(student_path)), show_progress)
        del teacher  # the targets load it again, each in its own run
        # each target's own check reuses the bounds found above, rather than pruning (and timing) again
        settings = dataclasses.replace(settings, bounds=bounds)
        # largest model first: the mildest cut, and the first row a reader compares with the student
        in_order = [PruneTarget(kind, value, threads) for value in sorted(targets, reverse=kind != "ratio")]
        macs_at = _sweep_targets(cfg, data_root, out, student_path, teacher_path, in_order, settings, record,
                                 resume, show_progress)
        time_sweep(record, out, student_path, macs_at)
        sweep_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _sweep_targets(cfg: RunConfig, data_root, out: Path, student_path, teacher_path, targets: list[PruneTarget],
                   settings: PruneSettings, record: dict, resume: bool, show_progress: bool) -> int:
    """Prune and fine-tune each target in turn, writing sweep.json after each; returns the size
    MACs and latencies are taken at."""
    for target in tqdm(targets, desc="sweep", disable=not show_progress):
        run = out / run_name(target)
        report = _finished(run / "prune_report.json") if resume else None
        if report is not None:
            tqdm.write(f"[sweep] {run.name}: done earlier, skipped")
        else:
            tqdm.write(f"[sweep] {run.name}: starting")
            report = prune_and_finetune(cfg, data_root, run, student_path, teacher_path, target, settings,
                                        resume=resume, show_progress=show_progress)["report"]
        record["student_val_fscore"] = report["before"]["val_fscore"]
        record["targets"].append(_row(target, run, report))
        # after each target, for a sweep killed later
        (out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    return report["pruning"]["macs_at"]

def format_table(record: dict) -> str:
    lines = [f"sweep of {record['kind']} from {record['student']} (val F {record['student_val_fscore']:.4f})",
             f"{'run':<18} {'params':>10} {'MACs@512':>14} {'ms, 1 thread':>13} {'ms, 2 threads':>14} "
             f"{'F pruned':>9} {'F tuned':>9}"]
    timed = record["latency"]["threads"]
    for name, r in [("student", None), *((r["run"], r) for r in record["targets"])]:
        ms = [f"{timed[n]['models'][name]['median_ms']:.1f}±{_half_iqr(timed[n]['models'][name]):.1f}"
              for n in ("1", "2")]
        size = (r["params"], r["macs"]) if r else (record["student_params"], record["student_macs"])
        scores = (r["val_fscore_pruned"], r["val_fscore_finetuned"]) if r else (record["student_val_fscore"],) * 2
        lines.append(f"{name:<18} {size[0]:>10,} {size[1]:>14,} {ms[0]:>13} {ms[1]:>14} "
                     f"{scores[0]:>9.4f} {scores[1]:>9.4f}")
    size = record["latency"]["size"]
    lines.append(f"latency: median±half the IQR over {record['latency']['runs']} interleaved runs at {size}x{size}; "
                 + ", ".join(f"Spearman with MACs {timed[n]['spearman_latency_macs']:.2f} at {n} thread(s), matmul "
                             f"{timed[n]['matmul_gflops']:.0f} GFLOP/s" for n in ("1", "2")))
    return "\n".join(lines)


def _half_iqr(s: dict) -> float:
    return (s["q3_ms"] - s["q1_ms"]) / 2
