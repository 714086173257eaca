"""Inference cost of a checkpoint on this machine's CPU:
latency for one 512x512 image, achieved GFLOP/s against a plain matmul's, and
`facekd predict` throughput over a folder.

    python benchmarks/bench_infer.py --weights solution/ckpt.pth --images data/celebamask-mini/val/images
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.app.predict import predict_paths
from facekd.latency import matmul_gflops
from facekd.profile import count_macs, cpu_latency_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="solution/ckpt.pth")
    parser.add_argument("--images", default="data/celebamask-mini/val/images")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.weights)
    model = load_model(ckpt, args.weights)
    size = ckpt["model_cfg"]["input_size"]  # a 512 image is resized to this before the forward pass
    macs = count_macs(model, size)
    latency = cpu_latency_ms(model, size, threads=torch.get_num_threads())
    achieved = 2 * macs / (latency / 1000) / 1e9
    peak = matmul_gflops()
    print(f"weights={args.weights} threads={torch.get_num_threads()} model input {size}")
    print(f"forward at {size}x{size}: {latency:.1f} ms, {macs / 1e9:.2f} GMACs -> {achieved:.1f} GFLOP/s")
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s; the forward pass reaches {100 * achieved / peak:.0f}% of it")
    with tempfile.TemporaryDirectory() as out:
        for tta in (True, False):
            result = predict_paths(args.weights, args.images, out, flip_tta=tta, show_progress=False)
            print(f"facekd predict (flip TTA {'on' if tta else 'off'}): {result['written']} images, "
                  f"{result['images_per_s']:.2f} images/s including decode and PNG writing")


if __name__ == "__main__":
    main()
