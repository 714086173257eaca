"""Cost of a distillation step, online against offline, next to a scratch step of the same
student on the same data, plus the one-time cost of the offline soft targets.

Each step is the engine's own (facekd.engine.train_one_epoch over one batch: augmentation,
forward, loss, backward, AdamW).
The three kinds of step take turns, so that load from other processes falls on all of them
alike; the per-step median is reported.

    python benchmarks/bench_distill.py --data data/celebamask-mini --images 96 --sizes 256 384 --steps 5
    python benchmarks/bench_distill.py --teacher runs/teacher/best.pt     # a real teacher (default: random teacher_cpu)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler

from distill.soft_targets import offline_soft_targets, output_stride, stored_size
from distill.teacher import frozen_teacher, teacher_paths
from facekd.losses import training_loss
from facekd.models import build_model, named_config
from facekd.challenge import count_params
from facekd.config import PRESETS, RunConfig
from facekd.data import load_split
from facekd.distributed import Processes
from facekd.engine import Counters, Parts, RunContext, train_one_epoch
from facekd.run_folder import TrainingRun
from facekd.schedule import FixedEpochs
from facekd.latency import matmul_gflops
from facekd.transforms import AugmentConfig, train_batch


def make_step(cfg: RunConfig, model, loss_fn, soft_targets):
    """step(split, idx): one step of the engine on the batch `idx` of `split`, without a run
    folder, validation or budget."""
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    parts = Parts(model=model, net=model, optimizer=optimizer,
                  scheduler=CosineLRScheduler(optimizer, t_initial=1000, t_in_epochs=False), ema=None,
                  loss_fn=loss_fn, augment=AugmentConfig.from_run_config(cfg),
                  generator=torch.Generator().manual_seed(cfg.seed), precision="fp32")
    run = TrainingRun(Path(tempfile.mkdtemp()), resume=False, writes=False, cfg=cfg, config_record={},
                      first_scalars={})
    ctx = RunContext(cfg=cfg, stage="bench", device=torch.device("cpu"), processes=Processes(), run=run,
                     length=FixedEpochs(cfg), val=None, model_cfg={}, n_params=count_params(model), saved_config={},
                     show_progress=False)
    counters = Counters()
    return lambda split, idx: train_one_epoch(parts, counters, ctx, split, idx, split.images.shape[-1], soft_targets)


def timed_step(step, split, idx: torch.Tensor) -> float:
    """One step as train_one_epoch takes it, stored targets' lookup included."""
    t0 = time.perf_counter()
    step(split, idx)
    return time.perf_counter() - t0


def added_ms(without, with_, reps: int = 10) -> float:
    """What `with_(arg)` costs beyond `without(arg)`, in ms: the two take turns and each keeps
    its fastest run, the one a busy machine disturbed least."""
    best = [float("inf"), float("inf")]
    for _ in range(reps + 1):
        for k, fn in enumerate((without, with_)):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return (best[1] - best[0]) * 1000


def offline_added_ms(cfg: RunConfig, split, targets: torch.Tensor, out_side: int) -> tuple[float, float]:
    """(ms, ms): what offline adds to a scratch step, timed alone, which a busy machine disturbs
    far less than whole steps: warping the stored maps with the batch, and the distillation
    terms' forward and backward."""
    b, loss_fn, augment = cfg.batch_size, training_loss(cfg, None), AugmentConfig.from_run_config(cfg)
    images, masks, soft = split.images[:b], split.masks[:b], targets[:b]
    batch = lambda soft_targets: train_batch(images, masks, augment, torch.Generator().manual_seed(0), soft_targets)
    _, labels, warped = batch(soft)

    def loss_step(scores):
        logits = torch.randn(b, warped.shape[1], out_side, out_side, requires_grad=True)
        loss_fn(logits, None, labels, scores)["loss"].backward()
    return (added_ms(lambda: batch(None), lambda: batch(soft)),
            added_ms(lambda: loss_step(None), lambda: loss_step(warped)))


def bench_size(cfg, args, size: int, kinds: dict, student, targets) -> None:
    """Median step time of each kind of step at one training size, interleaved step by step."""
    split = load_split(args.data, "train", size, args.images, show_progress=False)
    steps = {k: make_step(cfg, student(), loss_fn, soft) for k, (loss_fn, soft) in kinds.items()}
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in kinds}
    for step in range(args.steps + 1):  # step 0 warms up
        idx = order.roll(-step * cfg.batch_size)[:cfg.batch_size]
        for kind, step_fn in steps.items():
            seconds = timed_step(step_fn, split, idx)
            if step:
                times[kind].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    for kind in kinds:
        print(f"@{size} {kind:<8} {median[kind]:6.3f} s/step (median of {args.steps}; "
              f"min {min(times[kind]):.3f}, max {max(times[kind]):.3f}) {cfg.batch_size / median[kind]:5.2f} img/s "
              f"{median[kind] / median['scratch']:5.2f}x scratch "
              f"(by min {min(times[kind]) / min(times['scratch']):.2f}x)")
    warp_ms, loss_ms = offline_added_ms(cfg, split, targets, size // output_stride(student()))
    print(f"@{size} offline adds {warp_ms:.0f} ms (warping the stored maps) + {loss_ms:.0f} ms (distillation "
          f"terms, forward and backward) = {(warp_ms + loss_ms) / 10 / median['scratch']:.1f}% of a scratch step")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/celebamask-mini")
    parser.add_argument("--images", type=int, default=96, help="training pairs used (train_limit)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per kind and size, after one warm-up")
    parser.add_argument("--student", default="resfpn")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: teacher_cpu, random weights)")
    parser.add_argument("--teacher-size", type=int, default=384, help="input side of the random teacher")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the cpu preset's distillation recipe (CWD on logits), over the sizes benchmarked
    cfg = RunConfig(**{**PRESETS["distill"]["cpu"], "model": args.student, "train_limit": args.images,
                       "threads": args.threads, "resolutions": [[s, 1] for s in args.sizes]})
    if args.teacher:
        teacher, _ = frozen_teacher(args.teacher)
        teacher_name = args.teacher
    else:
        torch.manual_seed(0)
        teacher = build_model(named_config("teacher_cpu", args.teacher_size)).eval().requires_grad_(False)
        teacher_name = f"teacher_cpu (random weights) @{args.teacher_size}"

    def student():
        torch.manual_seed(cfg.seed)  # the same initial weights for every kind of step
        return build_model(named_config(cfg.model, max(args.sizes)))

    peak = matmul_gflops()
    targets, record = offline_soft_targets(cfg, teacher, teacher_paths(args.teacher), args.data, stored_size(cfg, student()),
                                           show_progress=False)
    print(f"threads={args.threads} fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    teacher_params = sum(p.numel() for p in teacher.parameters())  # frozen, so count_params would say 0
    print(f"student {cfg.model} ({count_params(student()):,} params), teacher {teacher_name} "
          f"({teacher_params:,} params), {args.images} train pairs of {args.data}, batch {cfg.batch_size}, losses "
          + " + ".join(f"{name} {weight:g}" for name, weight in cfg.loss_weights.items()))
    print(f"one-time soft targets: {record['seconds']:.1f} s for {record['shape'][0]} maps of "
          f"{record['size']}x{record['size']} (teacher at {record['teacher_input_sizes']}, flip TTA, decode included)")
    kinds = {"scratch": (training_loss(cfg, None), None),
             "online": (training_loss(cfg, teacher), None),
             "offline": (training_loss(cfg, None), targets)}
    for size in args.sizes:
        bench_size(cfg, args, size, kinds, student, targets)

if __name__ == "__main__":
    main()
