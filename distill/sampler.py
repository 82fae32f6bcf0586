"""The order in which training images are visited: one seeded permutation per epoch, cut into
global batches, each rank taking its own disjoint slice.

``EpochBatchSampler`` holds the epoch (and the step to start at), so one persistent
``DataLoader`` serves every epoch: call ``set_epoch(epoch, start_step)`` before iterating the
loader. The batches are a pure function of ``(seed, epoch, rank, world)``: every rank draws the
same permutation, and a resumed run that starts at ``start_step`` sees exactly the batches the
uninterrupted run saw from there on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, row)`` keys of this rank, for one epoch at a time.

    Epoch ``e`` is ``randperm(n)`` seeded by ``(seed, e)``, cut into ``steps_per_epoch`` global
    batches of ``batch_size * world`` rows (the remainder is dropped); rank ``r`` takes rows
    ``[r * batch_size, (r + 1) * batch_size)`` of each global batch.

    Args:
        n: number of training images (dataset rows).
        batch_size: per-rank batch size B.
        seed: run seed.
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size <= 0 or world <= 0 or not 0 <= rank < world:
            raise ValueError(f"need batch_size > 0 and 0 <= rank < world, got batch_size={batch_size}, rank={rank}, world={world}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.start_step = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        """``(n,)`` int64: the order of rows in ``epoch`` (the same on every rank)."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))

    def global_batch_rows(self, epoch: int, step: int) -> torch.Tensor:
        """``(batch_size * world,)`` rows of global batch ``step`` of ``epoch``, in rank order
        (the order in which the all-gathered batch is enqueued into the banks)."""
        return self.permutation(epoch)[step * self.global_batch:(step + 1) * self.global_batch]

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make the next ``iter()`` yield ``epoch``'s batches from ``start_step`` on."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        self.epoch = epoch
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, perm = self.epoch, self.permutation(self.epoch)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = perm[step * self.global_batch:(step + 1) * self.global_batch][lo:hi]
            yield [(epoch, int(i)) for i in chunk]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step
