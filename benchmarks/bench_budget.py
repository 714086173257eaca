"""How close budgeted runs land to their budgets on this machine, idle or beside a load.

tests/test_budget.py checks what the budget logic computes, on a fake clock; this measures
the wall clock. It runs a budgeted `facekd distill` and a budgeted `facekd pipeline` as a user
runs them, each in a fresh process (so Python's start-up and torch's import count), and
prints each one's planned seconds beside those it spent: by the budget's own clock, and on the
wall clock for the whole process. With --load N it first starts N other training jobs (each an
unbudgeted `facekd distill` on the embedded sample, as a second user's run would be) and stops
them at the end. The 2-thread matmul rate, read just before the runs (beside the load, if any),
says how fast the machine was at the time.

    python benchmarks/bench_budget.py                 # idle
    python benchmarks/bench_budget.py --load 1        # beside one other training job
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from facekd.latency import matmul_gflops, num_threads

REPO = Path(__file__).resolve().parents[1]
# What the load runs: a training job with no budget and more epochs than the benchmark lasts.
LOAD_JOB = ["distill", "--teacher", "none", "--set", "resolutions=[[128, 100000]]"]


def facekd(*args: str) -> list[str]:
    """The command line of `facekd ARGS` on this checkout's code."""
    return [sys.executable, "-m", "facekd.app", *args]


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def timed_run(argv: list[str]) -> float:
    """Run a command to its end, its output discarded; return its wall seconds."""
    t0 = time.monotonic()
    subprocess.run(argv, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def start_load(n: int, scratch: Path) -> list[subprocess.Popen]:
    jobs = [subprocess.Popen(facekd(*LOAD_JOB, "--out", str(scratch / f"load{i}")), env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
    time.sleep(10 if n else 0)  # past their start-up and decoding, into training
    return jobs


def stop_load(jobs: list[subprocess.Popen]) -> None:
    for job in jobs:
        job.terminate()
    for job in jobs:
        job.wait()


def bench_distill(minutes: float, data: list[str], scratch: Path) -> dict:
    out = scratch / "distill"
    wall = timed_run(facekd("distill", "--teacher", "none", "--budget", str(minutes), "--out", str(out), *data))
    result = json.loads((out / "result.json").read_text())
    return {"planned_s": result["budget_s"], "spent_s": result["budget_spent_s"], "process_wall_s": wall,
            "epochs": result["epochs"], "images_seen": result["images_seen"]}


def bench_pipeline(minutes: float, data: list[str], scratch: Path) -> dict:
    out = scratch / "pipeline"
    wall = timed_run(facekd("pipeline", "--budget", str(minutes), "--out", str(out), *data))
    summary = json.loads((out / "summary.json").read_text())
    return {"planned_s": summary["budget_s"], "spent_s": summary["total_wall_s"], "process_wall_s": wall,
            "stages": {name: {k: stage.get(k) for k in ("planned_s", "wall_s", "images_seen")}
                       for name, stage in summary["stages"].items()}}


def print_run(name: str, minutes: float, run: dict) -> None:
    over = run["process_wall_s"] - run["planned_s"]
    print(f"{name} --budget {minutes:g}: planned {run['planned_s']:.1f} s, spent {run['spent_s']:.1f} s "
          f"(by the budget's clock), process wall {run['process_wall_s']:.1f} s: "
          f"{over:+.1f} s ({100 * over / run['planned_s']:+.0f}%)")
    for stage, info in run.get("stages", {}).items():
        planned = "" if info["planned_s"] is None else f"planned {info['planned_s']:5.1f} s, "
        images = "" if info["images_seen"] is None else f", {info['images_seen']} images trained"
        print(f"  {stage:<9} {planned}wall {info['wall_s']:5.1f} s{images}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="other training jobs to run beside (default: 0)")
    parser.add_argument("--distill-budget", type=float, default=0.5, help="minutes (default: 0.5)")
    parser.add_argument("--pipeline-budget", type=float, default=1.0, help="minutes (default: 1)")
    parser.add_argument("--data", default=None, help="dataset root (default: the embedded sample, smoke preset)")
    parser.add_argument("--json", default=None, help="also write the readings to this file")
    args = parser.parse_args()
    data = ["--data", args.data] if args.data else []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        jobs = start_load(args.load, scratch)
        try:
            with num_threads(2):
                gflops = matmul_gflops()
            load_avg = os.getloadavg()[0]
            distill = bench_distill(args.distill_budget, data, scratch)
            pipeline = bench_pipeline(args.pipeline_budget, data, scratch)
        finally:
            stop_load(jobs)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}; load: {args.load} other training job(s); "
          f"1-min load average {load_avg:.2f} before the runs; fp32 matmul 2048^3 at 2 threads: {gflops:.1f} GFLOP/s")
    print_run("distill", args.distill_budget, distill)
    print_run("pipeline", args.pipeline_budget, pipeline)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_jobs": args.load, "matmul_gflops_2_threads": gflops,
                                               "load_average": load_avg, "distill": distill,
                                               "pipeline": pipeline}, indent=2) + "\n")


if __name__ == "__main__":
    main()
