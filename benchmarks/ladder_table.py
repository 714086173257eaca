"""The compression ladder's table and plot: for each rung (the shipped student pruned to one
size and fine-tuned, (a) from labels alone and (b) under the unpruned student), its params,
GMACs, fp32 and int8 latency at 1 thread, each arm's val F over seeds, the paired per-image
difference b - a with its standard error, and the share of the teacher's lead (b) keeps.

    python benchmarks/ladder_table.py --data data/celebamask-mini --teacher solution/ckpt.pth \\
        --out runs/ladder_table RUNS/p900k RUNS/p500k RUNS/p250k

Each RUNG is a prefix: its arms' run folders are RUNG_a_s<seed> and RUNG_b_s<seed> (best.pt in
each), paired by seed. The int8 model is arm (b)'s first seed quantized (calibrated on train
images); latency is timed with every rung's fp32 and int8 models interleaved, on this
machine, with the 2-thread matmul rate beside it. Writes OUT/ladder.json, OUT/ladder.md and
OUT/ladder.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from compress.quantize import quantize_checkpoint
from facekd.challenge import count_params
from facekd.config import saved_config
from facekd.data import load_split
from facekd.files import load_checkpoint
from facekd.latency import matmul_gflops, measure_latency, num_threads
from facekd.models import load_model
from facekd.losses import LOSSES
from facekd.profile import count_macs
from paired_val import paired, per_image_fscores  # beside this script


def arm_folders(rung: str, arm: str) -> list[Path]:
    prefix = Path(rung)
    # a run's log often sits beside its folder (RUNG_a_s0.log): only folders holding best.pt count
    folders = [f for f in prefix.parent.glob(f"{prefix.name}_{arm}_s*") if (f / "best.pt").is_file()]
    folders.sort(key=lambda f: int(f.name.rsplit("_s", 1)[1]))
    if not folders:
        raise SystemExit(f"{rung}: no {prefix.name}_{arm}_s<seed>/best.pt beside it")
    return folders


def arm_summary(scores: list[torch.Tensor], folders: list[Path]) -> dict:
    means = [float(s.mean()) for s in scores]
    return {"runs": [str(f) for f in folders], "val_f": means, "mean": statistics.mean(means),
            "half_range": (max(means) - min(means)) / 2}


def recipe(run: Path) -> str:
    """How arm (b) was taught, from its config snapshot: the teacher losses with their
    weights, the temperature, online or offline, and where the terms compare if not at the
    student's output."""
    cfg = saved_config(json.loads((run / "config.json").read_text()))  # any version's spelling
    terms = [f"{name} {weight:g}" for name, weight in cfg["loss_weights"].items()
             if name in LOSSES and LOSSES[name].uses == "teacher"]
    where = cfg.get("teacher_term_size", "output")
    return (" + ".join(terms) + f", T {cfg['temperature']:g}, {cfg['distill_mode']}"
            + ("" if where == "output" else f", at the {where}' size"))


def rung_record(rung: str, val, teacher_scores: torch.Tensor, out: Path, data_root) -> tuple[dict, dict]:
    """(the rung's record, {"fp32": model, "int8": model} to time)."""
    folders = {arm: arm_folders(rung, arm) for arm in ("a", "b")}
    models = {arm: [load_model(load_checkpoint(f / "best.pt"), f / "best.pt") for f in fs] for arm, fs in folders.items()}
    scores = {arm: [per_image_fscores(m, val) for m in ms] for arm, ms in models.items()}
    a, b = (torch.stack(scores[arm]).mean(0) for arm in ("a", "b"))
    first_b, fp32 = folders["b"][0] / "best.pt", models["b"][0]
    int8_path = out / f"{Path(rung).name}_b_int8.pt"
    int8_meta = quantize_checkpoint(first_b, int8_path, data_root, fp32_val_fscore=float(scores["b"][0].mean()))
    lead = float(teacher_scores.mean() - a.mean())
    gain = paired(a, b)
    record = {"rung": Path(rung).name, "params": count_params(fp32), "gmacs": count_macs(fp32, fp32.input_size) / 1e9,
              "recipe": recipe(folders["b"][0]),
              "a": arm_summary(scores["a"], folders["a"]), "b": arm_summary(scores["b"], folders["b"]),
              "paired_b_minus_a": gain, "per_seed": [paired(x, y) for x, y in zip(scores["a"], scores["b"])],
              "teacher_lead_over_a": lead,
              # below zero the teacher trails (a): no lead to keep
              "share_of_lead_kept": gain["mean"] / lead if lead > 0 else None,
              "int8": {"file": str(int8_path), "val_f": int8_meta["val_fscore"],
                       "fp32_val_f": int8_meta["fp32_val_fscore"]}}
    return record, {"fp32": fp32, "int8": load_model(load_checkpoint(int8_path), int8_path)}


