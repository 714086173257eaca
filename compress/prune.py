"""Prune whole channels of a student to a target with torch-pruning's dependency graph.

torch-pruning has no "stop at N parameters" option, so the pruner is given a generous
maximum ratio spread over many small steps, and we recount after each step until the
target is met. Residual adds, concats and BatchNorms are kept consistent by the graph.

A target may be a latency, timed after each step at a fixed thread count. How channel
counts are rounded (round_to 8, 16 or 32) changes what the CPU kernels make of a width, so
by default each rounding prunes its own copy to the target, the results are timed side by
side, and choose_rounding keeps one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch_pruning as tp

import students
from facekd import challenge
from facekd.models import load_model
from facekd.labels import NUM_CLASSES
from facekd.latency import measure_latency
from facekd.registry import Registry

# How deep a target search may cut every layer; a target below what this ratio leaves is unreachable.
MAX_RATIO = 0.9
ROUND_TO = (8, 16, 32)
# A rounding whose result keeps less than this share of the size the closest rounding keeps
# has cut past a size target rather than met it (see choose_rounding).
NEAR_TARGET = 0.9
# Timed runs per latency check inside a target search: one check per pruning step, so fewer
# than the 20 a reported figure gets; the median of 8 is steady enough to stop on.
SEARCH_RUNS = 8


# A target's kind -> prune_to_target's keyword for it, the flag a user gives it with, and its
# key in prune_report.json's "target" (a format that --resume reads back from older runs).
KINDS = {"params": "target_params", "macs": "target_macs", "ratio": "ratio", "latency": "target_latency_ms"}
FLAGS = {"params": "--target-params", "macs": "--target-macs", "ratio": "--ratio", "latency": "--target-latency"}
RECORDED_AS = {"params": "params", "macs": "macs", "ratio": "ratio", "latency": "latency_ms"}


@dataclass(frozen=True)
class PruneTarget:
    """What to prune to: one `kind` of KINDS and its value. Latencies, a latency target's and
    those a prune report gives each stage, are timed on `threads` CPU threads."""
    kind: str
    value: float
    threads: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; choose from {sorted(KINDS)}")

    @classmethod
    def from_keywords(cls, threads: int = 1, **keywords) -> PruneTarget:
        """The one target set among prune_to_target's keywords (the others None)."""
        given = [(kind, keywords.get(key)) for kind, key in KINDS.items() if keywords.get(key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(FLAGS.values())}")
        return cls(*given[0], threads)

    @classmethod
    def from_record(cls, record: dict) -> PruneTarget:
        """The target a prune report's "target" holds (record())."""
        kind = next(kind for kind, key in RECORDED_AS.items() if record.get(key) is not None)
        return cls(kind, record[RECORDED_AS[kind]], record["threads"])

    @property
    def flag(self) -> str:
        return FLAGS[self.kind]

    def keywords(self) -> dict:
        """{prune_to_target's keyword for this kind: the value}."""
        return {KINDS[self.kind]: self.value}

    def record(self) -> dict:
        """The target as prune_report.json holds it: every kind's key, None but for this one's,
        then the thread count."""
        return {**{key: self.value if kind == self.kind else None for kind, key in RECORDED_AS.items()},
                "threads": self.threads}


@dataclass(frozen=True)
class PruneSettings:
    """How to prune, beside what to: the importance that ranks channels (IMPORTANCES), the
    channel rounding (ROUND_TO, or "auto" for the fastest of them, timed), and the student's
    pruning bounds when a sweep has found them already (check_targets), so that each of its
    targets is checked without pruning, and timing, the student again."""
    importance: str = "magnitude"
    round_to: int | str = "auto"
    bounds: dict | None = None


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """Convs that emit the class logits: pruning them would drop classes."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES]


@dataclass(frozen=True)
class Importance:
    make: Callable[[], tp.importance.Importance]  # a fresh torch-pruning importance per pruning run
    needs_gradients: bool = False                 # it reads .grad, which gradient_fn fills before each step


# how channels are ranked for pruning, by name (facekd prune --importance NAME)
IMPORTANCES = Registry("pruning importance")


def register_importance(name: str, needs_gradients: bool = False):
    def add(make):
        IMPORTANCES.add(name, Importance(make, needs_gradients))
        return make
    return add


@register_importance("magnitude")
def magnitude_importance():
    return tp.importance.GroupMagnitudeImportance(p=2)


@register_importance("taylor", needs_gradients=True)
def taylor_importance():
    return tp.importance.GroupTaylorImportance()


def _step_until(reached: Callable[[], bool], pruner, model: nn.Module, steps: int, gradient_fn) -> int:
    """Small pruner steps until `reached()`, or the schedule's end; returns the steps taken."""
    taken = 0
    for _ in range(steps):
        if reached():
            break
        if gradient_fn is not None:
            model.zero_grad(set_to_none=True)
            gradient_fn(model)
        pruner.step()
        taken += 1
    model.zero_grad(set_to_none=True)
    return taken


def prune_to_target(model: nn.Module, *, target_params: int | None = None, target_macs: int | None = None,
                    ratio: float | None = None, target_latency_ms: float | None = None, threads: int = 1,
                    importance: str = "magnitude", steps: int = 64, round_to: int = 8, example_size: int = 512,
                    gradient_fn: Callable[[nn.Module], None] | None = None) -> dict:
    """Prune `model` in place to exactly one of target_params, target_macs, ratio, target_latency_ms
    (one image at the model's input size, as it predicts, on `threads` CPU threads). gradient_fn(model)
    fills .grad before each step for an importance that needs gradients. Returns what was reached:
    params and MACs (at example_size, the challenge resolution) before and after."""
    PruneTarget.from_keywords(target_params=target_params, target_macs=target_macs, ratio=ratio,
                              target_latency_ms=target_latency_ms)
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"--ratio must be in (0, 1), got {ratio}")
    if IMPORTANCES[importance].needs_gradients and gradient_fn is None:
        raise ValueError(f"{importance} importance needs a gradient_fn")
    model = model.cpu().to(memory_format=torch.contiguous_format)
    was_training = model.training  # torch-pruning's graph tracing leaves the model in eval()
    example = torch.randn(1, 3, example_size, example_size)
    latency_size = getattr(model, "input_size", example_size)
    macs0 = tp.utils.count_ops_and_params(model, example)[0]
    params0 = challenge.count_params(model)  # trainable ones, as the challenge counts
    pruner = tp.pruner.BasePruner(
        model, example, importance=IMPORTANCES[importance].make(),
        pruning_ratio=ratio if ratio is not None else MAX_RATIO, iterative_steps=steps,
        ignored_layers=classifier_layers(model), round_to=round_to)

    def reached() -> bool:
        if ratio is not None:
            return False  # a ratio runs the whole schedule
        if target_params is not None:
            return challenge.count_params(model) <= target_params
        if target_latency_ms is not None:
            return search_latency(model, latency_size, threads) <= target_latency_ms
        return tp.utils.count_ops_and_params(model, example)[0] <= target_macs

    taken = _step_until(reached, pruner, model, steps, gradient_fn)
    model.train(was_training)
    macs1, _ = tp.utils.count_ops_and_params(model, example)
    report = {"params_before": params0, "params_after": challenge.count_params(model),
              "macs_before": int(macs0), "macs_after": int(macs1), "macs_at": example_size, "steps": taken,
              "latency_at": latency_size,
              "importance": importance, "round_to": round_to}
    if not (ratio is not None or reached()):
        raise _unreached(model, report, target_latency_ms, threads)
    return report


