"""Tables of an equal-budget comparison (benchmarks/equal_budget.sh): per run, what each stage
reached and spent; per arm, the mean and spread of the shipped model's val F over seeds, and
the F1 of the classes the score loses most on.

Each arm's shipped model is scored afresh on val with flip TTA, and must match the val F its
checkpoint records (a mismatch is printed, not hidden).

    python benchmarks/equal_budget_table.py runs/eq38 [--data runs/eq38/data]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.data import load_split
from facekd.evaluation import evaluate

WATCHED = ["ear_r", "neck_l", "l_ear", "r_ear", "l_brow", "r_brow"]
RUN_NAME = re.compile(r"(?P<arm>[a-z_]+)_s(?P<seed>\d+)$")  # kd_image_s0 is arm kd_image, seed 0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def soft_target_seconds(run: Path) -> float | None:
    return read_json(run / "config.json").get("soft_targets", {}).get("seconds")


def describe(run: Path) -> dict:
    """Stage by stage: val F, params, wall seconds and epochs; which model the run ships."""
    summary = read_json(run / "summary.json")
    if not summary:  # a single training run ships itself
        result = read_json(run / "result.json")
        student = {"val_fscore": result.get("val_fscore"), "params": result.get("params"),
                   "wall_s": result.get("budget_spent_s"), "epochs": result.get("epochs")}
        return {"shipped": run, "total_s": result.get("budget_spent_s"),
                "stages": {"distill": {**student, "soft_targets_s": soft_target_seconds(run)}}}
    stages = {name: s for name, s in summary["stages"].items() if name in ("teacher", "distill", "prune")}
    for name, s in stages.items():
        s["soft_targets_s"] = soft_target_seconds(run / name)
    return {"shipped": run / summary["stages"]["solution"]["from"], "total_s": summary.get("total_wall_s"),
            "stages": stages}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder benchmarks/equal_budget.sh wrote")
    parser.add_argument("--data", type=Path, default=None, help="dataset root for val (default: OUT/data)")
    args = parser.parse_args()
    val = load_split(args.data or args.out / "data", "val", None)
    runs = sorted(d for d in args.out.iterdir() if d.is_dir() and RUN_NAME.match(d.name)
                  and any((d / f).is_file() for f in ("result.json", "summary.json")))  # not targets_distil_s0
    if not runs:
        raise SystemExit(f"{args.out}: no ARM_sSEED run folders in it")

    print("| run | stage | val F | params | wall min | epochs | soft targets min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    arms: dict[str, list[dict]] = {}
    for run in runs:
        info = describe(run)
        for name, s in info["stages"].items():
            targets = s.get("soft_targets_s")
            print(f"| {run.name} | {name} | {s['val_fscore']:.4f} | {s['params']:,} | {s['wall_s'] / 60:.1f} | "
                  f"{s.get('epochs', '')} | {'' if targets is None else f'{targets / 60:.1f}'} |")
        ckpt = load_checkpoint(info["shipped"] / "best.pt")
        model = load_model(ckpt, info["shipped"] / "best.pt")
        scored = evaluate(model, val, ckpt["model_cfg"]["input_size"], flip_tta=True)
        if abs(scored["fscore"] - ckpt["val_fscore"]) > 1e-6:
            print(f"  MISMATCH: {info['shipped']} records {ckpt['val_fscore']:.6f}, scores {scored['fscore']:.6f}")
        arms.setdefault(RUN_NAME.match(run.name)["arm"], []).append(
            {"run": run.name, "fscore": scored["fscore"], "per_class": scored["per_class"], "total_s": info["total_s"],
             "shipped": info["shipped"].name})

    print("\n| arm | seeds | shipped val F per seed | mean | spread (max − min) | total min per seed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arm, rows in arms.items():
        scores = [r["fscore"] for r in rows]
        per_seed = ", ".join(f"{r['fscore']:.4f} ({r['shipped']})" for r in rows)
        minutes = ", ".join(f"{r['total_s'] / 60:.1f}" for r in rows)
        print(f"| {arm} | {len(rows)} | {per_seed} | {statistics.mean(scores):.4f} | "
              f"{max(scores) - min(scores):.4f} | {minutes} |")

    print("\n| arm | " + " | ".join(WATCHED) + " |  (per-class val F1, mean over seeds)")
    print("| --- |" + " --- |" * len(WATCHED))
    for arm, rows in arms.items():
        cells = [statistics.mean(r["per_class"].get(c, 0.0) for r in rows) for c in WATCHED]
        print(f"| {arm} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
