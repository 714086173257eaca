"""Which convolution shapes crash torch's CPU backward pass on this machine (issue 34).

torch 2.14.1's oneDNN killed training runs on batches of odd size: SIGSEGV (exit 139) for
batches of 3 and 5, a "double free" abort (134) for 7. The reduced case was a 1x1 stride-2
Conv2d 8->16 on a channels_last batch of 3, backward on 2 threads. A crash cannot be caught,
so every case here runs in a worker process: a worker that dies names the case it was on,
which is then rerun alone to confirm it, and a fresh worker carries on with the next case.

Each case is a forward and backward pass (a few times, fresh inputs) of one conv, or of a
whole `tiny` student in train mode, at a batch size, thread count and memory layout, with
oneDNN on; --onednn-off adds each case with oneDNN off, --guarded runs every case inside
facekd.cpu_kernels.safe_conv_backward (the training step's guard), which must leave no crash.

    python benchmarks/probe_conv_crash.py                  # the default grid, a minute or two
    python benchmarks/probe_conv_crash.py --guarded        # the same under facekd's guard
    python benchmarks/probe_conv_crash.py --batches 3 --threads 2 --hw 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (in, out, kernel, stride): the reported case, the student's other shortcut widths, and a
# 3x3 stride-2 and a 1x1 stride-1 conv beside them, to tell the shape from the layer kind
CONVS = [(8, 16, 1, 2), (16, 32, 1, 2), (32, 64, 1, 2), (8, 16, 3, 2), (8, 16, 1, 1)]


def run_case(case: dict) -> None:
    """One case, in the worker: forward and backward `repeats` times on fresh random inputs."""
    import contextlib

    import torch
    torch.set_num_threads(case["threads"])
    torch.backends.mkldnn.enabled = case["onednn"]
    layout = torch.channels_last if case["channels_last"] else torch.contiguous_format
    if case["kind"] == "student":
        from facekd.models import build_model, named_config
        model, channels = build_model(named_config("tiny", case["hw"])).train(), 3
    else:
        cin, cout, kernel, stride = case["conv"]
        model, channels = torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), cin
    model = model.to(memory_format=layout)
    guard = contextlib.nullcontext()
    if case["guarded"]:
        from facekd.cpu_kernels import safe_conv_backward
        guard = safe_conv_backward(case["batch"], "cpu")
    with guard:
        for _ in range(case["repeats"]):
            x = torch.randn(case["batch"], channels, case["hw"], case["hw"]).contiguous(memory_format=layout)
            model(x.requires_grad_()).square().mean().backward()


def worker() -> None:
    """Read one JSON case a line from stdin; print 'ok N' after each case that survived."""
    for line in sys.stdin:
        case = json.loads(line)
        run_case(case)
        print(f"ok {case['index']}", flush=True)


def run_in_workers(cases: list[dict]) -> dict[int, tuple[int, str]]:
    """{case index: (exit status, last line of stderr)} of every case whose worker died on it."""
    crashed, start = {}, 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    while start < len(cases):
        done = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True,
                              input="".join(json.dumps(c) + "\n" for c in cases[start:]))
        survived = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("ok ")]
        if done.returncode == 0:
            break
        bad = start + len(survived)
        crashed[cases[bad]["index"]] = done.returncode, (done.stderr.strip().splitlines() or [""])[-1]
        start = bad + 1
    return crashed


def describe(status: int, last_error: str) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name} (shell exit {128 - status})"
    return f"exit {status}: {last_error}"  # an exception, not a crash


def onednn_isa() -> str:
    """The instruction set oneDNN's kernels use here, which decides which kernels run."""
    probe = "import torch; torch.nn.Conv2d(8, 16, 1, 2)(torch.randn(3, 8, 16, 16))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_VERBOSE": "1"})
    lines = (done.stdout + done.stderr).splitlines()
    return next((line.split("isa:")[1].strip() for line in lines if "isa:" in line), "unknown")


def make_cases(args) -> list[dict]:
    cases = []
    onednn = (True, False) if args.onednn_off else (True,)
    shapes = [("conv", c) for c in CONVS] + [("student", None)]
    for (kind, conv), hw, batch, threads, cl, on in itertools.product(shapes, args.hw, args.batches, args.threads,
                                                                       (True, False), onednn):
        side = hw if kind == "conv" else hw * 4  # the student's stem brings its input down by 4
        if kind == "student" and side % 32:
            continue  # a student's input side is a multiple of its deepest stride
        cases.append({"index": len(cases), "kind": kind, "conv": conv, "hw": side,
                      "batch": batch, "threads": threads, "channels_last": cl, "onednn": on,
                      "guarded": args.guarded, "repeats": args.repeats})
    return cases


def label(case: dict) -> str:
    what = "tiny student" if case["kind"] == "student" else "Conv2d {}->{} {}x{} stride {}".format(
        case["conv"][0], case["conv"][1], case["conv"][2], case["conv"][2], case["conv"][3])
    layout = "channels_last" if case["channels_last"] else "contiguous"
    return (f"{what}, batch {case['batch']} of {case['hw']}x{case['hw']}, {case['threads']} thread(s), {layout}, "
            f"oneDNN {'on' if case['onednn'] else 'off'}" + (", guarded" if case["guarded"] else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, nargs="+", default=list(range(1, 9)), help="batch sizes (default: 1-8)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="thread counts (default: 1 2 4)")
    p.add_argument("--hw", type=int, nargs="+", default=[16, 32],
                   help="input sides of the conv cases; the student gets 4 times each (default: 16 32)")
    p.add_argument("--repeats", type=int, default=3, help="passes per case (default: 3)")
    p.add_argument("--onednn-off", action="store_true", help="also run every case with oneDNN off")
    p.add_argument("--guarded", action="store_true", help="run every case under facekd's safe_conv_backward")
    args = p.parse_args()
    if args.worker:
        worker()
        return 0
    import torch
    cases = make_cases(args)
    print(f"torch {torch.__version__}, oneDNN ISA {onednn_isa()}, {os.cpu_count()} CPUs; {len(cases)} cases")
    crashed = run_in_workers(cases)
    for index, (status, last_error) in sorted(crashed.items()):
        alone = run_in_workers([cases[index]])  # a crash left behind by an earlier case would name the wrong one
        print(f"CRASH {label(cases[index])}: {describe(status, last_error)}"
              + ("" if alone else " (not alone: an earlier case in its worker may have caused it)"))
    print(f"{len(crashed)} of {len(cases)} cases crashed" if crashed else f"no case crashed ({len(cases)} cases)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
