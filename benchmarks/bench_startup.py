"""What one image through solution/run.py costs beyond a bare `import torch`, measured side by
side: fresh interpreters alternate between `python -c "import torch"` and run.py on one
512x512 image, and the medians are compared. Then one run.py-like process times its phases
(imports, weight load, model build, first and second forward pass, decode and PNG write),
and the 2048^3 fp32 matmul rate places the machine. With --onnx, the ONNX export's
run_onnx.py joins the alternation, so its wall time, start-up included, is set beside run.py's.

    python benchmarks/bench_startup.py --rounds 9
    python benchmarks/bench_startup.py --run-py /tmp/old/solution/run.py   # another run.py, same image
    python benchmarks/bench_startup.py --onnx runs/onnx   # a folder from facekd export --format onnx

With --cli it times instead what a user waits for before the first line of `facekd --help`,
`facekd distill --help` and a bad argument (target: under 1 s each, issue 28), beside a bare
`import torch`, which the CLI must not wait for:

    python benchmarks/bench_startup.py --cli --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from facekd.latency import matmul_gflops

REPO = Path(__file__).resolve().parents[1]
IMAGE = next((REPO / "facekd" / "sample_data" / "val" / "images").glob("*.jpg"))

# run.py's own steps, one timer each, in a fresh interpreter (argv: solution folder, image)
PHASES = r"""
import sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
sys.path.insert(0, sys.argv[1])
import run
t.append(time.perf_counter())
torch.load(sys.argv[1] + "/ckpt.pth", map_location="cpu", weights_only=True)
t.append(time.perf_counter())
model, size = run.model_from_export(sys.argv[1] + "/ckpt.pth")
t.append(time.perf_counter())
rgb = run.load_rgb(sys.argv[2])
t.append(time.perf_counter())
for tta in (False, False, True):
    run.predict_mask(model, rgb, size, flip_tta=tta)
    t.append(time.perf_counter())
names = ["import torch", "import run.py's modules", "torch.load of ckpt.pth", "model_from_export (load + build)",
         "decode the image", "first forward pass", "second forward pass", "forward with flip TTA"]
for name, a, b in zip(names, t, t[1:]):
    print(f"  {name:<30} {1000 * (b - a):7.1f} ms")
"""


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


# what a user types, as fresh interpreters run it (python -m facekd.app is the console script's code)
CLI_CASES = {"facekd --help": ["--help"], "facekd distill --help": ["distill", "--help"],
             "facekd distill --bogus (an error)": ["distill", "--bogus"]}


def cli_startup(rounds: int) -> None:
    """Median wall time of each CLI_CASES command, and of `import torch` for scale."""
    def run(argv: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "facekd.app", *argv], capture_output=True, cwd=REPO)
        return time.perf_counter() - t0
    print(f"median of {rounds} fresh interpreters each (target: under 1 s)")
    for name, argv in CLI_CASES.items():
        run(argv)  # once untimed, for the page cache
        times = [run(argv) for _ in range(rounds)]
        print(f"  {name:<36} {statistics.median(times):.3f} s  (max {max(times):.3f})")
    bare = [wall([sys.executable, "-c", "import torch"]) for _ in range(rounds)]
    name = "python -c 'import torch' (for scale)"
    print(f"  {name:<36} {statistics.median(bare):.3f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating pairs of runs (default: 9)")
    parser.add_argument("--run-py", default=str(REPO / "solution" / "run.py"))
    parser.add_argument("--image", default=str(IMAGE))
    parser.add_argument("--onnx", default=None, help="folder with model.onnx and run_onnx.py to time beside run.py")
    parser.add_argument("--cli", action="store_true", help="time facekd --help and argument errors instead")
    args = parser.parse_args()
    if args.cli:
        cli_startup(args.rounds)
        return
    bare, solution, onnx = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_py = [sys.executable, args.run_py, "--input", args.image, "--output", f"{tmp}/mask.png"]
        run_onnx = [sys.executable, f"{args.onnx}/run_onnx.py", "--input", args.image, "--output", f"{tmp}/onnx.png"]
        wall(run_py)  # once untimed, so both sides start with the files in the page cache
        if args.onnx:
            wall(run_onnx)
        for _ in range(args.rounds):
            bare.append(wall([sys.executable, "-c", "import torch"]))
            solution.append(wall(run_py))
            if args.onnx:
                onnx.append(wall(run_onnx))
    b, s = statistics.median(bare), statistics.median(solution)
    print(f"{args.run_py} on one {args.image.rsplit('/', 1)[-1]}, {args.rounds} alternating rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  python -c 'import torch'  median {b:.3f} s  (min {min(bare):.3f})")
    print(f"  run.py, one image         median {s:.3f} s  (min {min(solution):.3f})")
    print(f"  run.py beyond the import  {s - b:+.3f} s (medians), {min(solution) - min(bare):+.3f} s (minima)")
    if onnx:
        o = statistics.median(onnx)
        print(f"  run_onnx.py, one image    median {o:.3f} s  (min {min(onnx):.3f}), {o / s:.2f} of run.py's median")
    print("phases, in one fresh process:")
    sys.stdout.flush()
    subprocess.run([sys.executable, "-c", PHASES, str(Path(args.run_py).parent), args.image], check=True)
    print(f"fp32 matmul 2048^3: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