def _unreached(model: nn.Module, report: dict, target_latency_ms: float | None, threads: int) -> ValueError:
    size = report["latency_at"]
    if target_latency_ms is not None:  # the whole MAX_RATIO schedule ran: the model is at the floor
        return ValueError(f"--target-latency {target_latency_ms:g}: unreachable; cutting every layer by "
                          f"{MAX_RATIO:.0%} leaves {search_latency(model, size, threads):.1f} ms at {size}x{size}, "
                          f"{threads} thread(s)")
    return ValueError(f"pruning stopped at {report['params_after']:,} params / {report['macs_after']:,} MACs "
                      f"after {report['steps']} steps without reaching the target")


def pruning_bounds(model: nn.Module, threads: int = 1, latency: bool = False) -> dict:
    """What a target search can reach from `model` (left as it is): {"student_size", "floor",
    "macs_at"}, the params and MACs of the model and of the floor, every layer cut by MAX_RATIO;
    with latency=True also both latencies (ms) at their input size and `threads`, timed side by
    side, and "latency_at" and "threads". The search runs the MAX_RATIO schedule and stops
    early, and the widths each step leaves do not depend on the importance, so the whole
    schedule gives the floor exactly, without one latency check per step."""
    floor_model = copy.deepcopy(model)
    deepest = prune_to_target(floor_model, ratio=MAX_RATIO)
    size = {"params": deepest["params_before"], "macs": deepest["macs_before"]}
    floor = {"params": deepest["params_after"], "macs": deepest["macs_after"]}
    bounds = {"student_size": size, "floor": floor, "macs_at": deepest["macs_at"]}
    if latency:
        timed = measure_latency({"student": model, "floor": floor_model}, deepest["latency_at"], threads)
        size["latency"], floor["latency"] = timed["student"]["median_ms"], timed["floor"]["median_ms"]
        bounds.update(latency_at=deepest["latency_at"], threads=threads)
    return bounds


