"""facekd's first run on a GPU, sized to fit a 9-minute lease end to end: the `gpu` preset's
teacher at 512² for --teacher-minutes, then a student distilled from it online for
--student-minutes. Prints images/s and each model's val F, writes `gpu_first_run.json`, and
splits each best.pt into pieces of at most 16 MiB (a device's file limit); join them with
`cat NAME.pt.part* > NAME.pt`.

    python benchmarks/gpu_first_run.py --data data/celebamask-mini --out $OUT        # on one CUDA GPU
    python benchmarks/gpu_first_run.py --dry-run --out /tmp/gpu_dry                   # CPU, smoke preset, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.train import train_student
from facekd.config import resolve_config
from facekd.data import SAMPLE_DATA
from teachers.train import train_teacher

PIECE_BYTES = 16 * 2**20


def split_file(path: Path, piece_bytes: int = PIECE_BYTES) -> list[Path]:
    """Cut `path` into path.part000, .part001, ... of at most piece_bytes each; remove the whole."""
    data, pieces = path.read_bytes(), []
    for i, start in enumerate(range(0, len(data), piece_bytes)):
        piece = path.with_name(f"{path.name}.part{i:03d}")
        piece.write_bytes(data[start:start + piece_bytes])
        pieces.append(piece)
    path.unlink()
    return pieces


def stage_summary(name: str, result: dict) -> dict:
    images_per_s = result["images_seen"] / max(result["train_seconds"], 1e-9)
    print(f"{name}: val F {result['val_fscore']:.4f}, {result['params']:,} params, {result['images_seen']} images "
          f"in {result['train_seconds']:.0f} s = {images_per_s:.1f} images/s, precision {result['precision']}",
          flush=True)
    return {"val_fscore": result["val_fscore"], "params": result["params"], "images_seen": result["images_seen"],
            "train_seconds": result["train_seconds"], "images_per_s": images_per_s, "precision": result["precision"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset root (default: the embedded sample)")
    parser.add_argument("--out", required=True, help="folder for the runs, the pieces and gpu_first_run.json")
    parser.add_argument("--teacher-minutes", type=float, default=5.0)
    parser.add_argument("--student-minutes", type=float, default=3.0)
    parser.add_argument("--dry-run", action="store_true",
                        help="the smoke preset on the CPU for a few epochs: checks the script, not the GPU")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_first_run: no CUDA GPU here; --dry-run checks the script on the CPU")
    out, data = Path(args.out), Path(args.data) if args.data else SAMPLE_DATA
    preset = "smoke" if args.dry_run else "gpu"

    def config(stage: str, minutes: float):
        if args.dry_run:  # two short epochs: the path, not the recipe
            return resolve_config(stage, preset, assignments=["resolutions=[[64, 2]]"])
        return resolve_config(stage, preset, budget_minutes=minutes)
    summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "preset": preset,
               "data": str(data)}
    t0 = time.perf_counter()
    teacher = train_teacher(config("teacher", args.teacher_minutes), data, out / "teacher", show_progress=False)
    summary["teacher"] = stage_summary("teacher", teacher)
    student = train_student(config("distill", args.student_minutes), data, out / "student",
                            str(out / "teacher" / "best.pt"), show_progress=False)
    summary["student"] = stage_summary("student", student)
    summary["wall_s"] = time.perf_counter() - t0
    for name in ("teacher", "student"):
        best = out / name / "best.pt"
        renamed = best.rename(out / f"{name}.pt")
        summary[name]["pieces"] = [p.name for p in split_file(renamed)]
        (out / name / "last.pt").unlink(missing_ok=True)  # the full training state: too large to bring back
    (out / "gpu_first_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wall {summary['wall_s']:.0f} s; {out}/gpu_first_run.json", flush=True)
    return summary


if __name__ == "__main__":
    main()
