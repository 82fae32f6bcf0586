"""A FIFO memory bank of anchor embeddings, kept as persistent buffers (so it is checkpointed)."""

from __future__ import annotations

import torch
from torch import nn


class MemoryBank(nn.Module):
    """``size`` anchors of dimension ``dim``; ``enqueue`` overwrites the oldest, wrapping around.

    Buffers: ``anchors (size, dim)``, ``pointer ()`` int64 (next slot to write),
    ``row_ids (size,)`` int64 (dataset row of each anchor, -1 if unknown).
    """

    anchors: torch.Tensor
    pointer: torch.Tensor
    row_ids: torch.Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"bank size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("anchors", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("row_ids", torch.full((size,), -1, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.anchors.shape[0]

    @torch.no_grad()
    def fill(self, anchors: torch.Tensor, row_ids: torch.Tensor | None = None) -> None:
        """Initialise the whole bank from real embeddings ``(size, dim)``."""
        if anchors.shape != self.anchors.shape:
            raise ValueError(f"fill needs {tuple(self.anchors.shape)} anchors, got {tuple(anchors.shape)}")
        self.anchors.copy_(anchors)
        if row_ids is not None:
            self.row_ids.copy_(row_ids)
        self.pointer.zero_()

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, row_ids: torch.Tensor | None = None) -> None:
        """Write ``(B, dim)`` embeddings at the pointer, wrapping around; no host sync."""
        batch = embeddings.shape[0]
        if batch > self.size:
            raise ValueError(f"cannot enqueue {batch} embeddings into a bank of {self.size}")
        slots = (self.pointer + torch.arange(batch, device=self.anchors.device)) % self.size
        self.anchors.index_copy_(0, slots, embeddings.to(self.anchors.dtype))
        if row_ids is not None:
            self.row_ids.index_copy_(0, slots, row_ids.to(self.row_ids.device))
        self.pointer.copy_((self.pointer + batch) % self.size)