def check_targets(model: nn.Module, kind: str, targets: list, threads: int = 1, source="the student",
                  bounds: dict | None = None) -> dict:
    """The one check of prune targets, for a single prune and a sweep alike, before any work:
    `targets` (of one `kind`, from `source`'s `model`) must be listed once each, be positive and
    finite (a ratio in (0, 1)), and lie below the student's own size and no lower than the floor
    (check_target). Returns the bounds (pruning_bounds; empty for ratios), or checks against
    `bounds` given, as a sweep's targets are checked first by the sweep and then one by one."""
    if kind not in KINDS:
        raise ValueError(f"unknown target kind {kind!r}; choose from {sorted(KINDS)}")
    flag = FLAGS[kind]
    if not targets:
        raise ValueError(f"{flag}: give at least one target")
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ValueError(f"{flag}: {twice[0]} is listed twice")
    for t in targets:  # before the bounds, which cost a pruning and, for latency, timings
        if kind == "ratio" and not 0 < t < 1:
            raise ValueError(f"--ratio {t:g}: a pruning ratio must be in (0, 1)")
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"{flag} {t:g}: a target must be a positive number")
    if kind == "ratio":
        return {}
    bounds = bounds or pruning_bounds(model, threads, latency=kind == "latency")
    for t in targets:
        check_target(flag, kind, t, bounds, source)
    return bounds


def check_target(flag: str, kind: str, value, bounds: dict, source) -> None:
    """Refuse a target of `kind` ("params", "macs" or "latency") that is not below the
    student's own size, or is below the floor (pruning_bounds), naming `source`."""
    def amount(v):
        if kind == "latency":
            return f"{v:.1f} ms at {bounds['latency_at']}x{bounds['latency_at']}, {bounds['threads']} thread(s)"
        return f"{v:,} {kind}"
    if value >= bounds["student_size"][kind]:
        raise ValueError(f"{flag} {value:,}: not below the student's own {amount(bounds['student_size'][kind])} "
                         f"({source})")
    if value < bounds["floor"][kind]:
        raise ValueError(f"{flag} {value:,}: unreachable; cutting every layer by {MAX_RATIO:.0%} leaves "
                         f"{amount(bounds['floor'][kind])} ({source})")


def search_latency(model: nn.Module, size: int, threads: int) -> float:
    """The median latency (ms) a target search stops on; the model is left in its mode."""
    was_training = model.training
    try:
        return measure_latency({"model": model}, size, threads, runs=SEARCH_RUNS)["model"]["median_ms"]
    finally:
        model.train(was_training)


