"""A guard around a crash in the CPU convolution kernels of the torch that facekd runs on.

Issue 34: with torch 2.14.1 (oneDNN 3.12), a training step on a batch of odd size killed
the process with no message: SIGSEGV for batches of 3 and 5, glibc's "double free" abort
for 7, and so for any run whose last batch held 3 (`--set train_limit=15`). The reduced
case is one 1x1 stride-2 Conv2d 8->16 on a channels_last batch of 3, backward on 2 threads;
it passes with oneDNN off or on one thread. It did not crash on the AVX2 machine these
lines were written on, nor under valgrind there (benchmarks/probe_conv_crash.py probes
any machine's shapes, each in its own process), so which CPU kernels crash depends on
the CPU: docs/GUIDE.md, "Odd batches on the CPU".

A crash cannot be caught, so a step is never tried first: on the CPU, with more than one
thread, a batch of odd size runs its forward and backward pass with oneDNN off. Torch's
own convolution then computes the same gradients (to float rounding), up to about twice as
slowly on the resfpn student; even batches, the presets' and the common case, keep oneDNN.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def conv_backward_at_risk(batch_size: int, device: torch.device | str) -> bool:
    """Whether a training step on `batch_size` images on `device` meets the oneDNN fault."""
    return torch.device(device).type == "cpu" and batch_size % 2 == 1 and torch.get_num_threads() > 1


@contextlib.contextmanager
def safe_conv_backward(batch_size: int, device: torch.device | str) -> Iterator[None]:
    """Run the block (a forward pass and its backward) with oneDNN off when the batch is at
    risk. Torch picks a convolution's kernel again for its backward pass, so the backward must
    run inside the block too, not only the forward."""
    if not conv_backward_at_risk(batch_size, device):
        yield
        return
    # the plain flag, not torch.backends.mkldnn.flags(), which also sets oneDNN's TF32 mode
    # and warns about Intel GPUs on every call
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
