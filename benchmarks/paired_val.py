"""Two arms compared on the same val images: each checkpoint's val F (flip TTA, scored afresh),
each arm's mean and half-range over seeds, and the paired per-image difference with its
standard error. With 69 val masks an arm's mean alone has a standard error near 0.008;
pairing by image removes what the images share.

    python benchmarks/paired_val.py --data data/celebamask-mini \
        --a runs/a_s0/best.pt runs/a_s1/best.pt --b runs/b_s0/best.pt runs/b_s1/best.pt

Checkpoints are paired by position (seed 0 with seed 0, ...). The per-image difference is
b − a, the per-image scores first averaged over each arm's seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch

from facekd.data import load_split
from facekd.files import load_checkpoint
from facekd.evaluation import evaluate
from facekd.models import load_model


def per_image_fscores(model, val) -> torch.Tensor:
    """The challenge score of each val image (flip TTA): mean F1 over the classes its mask holds."""
    return torch.tensor(evaluate(model, val, model.input_size, flip_tta=True)["image_fscores"])


def checkpoint_fscores(path: str, val) -> torch.Tensor:
    return per_image_fscores(load_model(load_checkpoint(path), path), val)


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (b - a).double()
    return {"mean": float(diff.mean()), "se": float(diff.std() / math.sqrt(len(diff))),
            "images_better": int((diff > 0).sum()), "images_worse": int((diff < 0).sum())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--a", nargs="+", required=True, help="arm a's checkpoints, one per seed")
    parser.add_argument("--b", nargs="+", required=True, help="arm b's checkpoints, one per seed")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    val = load_split(args.data, "val", None, show_progress=False)
    scores = {arm: [checkpoint_fscores(p, val) for p in paths] for arm, paths in (("a", args.a), ("b", args.b))}
    out = {"images": len(val)}
    for arm, paths in (("a", args.a), ("b", args.b)):
        means = [float(s.mean()) for s in scores[arm]]
        out[arm] = {"checkpoints": paths, "val_f": means, "mean": statistics.mean(means),
                    "half_range": (max(means) - min(means)) / 2}
    out["per_seed"] = [paired(a, b) for a, b in zip(scores["a"], scores["b"])]
    out["paired"] = paired(torch.stack(scores["a"]).mean(0), torch.stack(scores["b"]).mean(0))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
