"""Which samples each step trains on, decided without hidden state, so a resumed run reads the same ones.

Every epoch is a permutation of the dataset indices drawn from a generator seeded by (seed, epoch); the
run walks through it and into the next epoch's. The position (epoch, index in the epoch) after the last
step is saved in the checkpoint: a resumed run continues from it exactly (no DataLoader shuffling state
to lose). Each global batch is split the same way however many processes run:

    global batch of step s:  B indices taken from the walk
    process r of W:          the slice [r B/W, (r + 1) B/W)
    micro-batch j:           the next `micro_batch_size` of that slice; its random numbers come from
                             seed_for(seed, s, r * (B/W) / micro + j): a function of the global position
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import torch


def seed_for(*numbers: int) -> int:
    """A 64-bit seed mixed from several integers (numpy's SeedSequence): nearby inputs, unrelated streams."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, dtype=np.uint64)[0])


class DataOrder:
    """A walk through seeded per-epoch permutations of range(n); `take(k)` returns the next k indices."""

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0):
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(seed_for(self.seed, epoch))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            perm = self.permutation(self.epoch)
            chunk = perm[self.index : self.index + k - len(out)]
            out += chunk
            self.index += len(chunk)
            if self.index == self.n:  # epoch done: the next one has its own permutation
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def copy(self) -> DataOrder:
        return DataOrder(self.n, self.seed, self.epoch, self.index)


def micro_batches(
    order: DataOrder,  # a copy: the loader runs ahead of the training loop
    num_steps: int,  # steps left in the run
    batch_size: int,  # global batch B
    micro_batch_size: int,  # samples per forward pass
    rank: int,
    world_size: int,
) -> Iterator[list[int]]:
    """The dataset indices of every micro-batch this process reads, in order (a DataLoader batch_sampler)."""
    local = batch_size // world_size
    for _ in range(num_steps):
        indices = order.take(batch_size)  # the global batch of this step, the same in every process
        mine = indices[rank * local : (rank + 1) * local]  # this process's slice
        for j in range(0, local, micro_batch_size):
            yield mine[j : j + micro_batch_size]


class BatchSampler:
    """`micro_batches` as an iterable object with a length, the form `DataLoader(batch_sampler=...)` takes."""

    def __init__(self, *args, num_micro: int):
        self.args, self.num_micro = args, num_micro

    def __iter__(self):
        return micro_batches(*self.args)

    def __len__(self) -> int:
        return self.num_micro


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a batch (tensors, dicts, lists, tuples, dataclasses, objects with `.to`)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if hasattr(batch, "to"):  # e.g. minisvd.conditioning.Conditioning
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)}
        return dataclasses.replace(batch, **fields)
    return batch