def markdown(rows: list[dict], teacher: dict, gflops: float) -> str:
    lines = [f"Teacher (the unpruned student): {teacher['params']:,} params, val F {teacher['val_f']:.4f}; "
             f"latency at 1 thread, 2-thread matmul {gflops:.1f} GFLOP/s.", "",
             "| params | GMACs | fp32 ms | int8 ms | (b)'s recipe | (a) labels | (b) taught | b − a (paired) "
             "| teacher lead over (a) | share kept | int8 val F |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        share = "—" if r["share_of_lead_kept"] is None else f"{r['share_of_lead_kept']:+.2f}"
        lines.append(
            f"| {r['params']:,} | {r['gmacs']:.2f} | {r['latency_ms']['fp32']:.1f} | {r['latency_ms']['int8']:.1f} "
            f"| {r['recipe']} | {r['a']['mean']:.4f} ± {r['a']['half_range']:.4f} | {r['b']['mean']:.4f} ± {r['b']['half_range']:.4f} "
            f"| {r['paired_b_minus_a']['mean']:+.4f} ± {r['paired_b_minus_a']['se']:.4f} "
            f"| {r['teacher_lead_over_a']:+.4f} | {share} | {r['int8']['val_f']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], teacher: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "params", "trainable parameters"), (axes[1], "fp32", "ms per image, 1 thread")):
        xs = [r["params"] if key == "params" else r["latency_ms"]["fp32"] for r in rows]
        for arm, name, style in (("a", "(a) labels alone", "o-"), ("b", "(b) under the unpruned student", "s-")):
            ax.errorbar(xs, [r[arm]["mean"] for r in rows], yerr=[r[arm]["half_range"] for r in rows],
                        fmt=style, capsize=3, label=name)
        if key == "fp32":
            ax.plot([r["latency_ms"]["int8"] for r in rows], [r["int8"]["val_f"] for r in rows], "^--",
                    label="(b) seed 0 in int8")
        else:
            ax.plot([teacher["params"]], [teacher["val_f"]], "k*", markersize=12, label="teacher")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val F (69 masks)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle("The compression ladder: the shipped student pruned and fine-tuned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rungs", nargs="+", metavar="RUNG", help="run-folder prefix of one rung (RUNG_a_s0 ...)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher", required=True, help="the checkpoint the rungs were pruned from and taught by")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val = load_split(args.data, "val", None, show_progress=False)
    teacher_model = load_model(load_checkpoint(args.teacher), args.teacher)
    teacher_scores = per_image_fscores(teacher_model, val)
    teacher = {"file": args.teacher, "params": count_params(teacher_model), "val_f": float(teacher_scores.mean())}
    rows, models = [], {}
    for rung in args.rungs:
        record, timed = rung_record(rung, val, teacher_scores, out, args.data)
        rows.append(record)
        models.update({f"{record['rung']} {kind}": m for kind, m in timed.items()})
    sizes = {name: m.input_size for name, m in models.items()}
    spreads = measure_latency(models, sizes, threads=1, runs=args.runs)
    with num_threads(2):
        gflops = matmul_gflops()
    for r in rows:
        r["latency_ms"] = {kind: spreads[f"{r['rung']} {kind}"]["median_ms"] for kind in ("fp32", "int8")}
        r["latency_spread"] = {kind: spreads[f"{r['rung']} {kind}"] for kind in ("fp32", "int8")}
    rows.sort(key=lambda r: -r["params"])
    record = {"teacher": teacher, "matmul_gflops_2_threads": gflops, "threads": 1, "rungs": rows}
    (out / "ladder.json").write_text(json.dumps(record, indent=2))
    (out / "ladder.md").write_text(markdown(rows, teacher, gflops))
    plot(rows, teacher, out / "ladder.png")
    print((out / "ladder.md").read_text())


if __name__ == "__main__":
    main()
