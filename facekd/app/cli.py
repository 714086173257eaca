"""`facekd` command line: one subcommand per stage, plus predict/evaluate and submission tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facekd.data import default_data_root


def _add_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", default=None, help="dataset root with train/ and val/ (default: the embedded sample)")
    p.add_argument("--out", default=default_out, help=f"run directory (default: {default_out})")
    p.add_argument("--preset", default="smoke", choices=["smoke", "cpu", "gpu"])
    p.add_argument("--config", default=None, help="TOML file whose keys override the preset")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--seed", type=int, default=None)


def _config(stage: str, args, **extra):
    from facekd.config import resolve_config
    return resolve_config(stage, args.preset, args.config, seed=args.seed, **extra)


def _data_root(args) -> Path:
    return Path(args.data) if args.data else default_data_root()


def cmd_train_teacher(args) -> int:
    from teachers.train import train_teacher
    result = train_teacher(_config("teacher", args), _data_root(args), args.out, args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_distill(args) -> int:
    from distill.train import distill
    result = distill(_config("distill", args, model=args.student), _data_root(args), args.out, args.teacher,
                     args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_prune(args) -> int:
    from compress.train import prune_and_finetune
    result = prune_and_finetune(_config("prune", args), _data_root(args), args.out, args.student, args.teacher,
                                target_params=args.target_params, target_macs=args.target_macs, ratio=args.ratio,
                                importance=args.importance, resume=args.resume)
    print(json.dumps(result["report"], indent=2))
    return 0


def cmd_pipeline(args) -> int:
    from facekd.app.pipeline import run_pipeline
    summary = run_pipeline(_data_root(args), args.out, args.preset, args.images, args.config, args.resume,
                           audit=not args.no_audit)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_audit(args) -> int:
    from facekd.audit import audit_split, format_table, report_json, save_panel, write_fixed
    report = audit_split(_data_root(args), args.split, progress=not args.json)
    if args.fix:
        write_fixed(report, args.fix, copy=args.copy)
    panel = args.panel or (Path(args.fix) / "flagged.png" if args.fix else None)
    if panel:
        panel = save_panel(report, panel, limit=args.panel_rows)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
        return 0
    print(format_table(report))
    if args.fix:
        print(f"wrote the fixed copy to {args.fix} (what changed: {Path(args.fix) / 'audit.json'})")
    if panel:
        print(f"panel of flagged masks (image, mask, fixed mask): {panel}")
    return 0


def cmd_predict(args) -> int:
    from facekd.app.predict import predict_paths
    result = predict_paths(args.weights, args.input, args.output, flip_tta=not args.no_tta)
    for reason in result["failed"]:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"wrote {result['written']} masks to {args.output} ({result['images_per_s']:.2f} images/s)")
    return 1 if result["failed"] else 0


def cmd_evaluate(args) -> int:
    from facekd.metric import evaluate_folders
    summary = evaluate_folders(args.pred, args.gt, progress=not args.json)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"F-score {summary['fscore']:.4f} over {summary['images']} images")
    for name, f1 in summary["per_class"].items():
        print(f"  {name:<10} {f1:.4f}")
    print(f"left/right swaps: {100 * summary['left_right_swap_rate']:.2f}% of l_/r_ pixels predicted as the other side")
    return 0


def cmd_export(args) -> int:
    from facekd.app.export import export
    meta = export(args.checkpoint, args.out)
    score = "n/a" if meta["val_fscore"] is None else f"{meta['val_fscore']:.4f}"
    print(f"exported {meta['model_cfg']['arch']} ({meta['params']:,} params, val F-score {score}) to {args.out}")
    return 0


def _print_report(report, zip_path) -> int:
    for fault in report.faults:
        print(f"FAULT: {fault}")
    if report.faults:
        print(f"{zip_path}: {len(report.faults)} fault(s)")
        return 1
    print(f"OK: {zip_path} ({report.masks} masks, {report.params:,} params)")
    return 0


def cmd_package(args) -> int:
    from facekd.app.submission import package
    return _print_report(package(args.images, args.solution, args.out, flip_tta=not args.no_tta), args.out)


def cmd_check_submission(args) -> int:
    from facekd.app.submission import check_submission
    return _print_report(check_submission(args.zip, args.images), args.zip)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facekd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a teacher from scratch")
    _add_run_args(p, "runs/teacher")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="train a student from a teacher's soft logits (or from scratch)")
    _add_run_args(p, "runs/student")
    p.add_argument("--teacher", default="runs/teacher/best.pt", help="teacher best.pt, or 'none' for from-scratch")
    p.add_argument("--student", default=None, help="student name (default: the preset's)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("prune", help="prune a student with torch-pruning, then fine-tune it")
    _add_run_args(p, "runs/pruned")
    p.add_argument("--student", default="runs/student/best.pt", help="student best.pt to prune")
    p.add_argument("--teacher", default="none", help="teacher best.pt for fine-tuning, or 'none'")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", type=int, help="prune until at most this many parameters")
    target.add_argument("--target-macs", type=int, help="prune until at most this many MACs at 512x512")
    target.add_argument("--ratio", type=float, help="channel pruning ratio per layer, in (0, 1)")
    p.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor"])
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("pipeline", help="teacher -> student -> prune -> export -> package, resumable")
    _add_run_args(p, "runs/pipeline")
    p.add_argument("--images", default=None, help="images to package (default: the data's test/images)")
    p.add_argument("--no-audit", action="store_true",
                   help="train on the labels as they are instead of fixing mirrored left/right masks first")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("audit", help="find masks whose left/right labels are mirrored; optionally write a fixed copy")
    p.add_argument("--data", default=None, help="dataset root (default: the embedded sample)")
    p.add_argument("--split", default="train")
    p.add_argument("--fix", default=None, metavar="OUT_DIR",
                   help="write a corrected copy of the dataset root here (the input is never changed)")
    p.add_argument("--copy", action="store_true", help="with --fix, copy unchanged files instead of linking them")
    p.add_argument("--panel", default=None, help="PNG of flagged masks beside their images (default with --fix: "
                                                 "OUT_DIR/flagged.png)")
    p.add_argument("--panel-rows", type=int, default=6, help="flagged masks shown in the panel (default: 6)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("predict", help="write one mask PNG per input image")
    p.add_argument("--weights", required=True)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for <stem>.png masks")
    p.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="challenge F-score of predicted masks against ground truth")
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a standalone solution folder (ckpt.pth, run.py, runtime modules)")
    p.add_argument("--checkpoint", required=True, help="a student's best.pt")
    p.add_argument("--out", required=True, help="solution folder to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("package", help="predict with a solution folder's run.py, zip masks/ + solution/, check it")
    p.add_argument("--images", required=True, help="folder of test images")
    p.add_argument("--solution", default="solution", help="exported solution folder (default: solution)")
    p.add_argument("--out", default="submission.zip")
    p.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("check-submission", help="name every fault in a submission zip")
    p.add_argument("zip")
    p.add_argument("--images", default=None, help="test images folder: require exactly one mask per image")
    p.set_defaults(func=cmd_check_submission)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"facekd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
