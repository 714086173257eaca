"""Training throughput (images/s): facekd's path against a naive loop, same model and loss;
or, with --precision, the step time in fp32 and bf16 (autocast) for a student and a teacher.

facekd: decoded uint8 tensors cached in memory, batched tensor augmentation, channels_last.
naive:  per-sample PIL decode + PIL augmentation + ToTensor every step, NCHW, no cache.

    python benchmarks/bench_train.py --data data/celebamask-mini --model resfpn --size 256
    python benchmarks/bench_train.py --precision                  # resfpn, teacher_cpu at 384 and 512
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance

from facekd.config import RunConfig
from facekd.latency import matmul_gflops
from facekd.precision import autocast, cpu_has_fast_bf16
from facekd.data import find_pairs, load_split
from facekd.losses import training_loss
from facekd.inference import normalize
from facekd.labels import FLIP_PERMUTATION
from facekd.models import build_model, named_config
from facekd.transforms import AugmentConfig, train_batch


def naive_sample(pair, size: int):
    """What a first training script does: decode and augment one sample with PIL."""
    image = Image.open(pair.image).convert("RGB")
    mask = Image.open(pair.mask)
    if random.random() < 0.5:
        image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        mask = Image.fromarray(np.array(FLIP_PERMUTATION, dtype=np.uint8)[np.array(mask)])
    angle, scale = random.uniform(-15, 15), random.uniform(0.8, 1.25)
    image = image.rotate(angle, Image.BILINEAR).resize((int(size * scale),) * 2, Image.BILINEAR)
    mask = mask.rotate(angle, Image.NEAREST).resize((int(size * scale),) * 2, Image.NEAREST)
    image, mask = image.resize((size, size), Image.BILINEAR), mask.resize((size, size), Image.NEAREST)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(random.uniform(0.75, 1.25))
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return x, torch.from_numpy(np.asarray(mask).astype(np.int64))


def bench(step, batches: int) -> float:
    step(0)  # warm-up
    t0 = time.perf_counter()
    n = sum(step(i + 1) for i in range(batches))
    return n / (time.perf_counter() - t0)


def make_update(args, loss_fn, channels_last: bool):
    """A function that takes one optimiser step of a fresh model on (images, labels)."""
    model = build_model(named_config(args.model, args.size), allow_over_budget=True).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def update(images, labels):
        loss = loss_fn(model(images), images, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return update


def precision_step_times(models: list[str], sizes: list[int], batch_size: int, steps: int) -> list[dict]:
    """Median seconds of one training step (forward under autocast, fp32 loss, backward, AdamW)
    in fp32 and in bf16. The two precisions alternate step by step, so that a change in the
    machine's load falls on both alike. Random pixels: a step's cost does not depend on them."""
    loss_fn, cpu = training_loss(RunConfig(loss_weights={"ce": 1.0, "dice": 0.5})), torch.device("cpu")
    rows = []
    for name in models:
        for size in sizes:
            model = build_model(named_config(name, size), allow_over_budget=True).train()
            model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            images = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 19, (batch_size, size, size))
            times = {"fp32": [], "bf16": []}
            for i in range(steps + 1):
                for precision in times:
                    t0 = time.perf_counter()
                    with autocast(precision, cpu):
                        logits = model(images)
                    loss = loss_fn(logits.float(), images, labels)["loss"]
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if i:  # the first step of each is a warm-up
                        times[precision].append(time.perf_counter() - t0)
            fp32, bf16 = (float(np.median(times[p])) for p in ("fp32", "bf16"))
            rows.append({"model": name, "size": size, "fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16})
            print(f"{name:12s} {size:4d}  fp32 {fp32:.3f} s  bf16 {bf16:.3f} s  {fp32 / bf16:.2f}x", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", action="store_true",
                        help="time fp32 against bf16 training steps (--models, --sizes) instead")
    parser.add_argument("--models", nargs="+", default=["resfpn", "teacher_cpu"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[384, 512])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision (--precision)")
    parser.add_argument("--data", default="data/celebamask-mini")
    parser.add_argument("--model", default="resfpn")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    if args.precision:
        print(f"threads={torch.get_num_threads()} batch={args.batch_size} median of {args.steps} steps; "
              f"fp32 matmul 2048^3: {matmul_gflops():.1f} GFLOP/s; CPU bf16 arithmetic: {cpu_has_fast_bf16()}")
        precision_step_times(args.models, args.sizes, args.batch_size, args.steps)
        print(f"fp32 matmul 2048^3 after: {matmul_gflops():.1f} GFLOP/s")
        return
    cfg = RunConfig(loss_weights={"ce": 1.0, "dice": 0.5})
    loss_fn = training_loss(cfg)
    n_images = args.batch_size * (args.batches + 1)

    t0 = time.perf_counter()
    split = load_split(args.data, "train", args.size, limit=n_images, show_progress=False)
    decode_s = time.perf_counter() - t0
    fast_update, augment = make_update(args, loss_fn, True), AugmentConfig()

    def fast_step(i):
        idx = torch.arange(i * args.batch_size, (i + 1) * args.batch_size)
        fast_update(*train_batch(split.images[idx], split.masks[idx], augment)[:2])
        return args.batch_size

    pairs = find_pairs(args.data, "train")[:n_images]
    naive_update = make_update(args, loss_fn, False)

    def naive_step(i):
        samples = [naive_sample(p, args.size) for p in pairs[i * args.batch_size:(i + 1) * args.batch_size]]
        images = normalize(torch.stack([s[0] for s in samples]))
        naive_update(images, torch.stack([s[1] for s in samples]))
        return args.batch_size

    fast, naive = bench(fast_step, args.batches), bench(naive_step, args.batches)
    print(f"model={args.model} size={args.size} batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"facekd  {fast:7.2f} images/s  (one-off decode of {n_images} images: {decode_s:.1f} s)")
    print(f"naive   {naive:7.2f} images/s")
    print(f"speed-up {fast / naive:.2f}x")


if __name__ == "__main__":
    main()
