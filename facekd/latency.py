"""The one CPU latency measurement that models are compared and ranked by.

A latency read at one moment of a shared machine cannot rank two models: the other
processes come and go between the readings. So the compared models are timed together,
interleaved in rounds (each round times every model once, in a rotated order), at a fixed
thread count, after a warm-up, and each model gets the median and spread of its runs.
Two models are ranked only where their interquartile ranges do not overlap. The machine's
2048^3 fp32 matmul rate is recorded beside the figures, so they can be placed.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Mapping

import torch

RUNS = 20      # timed runs per model; the issue asks for at least 20
WARMUP = 2     # untimed calls per model first: allocation and kernel choice happen there
THREADS = (1, 2)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of an n^3 matmul at the current thread count: how fast this machine is now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


@contextmanager
def num_threads(n: int):
    """torch's intra-op thread count set to n for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def spread(times_ms: list[float]) -> dict:
    """Median, quartiles, min and max of a list of run times (ms)."""
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(times_ms), "max_ms": max(times_ms),
            "runs": len(times_ms)}


def time_interleaved(calls: Mapping[str, Callable[[], object]], runs: int = RUNS, warmup: int = WARMUP,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Run times (ms) of each call on `clock` (seconds), timed in `runs` rounds that take every
    call once. The order rotates each round, so no model always runs first, just after
    another's memory traffic."""
    names = list(calls)
    if not names:
        raise ValueError("no model to time")
    if runs < 4:
        raise ValueError(f"runs={runs}: a spread needs at least 4 runs")
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = clock()
            calls[name]()
            times[name].append(1000 * (clock() - t0))
    return times


@torch.no_grad()
def measure_latency(models: Mapping[str, torch.nn.Module], size: int | Mapping[str, int] = 512, threads: int = 1,
                    runs: int = RUNS) -> dict[str, dict]:
    """{name: spread} of one forward pass of one size x size image (channels_last) on the CPU,
    the models interleaved at `threads` threads; `size` may be one per model. Models are put
    in eval mode."""
    sizes = size if isinstance(size, Mapping) else {name: size for name in models}
    images = {s: torch.randn(1, 3, s, s).contiguous(memory_format=torch.channels_last) for s in set(sizes.values())}
    calls = {name: (lambda m=model.eval(), x=images[sizes[name]]: m(x)) for name, model in models.items()}
    with num_threads(threads):
        return {name: spread(t) for name, t in time_interleaved(calls, runs).items()}


def latency_record(models: Mapping[str, torch.nn.Module], size: int | Mapping[str, int] = 512, threads=THREADS,
                   runs: int = RUNS) -> dict:
    """What prune_report.json, sweep.json and the report store: each thread count's spreads
    and the matmul rate at that thread count, measured right after them."""
    record = {"size": size, "runs": runs, "threads": {}}
    for n in threads:
        by_model = measure_latency(models, size, n, runs)
        with num_threads(n):
            # 2 timed matmuls, not 10: the rate is steady, and every prune and report records one
            record["threads"][str(n)] = {"matmul_gflops": matmul_gflops(repeats=2), "models": by_model}
    return record


def rank_groups(spreads: Mapping[str, dict]) -> dict[str, int]:
    """A rank per model, fastest 1. Models are sorted by median; a model starts a new rank only
    when its interquartile range lies wholly above that of every model in the rank before, so
    models whose spreads overlap share a rank: the measurement cannot order them."""
    ranks, rank, ceiling = {}, 0, None
    for name, s in sorted(spreads.items(), key=lambda item: item[1]["median_ms"]):
        if ceiling is None or s["q1_ms"] > ceiling:
            rank, ceiling = rank + 1, s["q3_ms"]
        else:
            ceiling = max(ceiling, s["q3_ms"])
        ranks[name] = rank
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, ties given their mean rank."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        r = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in order[i:j + 1]:
                r[k] = (i + j) / 2 + 1
            i = j + 1
        return r
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("rank correlation needs two equal-length lists of at least two values")
    return statistics.correlation(ranks(xs), ranks(ys))


def format_spread(s: dict) -> str:
    return f"{s['median_ms']:.1f} ms [IQR {s['q1_ms']:.1f}-{s['q3_ms']:.1f}, range {s['min_ms']:.1f}-{s['max_ms']:.1f}]"
