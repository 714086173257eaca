"""Parameters, MACs and single-image CPU latency for checkpoints, one line each.

MACs and latency are measured at the resolution each model predicts at (its input_size)
and, for comparison across models, at 512x512.

    python benchmarks/bench_cost.py runs/teacher/best.pt runs/distill/best.pt
"""

from __future__ import annotations

import argparse

import torch

from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.profile import model_cost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()}")
    print(f"{'checkpoint':<40} {'params':>10} {'size':>5} {'GMACs':>6} {'ms':>7} {'GMACs@512':>9} {'ms@512':>7} {'val F':>7}")
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        model = load_model(ckpt, path)
        own, at512 = model_cost(model), model_cost(model, 512)
        val = ckpt.get("val_fscore")
        print(f"{path:<40} {own['params']:>10,} {own['size']:>5} {own['macs'] / 1e9:>6.2f} {own['latency_ms']:>7.1f} "
              f"{at512['macs'] / 1e9:>9.2f} {at512['latency_ms']:>7.1f} {val if val is None else f'{val:.4f}':>7}")


if __name__ == "__main__":
    main()