def prune_fastest_rounding(model: nn.Module, target: PruneTarget, *, round_to: int | str = "auto",
                           importance: str = "magnitude", example_size: int = 512,
                           gradient_fn: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, dict]:
    """(pruned model, report) for one round_to, or for round_to="auto" the best of ROUND_TO:
    each prunes its own copy of `model` to the target, the copies are timed interleaved, and
    choose_rounding picks one. The report's "rounding" holds every candidate's size and
    latency spread."""
    def prune(copy_: nn.Module, r: int) -> dict:
        return prune_to_target(copy_, round_to=r, threads=target.threads, importance=importance,
                               example_size=example_size, gradient_fn=gradient_fn, **target.keywords())
    if round_to != "auto":
        if round_to not in ROUND_TO:
            raise ValueError(f"--round-to {round_to}: choose from {', '.join(map(str, ROUND_TO))} or auto")
        return model, prune(model, round_to)
    candidates, reports, failures = {}, {}, []
    for r in ROUND_TO:
        copy_ = copy.deepcopy(model)
        try:
            reports[r] = prune(copy_, r)
        except ValueError as e:  # coarse rounding can miss a target that finer rounding meets
            failures.append(str(e))
            continue
        if target.kind == "ratio" and reports[r]["params_after"] == reports[r]["params_before"]:
            failures.append(f"--ratio {target.value:g}: round_to {r} cuts nothing from these narrow layers")
            del reports[r]
            continue  # an uncut model is no answer to a ratio, however fast it times
        candidates[r] = copy_
    if not candidates:
        raise ValueError(failures[0])
    latency_size = getattr(model, "input_size", example_size)
    spreads = measure_latency({str(r): m for r, m in candidates.items()}, latency_size, target.threads)
    chosen = choose_rounding(reports, {r: spreads[str(r)] for r in candidates}, target)
    rounding = {"threads": target.threads, "size": latency_size, "chosen": chosen,
                "candidates": {str(r): {"params": reports[r]["params_after"], "macs": reports[r]["macs_after"],
                                        "latency": spreads[str(r)]} for r in candidates}}
    return candidates[chosen], {**reports[chosen], "rounding": rounding}


def choose_rounding(reports: dict[int, dict], spreads: dict[int, dict], target: PruneTarget) -> int:
    """The round_to to keep, from each candidate's prune report and latency spread.

    A latency target: the largest candidate that meets it. Each met it in its own search, by
    a shorter check; when none meets it on this retiming, the search stopped on noise near
    the target, and keeping one anyway would fine-tune and report a model slower than asked
    for, so that is an error giving the latency reached, before anything is written.
    Any other target: the candidate closest to the target, unless another near it (within
    NEAR_TARGET of the closest one's size, in the target's measure) runs faster per MAC beyond
    doubt: its whole interquartile range per MAC below the closest one's. Then the fastest
    per MAC of those. Coarse rounding moves widths in big jumps and can land far below a size
    target; plain "fastest" would reward that overshoot, whose lost accuracy is not free,
    where the point of rounding is speed at the size asked for. And on a busy machine two
    timings of the same models can order them either way: only a gap wider than the spread
    may change the model, so that two runs of one command prune alike."""
    if target.kind == "latency":
        ms = target.value
        meets = [r for r in reports if spreads[r]["median_ms"] <= ms]
        if not meets:
            r = min(reports, key=lambda r: spreads[r]["median_ms"])
            raise ValueError(f"--target-latency {ms:g}: no channel rounding meets it once the pruned candidates "
                             f"are timed side by side (fastest: round_to {r}, {spreads[r]['median_ms']:.2f} ms "
                             f"over {spreads[r]['runs']} runs); give a target of at least that")
        return max(meets, key=lambda r: reports[r]["params_after"])
    measure = "macs_after" if target.kind == "macs" else "params_after"
    closest = max(reports, key=lambda r: (reports[r][measure], -r))

    def per_mac(r: int, quantile: str) -> float:
        return spreads[r][quantile] / reports[r]["macs_after"]
    faster = [r for r in reports if reports[r][measure] >= NEAR_TARGET * reports[closest][measure]
              and per_mac(r, "q3_ms") < per_mac(closest, "q1_ms")]
    return min(faster, key=lambda r: per_mac(r, "median_ms"), default=closest)


def rebuild(model: nn.Module) -> tuple[nn.Module, dict]:
    """A fresh student built from the pruned model's plain config, with its weights:
    proof that the checkpoint needs no pickled module."""
    cfg = students.model_config(model)
    fresh = load_model({"model": model.state_dict(), "model_cfg": cfg}, source="pruned model")
    return fresh, cfg
