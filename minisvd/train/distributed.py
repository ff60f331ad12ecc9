"""Data-parallel training across processes (DistributedDataParallel), switched on by `torchrun`.

`torchrun --nproc_per_node=N -m minisvd train ...` (or `python -m torch.distributed.run ...`) starts N copies
of the command with RANK, LOCAL_RANK and WORLD_SIZE set, as nanoGPT's train.py reads them. With
WORLD_SIZE > 1 each process joins one process group (nccl on cuda, gloo on cpu), trains on its slice of
every global batch, and DDP averages the gradients. Only rank 0 writes files and shows a progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minisvd.device import pick_device


@dataclass
class Dist:
    rank: int = 0  # this process, 0 .. world_size - 1
    world_size: int = 1  # number of processes
    local_rank: int = 0  # this process on its machine: the cuda device it uses

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None) -> tuple[Dist, torch.device]:
    """Read torchrun's variables, join the process group if there are several processes, pick the device."""
    d = Dist(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    dev = pick_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no cuda device")
        dev = torch.device("cuda", d.local_rank if d.enabled else (dev.index or 0))
        torch.cuda.set_device(dev)
    if d.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum `t` over all processes (in place); a no-op in a single process."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
