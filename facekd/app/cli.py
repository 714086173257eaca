"""`facekd` command line: one subcommand per stage, plus predict/evaluate and submission tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# No torch (nor anything that imports it) at module level: --help and argument errors answer
# before the seconds torch takes to import (benchmarks/bench_startup.py --cli).


def _add_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", default=None, help="dataset root with train/ and val/ (default: the embedded sample)")
    p.add_argument("--out", default=default_out, help=f"run directory (default: {default_out})")
    p.add_argument("--preset", default=None, choices=["smoke", "cpu", "gpu"],
                   help="training recipe: smoke (seconds, sized for the embedded sample), cpu (the real data on a "
                        "CPU) or gpu (default: smoke on the embedded sample, cpu with --data)")
    p.add_argument("--config", default=None, help="TOML file whose keys override the preset")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for the initial weights, the sampling and the augmentation (default: the "
                        "config's, 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, typed as in TOML (repeatable): --set lr=1e-3 "
                        "--set 'resolutions=[[256,4]]'")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="train for this much wall time instead of fixed epochs: the lr and resolution "
                        "schedules follow the time used and the run ends on time (set-up and validation count)")


def _budget(args) -> float | None:
    from facekd.budget import check_minutes
    return None if args.budget is None else check_minutes(args.budget)


def _config(stage: str, args, **extra):
    from facekd.config import resolve_config
    return resolve_config(stage, _preset(args), args.config, args.set, seed=args.seed, budget_minutes=_budget(args),
                          **extra)


def _preset(args) -> str:
    """--preset, or when it is left out the one that fits the data: smoke for the embedded
    sample, cpu for a dataset of the user's, which is then said (issue 34: `distill --data
    data/celebamask-mini --budget 1` trained smoke's 18,707-parameter toy at 128 px, unsaid)."""
    if args.preset:
        return args.preset
    from facekd.data import SAMPLE_DATA
    if _data_root(args).resolve() == SAMPLE_DATA.resolve():
        return "smoke"
    if _data_root(args).is_dir():  # one that is not is refused next, and the preset is moot
        print(f"facekd {args.command}: --preset cpu, the default for --data {args.data} (smoke is sized for the "
              "embedded sample and the tests; gpu is for a GPU)", file=sys.stderr)
    return "cpu"


def _teacher(args) -> list[str] | None:
    """--teacher as the stages take it: the checkpoints given (several make an ensemble), or None
    when the flag is left out: labels alone, or for the pipeline a teacher it trains itself."""
    return args.teacher or None


def _warn_of_settings_without_teacher(args, cfg) -> None:
    """Name the settings the user gave (--set, --config) that do nothing without a teacher,
    when training from labels alone: run as if they were absent, they would pass unseen."""
    from distill.teacher import settings_without_teacher, teacher_paths
    from facekd.config import load_toml, parse_assignments
    if teacher_paths(_teacher(args)):
        return
    given = set(parse_assignments(args.set))
    table = load_toml(args.config) if args.config else {}
    given |= set(table) | set(table.get("loss_weights", {}) if isinstance(table.get("loss_weights"), dict) else ())
    unused = settings_without_teacher(cfg, given)
    if unused:
        print(f"facekd {args.command}: warning: {', '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing "
              "without a teacher; it trains from labels alone (--teacher none)", file=sys.stderr)


def _student_checkpoint(args, default: str) -> str:
    """--checkpoint (a run folder stands for its best.pt), or the earlier stage's best.pt it
    defaults to; a missing one is refused naming the flag (issue 34: "runs/distill/best.pt:
    checkpoint not found" named none, when the flag had been left out)."""
    from facekd.run_folder import best_of_run
    path = best_of_run(args.checkpoint or default, "--checkpoint")
    if Path(path).exists():
        return path
    if args.checkpoint:
        raise FileNotFoundError(f"--checkpoint {path}: checkpoint not found")
    raise FileNotFoundError(f"--checkpoint left out, and its default {path} (an earlier stage's output) is not "
                            "there; give --checkpoint a student's best.pt or its run folder")


def _data_root(args) -> Path:
    from facekd.data import default_data_root
    return Path(args.data) if args.data else default_data_root()


def cmd_train_teacher(args) -> int:
    from teachers.train import train_teacher
    result = train_teacher(_config("teacher", args), _data_root(args), args.out, args.resume, init=args.init)
    print(json.dumps(result, indent=2))
    return 0


def cmd_grow(args) -> int:
    from teachers.grow import grow_checkpoint
    record = grow_checkpoint(args.checkpoint, args.out, args.depth if len(args.depth) > 1 else args.depth[0],
                             args.width, args.seed)
    print(f"grew {args.checkpoint} ({record['student_params']:,} params) into {args.out} ({record['params']:,} "
          f"params, the same function); train it with facekd train-teacher --init {args.out}")
    return 0


def cmd_distill(args) -> int:
    from distill.train import train_student
    cfg = _config("distill", args, model=args.arch)
    _warn_of_settings_without_teacher(args, cfg)
    result = train_student(cfg, _data_root(args), args.out, _teacher(args), args.resume)
    print(json.dumps(result, indent=2))
    return 0


def _number_list(kind):
    """argparse type for one target or a comma-separated list of them (for --sweep)."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None
    return parse


def cmd_prune(args) -> int:
    from compress.prune import PruneSettings, PruneTarget
    from compress.sweep import format_table, sweep
    from compress.train import closing_lines, prune_and_finetune
    kind, targets = next((k, v) for k, v in (("params", args.target_params), ("macs", args.target_macs),
                                             ("ratio", args.ratio), ("latency", args.target_latency)) if v is not None)
    settings = PruneSettings(importance=args.importance, round_to=args.round_to)
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: give at least 1")
    cfg = _config("prune", args)
    _warn_of_settings_without_teacher(args, cfg)
    checkpoint = _student_checkpoint(args, "runs/distill/best.pt")
    if args.sweep:
        record = sweep(cfg, _data_root(args), args.out, checkpoint, _teacher(args), kind=kind, targets=targets,
                       threads=args.threads, settings=settings, resume=args.resume)
        print(json.dumps(record, indent=2) if args.json else format_table(record))
        return 0
    if len(targets) > 1:
        raise ValueError(f"{len(targets)} targets given; pass --sweep to prune to each of them")
    result = prune_and_finetune(cfg, _data_root(args), args.out, checkpoint, _teacher(args),
                                PruneTarget(kind, targets[0], args.threads), settings, resume=args.resume)
    print(json.dumps(result["report"], indent=2) if args.json else "\n".join(closing_lines(result["report"], args.out)))
    return 0


def cmd_finetune(args) -> int:
    from compress.train import finetune
    cfg = _config("prune", args)
    _warn_of_settings_without_teacher(args, cfg)
    result = finetune(cfg, _data_root(args), args.out, _student_checkpoint(args, "runs/prune/best.pt"),
                      _teacher(args), args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_pipeline(args) -> int:
    from facekd.app.pipeline import run_pipeline
    summary = run_pipeline(_data_root(args), args.out, _preset(args), args.images, args.config, args.resume,
                           audit=not args.no_audit, budget_minutes=_budget(args), assignments=args.set,
                           prune_from=args.prune_from, teacher=_teacher(args), finetune_kd=args.finetune_kd,
                           seed=args.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from facekd.app.pipeline import closing_lines
        print("\n".join(closing_lines(summary, args.out, on_sample=args.data is None)))
    return 0


def cmd_report(args) -> int:
    from facekd.app.report import write_report
    page = write_report(args.runs, args.out, args.data, focus=args.focus, worst=args.worst)
    print(f"wrote {page}")
    return 0


def cmd_audit(args) -> int:
    from facekd.audit import audit_split, check_fix_target, format_table, report_json, save_panel, write_fixed
    from facekd.files import check_output_file
    if args.fix:  # output mistakes are refused before the audit's minutes, not after
        check_fix_target(args.fix)
    if args.panel:
        check_output_file(args.panel)
    report = audit_split(_data_root(args), args.split, show_progress=not args.json)
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
    result = predict_paths(args.checkpoint, args.images, args.out, flip_tta=not args.no_tta)
    for reason in result["failed"]:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"wrote {result['written']} masks to {args.out} ({result['images_per_s']:.2f} images/s)")
    return 1 if result["failed"] else 0


def cmd_evaluate(args) -> int:
    from facekd.metric import evaluate_folders, name_some
    summary = evaluate_folders(args.pred, args.gt, show_progress=not args.json)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"F-score {summary['fscore']:.4f} over {summary['images']} images")
    for name, f1 in summary["per_class"].items():
        print(f"  {name:<10} {f1:.4f}")
    print(f"left/right swaps: {100 * summary['left_right_swap_rate']:.2f}% of l_/r_ pixels predicted as the other side")
    if summary["invalid_files"]:
        names = summary["invalid_files"]
        print(f"{len(names)} prediction(s) hold ids outside 0..18, scored as misses "
              f"({summary['invalid_pixels']:,} pixels): {name_some(names)}")
    return 0


def cmd_export(args) -> int:
    from facekd.app.export import export, refresh
    if args.format == "onnx":
        return _export_onnx(args)
    if args.checkpoint and len(args.checkpoint) > 1:
        raise ValueError(f"--checkpoint given {len(args.checkpoint)} times: an ensemble cannot be exported, the "
                         "solution is one model; distil it into a student (facekd distill --teacher A --teacher B) "
                         "and export that")
    meta = export(args.checkpoint[0], args.out, force=args.force) if args.checkpoint else refresh(args.out)
    score = "n/a" if meta["val_fscore"] is None else f"{meta['val_fscore']:.4f}"
    print(f"exported {meta['model_cfg']['arch']} ({meta['params']:,} params, val F-score {score}) to {args.out}")
    return 0


def cmd_quantize(args) -> int:
    from compress.quantize import quantize_checkpoint
    meta = quantize_checkpoint(args.checkpoint, args.out, _data_root(args), args.calibration_images,
                               flip_tta=not args.no_tta)
    print(f"int8 {meta['model_cfg']['arch']} ({meta['params']:,} params) written to {args.out}; calibrated on "
          f"{meta['quantized']['calibration']['images']} train images; val F {meta['fp32_val_fscore']:.4f} fp32 -> "
          f"{meta['val_fscore']:.4f} int8")
    return 0


def _export_onnx(args) -> int:
    from facekd.app.onnx_export import export_onnx
    if not args.checkpoint or len(args.checkpoint) > 1:
        raise ValueError("--format onnx: give exactly one --checkpoint, a student's best.pt")
    meta = export_onnx(args.checkpoint[0], args.out, _data_root(args), flip_tta=not args.no_tta)
    check = meta["parity"]
    print(f"exported {args.checkpoint[0]} ({meta['params']:,} params, opset {meta['opset']}, flip TTA "
          f"{meta['flip_tta']}) to {args.out}/model.onnx; ONNX Runtime against torch on {check['images']} val "
          f"images: {100 * check['pixel_agreement']:.3f}% of pixels equal, val F {check['val_fscore_torch']:.5f} "
          f"torch, {check['val_fscore_onnx']:.5f} onnx; run it with python3 {args.out}/run_onnx.py")
    return 0


def _print_report(report, zip_path, failed: str = "") -> int:
    for fault in report.faults:
        print(f"FAULT: {fault}")
    if report.faults:
        print(f"{zip_path}: {len(report.faults)} fault(s){failed}")
        return 1
    print(f"OK: {zip_path} ({report.masks} masks, {report.params:,} params)")
    return 0


def cmd_package(args) -> int:
    from facekd.app.submission import package
    report = package(args.images, args.solution, args.out, flip_tta=not args.no_tta)
    return _print_report(report, args.out, failed="; not written, so any previous zip there is kept")


def cmd_check_submission(args) -> int:
    from facekd.app.submission import check_submission
    if (args.zip is None) == (args.zip_option is None):
        raise ValueError("give the zip to check once: facekd check-submission ZIP (or --zip ZIP)")
    zip_path = args.zip or args.zip_option
    return _print_report(check_submission(zip_path, args.images), zip_path)


# Every command names things the same way: --data a dataset root, --images a folder of images,
# --checkpoint a model file it reads, --arch an architecture name, --teacher the checkpoint(s)
# to distil from, --out what it writes. Older spellings stay as aliases.
TEACHER_HELP = ("a teacher's best.pt (or its run folder) to distil from (repeat it for an ensemble), or 'none' "
                "to train from labels alone (default: {})")


def _add_teacher_arg(p: argparse.ArgumentParser, default_means: str = "none, labels alone") -> None:
    p.add_argument("--teacher", action="append", default=None, metavar="CKPT", help=TEACHER_HELP.format(default_means))


def _add_training_parsers(sub) -> None:
    p = sub.add_parser("train-teacher", help="train a teacher from scratch (or from a grown student, --init)")
    _add_run_args(p, "runs/teacher")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from this teacher checkpoint's model and weights (facekd grow writes one) "
                        "instead of the preset's teacher, freshly initialised")
    p.set_defaults(func=cmd_train_teacher)


    p = sub.add_parser("distill", help="train a student from a teacher's soft logits (or from scratch)")
    _add_run_args(p, "runs/distill")
    _add_teacher_arg(p)
    p.add_argument("--arch", "--student", dest="arch", default=None, metavar="NAME",
                   help="the registered student to train, by name: students/__init__.py's, or one a module "
                        "imported before the CLI registers (default: the preset's)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("prune", help="prune a student with torch-pruning, then fine-tune it")
    _add_run_args(p, "runs/prune")
    p.add_argument("--checkpoint", "--student", dest="checkpoint", default=None, metavar="CKPT",
                   help="the student's best.pt to prune, or its run folder (default: runs/distill/best.pt)")
    _add_teacher_arg(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", type=_number_list(int), help="prune until at most this many parameters")
    target.add_argument("--target-macs", type=_number_list(int), help="prune until at most this many MACs at 512x512")
    target.add_argument("--ratio", type=_number_list(float), help="channel pruning ratio per layer, in (0, 1)")
    target.add_argument("--target-latency", type=_number_list(float), metavar="MS",
                        help="prune until one image at the student's input size takes at most MS milliseconds on "
                             "this machine's CPU, at --threads threads")
    p.add_argument("--threads", type=int, default=1, help="CPU threads a latency is timed at (default: 1)")
    p.add_argument("--round-to", default="auto", type=lambda v: v if v == "auto" else int(v),
                   help="round pruned channel counts to multiples of 8, 16 or 32; auto (default): prune with each "
                        "and keep the fastest, timed side by side (for --target-latency: the largest that meets it)")
    # no choices: the names are compress/prune.py's IMPORTANCES, which the CLI does not import before torch
    p.add_argument("--importance", default="magnitude",
                   help="how channels are ranked: magnitude (weight norm, the default), taylor (first-order "
                        "Taylor on a few training images), or any importance registered in compress/prune.py")
    p.add_argument("--sweep", action="store_true",
                   help="prune to each of a comma-separated list of targets, one sub-run each, gathered in "
                        "OUT/sweep.json")
    p.add_argument("--json", action="store_true",
                   help="print prune_report.json (with --sweep: sweep.json) instead of a few closing lines")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="continue training a student as it is, with the prune stage's config")
    _add_run_args(p, "runs/finetuned")
    p.add_argument("--checkpoint", "--student", dest="checkpoint", default=None, metavar="CKPT",
                   help="the student's best.pt to continue, or its run folder (default: runs/prune/best.pt)")
    _add_teacher_arg(p)
    p.set_defaults(func=cmd_finetune)


def _add_grow_parser(sub) -> None:
    p = sub.add_parser("grow", help="grow a trained student into a larger teacher that computes the same function")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="the resfpn student's best.pt to grow")
    p.add_argument("--out", required=True, help="the grown teacher's checkpoint file to write")
    p.add_argument("--depth", type=_number_list(int), default=[0], metavar="N[,N,N,N]",
                   help="residual blocks to add to every stage, or one count per stage (default: 0)")
    p.add_argument("--width", type=float, default=1.0,
                   help="factor for every inner width: each block's, the stem's first and the head's (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for which channels are copied and how they split")
    p.set_defaults(func=cmd_grow)


def _add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="audit -> train-teacher -> distill -> prune -> export -> package, "
                                               "resumable")
    _add_run_args(p, "runs/pipeline")
    p.add_argument("--images", default=None, help="images to package (default: the data's test/images)")
    p.add_argument("--no-audit", action="store_true",
                   help="train on the labels as they are instead of fixing mirrored left/right masks first")
    p.add_argument("--prune-from", default="student", choices=["student", "wide"],
                   help="student (default): distil the preset's student, prune it by the preset's share; "
                        "wide: distil the over-limit resfpn_wide, prune it to just under the parameter limit")
    _add_teacher_arg(p, "'train', the pipeline's teacher stage trains one; a teacher given, or 'none', trains "
                        "nothing there and --budget goes to the student stages alone")
    p.add_argument("--finetune-kd", default="auto", choices=["auto", "always", "never"],
                   help="fine-tune the pruned student under the teacher: auto (default: only while the "
                        "teacher scored above the distilled student on val), always, or never (labels alone)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the few closing lines")
    p.set_defaults(func=cmd_pipeline)


def _add_inspection_parsers(sub) -> None:
    p = sub.add_parser("report", help="one offline HTML page comparing the models of any runs: Pareto front, "
                                      "per-class F1, confusion matrix, worst images, learning curves")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (teacher, distill, prune, sweep, pipeline), "
                                                          "or checkpoint files (an int8 model from facekd quantize)")
    p.add_argument("--out", required=True, help="folder for index.html and its figures")
    p.add_argument("--data", default=None, help="score every model on this root's val split (default: the one "
                                                "the runs trained with, from their config.json)")
    p.add_argument("--focus", default=None, help="model (as labelled in the table) whose confusion matrix and "
                                                 "worst images to show (default: the best student under the limit)")
    p.add_argument("--worst", type=int, default=8, help="worst val images to show (default: 8)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("audit", help="find masks whose left/right labels are mirrored; optionally write a fixed copy")
    p.add_argument("--data", default=None, help="dataset root (default: the embedded sample)")
    p.add_argument("--split", default="train", choices=["train", "val"],
                   help="which split's masks to audit (default: train, the one trained on)")
    p.add_argument("--fix", default=None, metavar="OUT_DIR",
                   help="write a corrected copy of the dataset root here (the input is never changed)")
    p.add_argument("--copy", action="store_true", help="with --fix, copy unchanged files instead of linking them")
    p.add_argument("--panel", default=None, help="PNG of flagged masks beside their images (default with --fix: "
                                                 "OUT_DIR/flagged.png)")
    p.add_argument("--panel-rows", type=int, default=6, help="flagged masks shown in the panel (default: 6)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("evaluate", help="challenge F-score of predicted masks against ground truth")
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted <stem>.png masks")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth <stem>.png masks")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.set_defaults(func=cmd_evaluate)


def _add_shipping_parsers(sub) -> None:
    p = sub.add_parser("predict", help="write one mask PNG per input image")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, action="append", metavar="CKPT",
                   help="a model's best.pt (or a solution's ckpt.pth); repeat it to predict with the ensemble "
                        "of several (the mean of their logits)")
    p.add_argument("--images", "--input", dest="images", required=True, help="an image file or a folder of images")
    p.add_argument("--out", "--output", dest="out", required=True, help="folder for <stem>.png masks")
    p.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a standalone solution folder (ckpt.pth, run.py, runtime modules)")
    p.add_argument("--checkpoint", default=None, action="append", metavar="CKPT",
                   help="a student's best.pt; leave out to refresh the code of the export already in --out, "
                        "keeping its weights")
    p.add_argument("--out", required=True, help="solution folder to write")
    p.add_argument("--force", action="store_true",
                   help="replace the model of a solution folder that holds one already (refused without it)")
    p.add_argument("--format", default="solution", choices=["solution", "onnx"],
                   help="solution (default): ckpt.pth and run.py; onnx: model.onnx (opset 17, flip TTA inside the "
                        "graph) and run_onnx.py, after a parity check against torch on val (needs the deploy extra)")
    p.add_argument("--data", default=None, help="with --format onnx: dataset root whose val split the parity check "
                                                "uses (default: the embedded sample)")
    p.add_argument("--no-tta", action="store_true", help="with --format onnx: leave the flip TTA out of the graph")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="static int8 quantization of a student for the CPU, calibrated on train "
                                        "images; predict, evaluate and report take the result")
    p.add_argument("--checkpoint", required=True, help="a student's best.pt (under the parameter limit)")
    p.add_argument("--out", required=True, help="int8 checkpoint file to write")
    p.add_argument("--data", default=None, help="dataset root: calibrates on train/, scores on val/ "
                                                "(default: the embedded sample)")
    p.add_argument("--calibration-images", type=int, default=256, help="train images to calibrate on (default: 256)")
    p.add_argument("--no-tta", action="store_true", help="score val without flip test-time augmentation")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("package", help="predict with a solution folder's run.py, zip masks/ + solution/, check it")
    p.add_argument("--images", required=True, help="folder of test images")
    p.add_argument("--solution", default="solution", help="exported solution folder (default: solution)")
    p.add_argument("--out", default="submission.zip", help="the zip to write (default: submission.zip)")
    p.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("check-submission", help="name every fault in a submission zip")
    p.add_argument("zip", nargs="?", default=None, metavar="ZIP", help="the submission zip to check")
    p.add_argument("--zip", dest="zip_option", default=None, metavar="ZIP", help="the same, as an option")
    p.add_argument("--images", default=None, help="test images folder: require exactly one mask per image")
    p.set_defaults(func=cmd_check_submission)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facekd", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_parsers(sub)
    _add_grow_parser(sub)
    _add_pipeline_parser(sub)
    _add_inspection_parsers(sub)
    _add_shipping_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # A user's mistake (a bad argument, file or path) is one line, named by the code that
    # found it; --debug, or any other exception, which is a bug, gives the traceback.
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"facekd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"facekd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
