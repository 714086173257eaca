"""Multi-process training under torchrun: `torchrun --nproc_per_node N -m facekd <stage> ...`.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK for each process. Without them (or with a
world of one) every helper here is a no-op and no process group is ever created, so a
plain `facekd ...` runs exactly as a single process.

FACEKD_DUMP_FINAL_STATE=<dir> (debug only) makes every rank save its final model
state_dict to <dir>/rank{r}.pt, so tests can check that all ranks ended identical.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    return int(os.environ["RANK"]) if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ["LOCAL_RANK"]) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def pick_device() -> torch.device:
    """The GPU of this process's local rank (0 for a single process), else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def device_for(models, device):
    """Where `models` run together: `device`, or the CPU when any of them is marked cpu_only
    (an int8 model, whose quantized kernels exist for the CPU alone; moving it to a GPU would
    only move its scales there)."""
    if any(getattr(m, "cpu_only", False) for m in models):
        return torch.device("cpu")
    return device


def setup() -> None:
    """Join the process group once per process; safe to call from every stage."""
    if not is_distributed() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")
    # One process may run several stages (the pipeline fits three models), so the group
    # lives as long as the process and is torn down once, at exit.
    atexit.register(cleanup)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones
    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The reduction ("sum", "max", ...) over all ranks, as a new tensor on the input's device."""
    if not is_distributed():
        return tensor
    out = tensor.to(_device(), copy=True)
    dist.all_reduce(out, getattr(dist.ReduceOp, op.upper()))
    return out.to(tensor.device)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank src's tensor, on every rank, as a new tensor on the input's device."""
    if not is_distributed():
        return tensor
    out = tensor.to(_device(), copy=True)
    dist.broadcast(out, src)
    return out.to(tensor.device)


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same shape on all ranks), in rank order, on the input's device."""
    if not is_distributed():
        return [tensor]
    local = tensor.to(_device(), copy=True)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [t.to(tensor.device) for t in out]


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    if not is_distributed():
        return
    for buf in module.buffers():
        buf.copy_(broadcast(buf))


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, and everything the training loop
    asks of them together. With one process every method is a no-op, so the loop reads the
    same with and without torchrun: no branch on the rank or the world size of its own."""
    world: int = 1
    rank: int = 0

    @classmethod
    def join(cls) -> "Processes":
        setup()
        return cls(world_size(), rank())

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates and writes the run folder."""
        return self.rank == 0

    def agree(self, value: float) -> float:
        """Rank 0's value, on every rank: what all must decide alike (the budget's progress, the best score)."""
        return float(broadcast(torch.tensor(value, dtype=torch.float64)))

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank: a reason for all to stop together."""
        return bool(all_reduce(torch.tensor(float(flag)), "max").item())

    def reduce_epoch_stats(self, sums: dict, seen: int) -> tuple[dict, int]:
        """The epoch's summed loss terms and image count over every rank's images, not rank 0's share."""
        if self.world == 1:
            return sums, seen
        keys = sorted(sums)
        totals = all_reduce(torch.tensor([seen] + [sums[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, totals[1:].tolist())), int(totals[0])

    def share_buffers(self, model: torch.nn.Module) -> None:
        """The last forward updated each rank's BatchNorm statistics with its own batch: give
        every rank rank 0's, which are the ones rank 0 saves."""
        broadcast_buffers(model)

    def gather_rng(self, generator: torch.Generator) -> list[torch.Tensor]:
        """Each rank's augmentation RNG state, in rank order, for an exact resume."""
        return all_gather(generator.get_state())

    def barrier(self) -> None:
        barrier()


def dump_final_state(module: torch.nn.Module) -> None:
    """Debug hook for tests; see the module docstring."""
    out = os.environ.get("FACEKD_DUMP_FINAL_STATE")
    if out:
        os.makedirs(out, exist_ok=True)
        torch.save(module.state_dict(), os.path.join(out, f"rank{rank()}.pt"))
