"""Checkpoints (fp32 or int8) timed side by side on this machine's CPU, by facekd.latency's
one measurement: interleaved rounds at 1 and 2 threads, median and spread, the 2048^3
matmul rate beside them. --prune-to adds --prune-from (default: the first checkpoint) and
its copies pruned (no fine-tuning) to each parameter target, their channel rounding chosen
by latency, so a sweep's speed is measured in the same run as the models it is compared
with, and ranked against MACs.

    python benchmarks/bench_latency.py --weights solution/ckpt.pth --weights runs/int8.pt \\
        --prune-to 1600000,1400000,1200000,1000000 --prune-from runs/student.pth --json runs/latency.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from compress.prune import PruneTarget, prune_fastest_rounding
from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.latency import RUNS, format_spread, latency_record, rank_groups, spearman
from facekd.profile import model_cost


def gather(weights: list[str], prune_from: str | None, prune_to: list[int], size: int) -> tuple[dict, list]:
    """({label: model} for the checkpoints, --prune-from and its pruned copies; the labels of
    the pruned family, the source first)."""
    models = {w: load_model(load_checkpoint(w), w) for w in weights}
    if not prune_to:
        return models, []
    source = prune_from or weights[0]
    models.setdefault(source, load_model(load_checkpoint(source), source))
    family = [source]
    for target in prune_to:
        pruned, report = prune_fastest_rounding(copy.deepcopy(models[source]), PruneTarget("params", target),
                                                example_size=size)
        family.append(f"{source} pruned to {target:,} (round_to {report['round_to']})")
        models[family[-1]] = pruned
    return models, family


def summary_lines(models: dict, family: list[str], record: dict) -> list[str]:
    costs = {name: model_cost(m, record["size"], latency=False) for name, m in models.items()}
    record["costs"] = costs
    family = family or [n for n, m in models.items() if not hasattr(m, "float_model")]  # else every fp32 model
    base = next(iter(models))
    lines = []
    for n, at in record["threads"].items():
        spreads = at["models"]
        ranks = rank_groups(spreads)
        lines.append(f"{n} thread(s), {record['size']}x{record['size']}, {record['runs']} interleaved runs, "
                     f"fp32 matmul 2048^3 {at['matmul_gflops']:.1f} GFLOP/s")
        for name in models:
            lines.append(f"  rank {ranks[name]}  {name:<45} {costs[name]['params']:>10,} params "
                         f"{costs[name]['macs'] / 1e9:6.3f} GMACs  {format_spread(spreads[name])}  "
                         f"{spreads[base]['median_ms'] / spreads[name]['median_ms']:.2f}x the first, "
                         f"{spreads[family[0]]['median_ms'] / spreads[name]['median_ms']:.2f}x {family[0]}")
        if len(family) > 1:
            rho = spearman([costs[m]["macs"] for m in family], [spreads[m]["median_ms"] for m in family])
            at["spearman_latency_macs"] = rho
            lines.append(f"  Spearman rank correlation of latency with MACs over {len(family)} models "
                         f"({family[0]} and its pruned copies): {rho:.3f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", required=True, help="a checkpoint, fp32 or int8 (repeatable); "
                                                                          "speed-ups are against the first")
    parser.add_argument("--prune-to", default="", help="comma-separated parameter targets to prune --prune-from to")
    parser.add_argument("--prune-from", default=None, help="the checkpoint to prune (default: the first --weights)")
    parser.add_argument("--size", type=int, default=512, help="image side timed (default: 512)")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed runs per model and thread count "
                                                               f"(default: {RUNS})")
    parser.add_argument("--json", default=None, help="also write the record here")
    args = parser.parse_args()
    models, family = gather(args.weights, args.prune_from, [int(t) for t in args.prune_to.split(",") if t], args.size)
    record = latency_record(models, args.size, runs=args.runs)
    print("\n".join(summary_lines(models, family, record)))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
