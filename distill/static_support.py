"""The ``--bank static-faiss`` objective: anchors from the whole cached train split.

With a cache every training image's teacher vector is known, so instead of a FIFO queue of
recent batches each query i is compared with a *support* of

* its K nearest teacher neighbours over the whole train split (``distill.neighbours``,
  precomputed once with FAISS, the query itself excluded), and
* R random train rows shared by the batch, drawn from a generator seeded by
  ``(seed, step)`` (so a resumed run draws the same anchors); a random row equal to the
  query is masked out.

With ``tail_correction`` (the default) the random rows stand for the rest of the split: a
random row that is one of the query's neighbours is masked out too (the support holds it
already), and the others get the weight ``N / R`` (``log(N / R)`` added to their logits), so
that each softmax normaliser is an unbiased estimate of the sum over all other train rows
(``distill.loss``, "Tail correction"). Without it the K + R anchors are taken as they are.

All anchors are teacher vectors t_j; the student is compared with them through a linear
projection to D_t (as ``1q``; dropped at export):
teacher logits t_i . t_j / tau_t, student logits normalise(W s_i + b) . t_j / tau_s, loss
``distill.loss.static_support_loss`` (KL over the support).

The module has the trainer's bank-strategy interface of ``CompRessObjective``: ``forward``,
``query_loss``, ``student_query``, ``projection``, ``enqueue`` (here: advance the step counter), ``student_bank`` (None) and
``uses_key_student`` (False). Its state (projection, step counter) is in the state dict.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.loss import static_support_loss
from distill.objective import normalised_query


def is_among(candidates: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(B, R)`` bool: whether ``candidates[j]`` ``(R,)`` is one of ``rows[i]`` ``(B, K)``
    (a sort of each row and a binary search, O(B (K log K + R log K)), not a (B, R, K) compare)."""
    ordered = rows.sort(dim=1).values
    queries = candidates.to(ordered.dtype).unsqueeze(0).expand(rows.shape[0], -1).contiguous()
    position = torch.searchsorted(ordered, queries).clamp_(max=rows.shape[1] - 1)
    return ordered.gather(1, position) == queries


class StaticSupportObjective(nn.Module):
    """KL over K teacher neighbours + R random anchors per query.

    Args:
        teacher_embeddings: ``(N, D_t)`` the cached, L2-normalised train rows (float16 or
            float32, on the training device); not copied, not in the state dict.
        neighbours: ``(N, K)`` int32/int64 neighbour table on the same device.
        student_dim: D_s of the student head.
        random_anchors: R >= 0 shared random anchors per step.
        t_teacher, t_student: temperatures.
        seed: seeds the random anchors (with the step number).
        compute_dtype: matmul precision of the support logits (the run's bank precision, distill.precision).
        tail_correction: weight the random anchors as a sample of the whole split (above).
    """

    student_bank = None
    uses_key_student = False

    def __init__(
        self,
        teacher_embeddings: torch.Tensor,
        neighbours: torch.Tensor,
        student_dim: int,
        random_anchors: int = 4096,
        t_teacher: float = 0.04,
        t_student: float = 0.04,
        seed: int = 0,
        compute_dtype: torch.dtype = torch.float32,
        tail_correction: bool = True,
    ) -> None:
        super().__init__()
        if teacher_embeddings.dim() != 2 or neighbours.dim() != 2 or neighbours.shape[0] != teacher_embeddings.shape[0]:
            raise ValueError(
                f"neighbour table {tuple(neighbours.shape)} does not fit teacher embeddings {tuple(teacher_embeddings.shape)}; expected (N, K) and (N, D_t)"
            )
        if random_anchors < 0:
            raise ValueError(f"--random-anchors must be >= 0, got {random_anchors}")
        self.teacher_embeddings = teacher_embeddings
        self.neighbours = neighbours
        self.random_anchors = int(random_anchors)
        self.t_teacher = float(t_teacher)
        self.t_student = float(t_student)
        self.seed = int(seed)
        self.compute_dtype = compute_dtype
        self.tail_correction = bool(tail_correction)
        n = teacher_embeddings.shape[0]
        self.random_log_weight = math.log(n / self.random_anchors) if tail_correction and self.random_anchors else 0.0
        self.projection = nn.Linear(student_dim, teacher_embeddings.shape[1])
        self.step = 0  # steps taken; saved through get_extra_state

    def get_extra_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError(f"static-support state must be {{'step': int}}, got {state!r}")
        self.step = state["step"]

    def student_query(self, student_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D_s)`` -> L2-normalised projection ``(B, D_t)``."""
        return normalised_query(student_embeddings, self.projection)

    def random_rows(self, step: int) -> torch.Tensor:
        """``(R,)`` int64 random train rows of ``step`` (uniform, with replacement), on the
        device of the embeddings; a function of ``(seed, step)`` only."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randint(0, self.teacher_embeddings.shape[0], (self.random_anchors,), generator=g)
        device = self.teacher_embeddings.device
        if device.type == "cuda":  # pinned + asynchronous: no host sync per step
            return rows.pin_memory().to(device, non_blocking=True)
        return rows.to(device)

    def support(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(neighbour_anchors (B, K, D_t), random_anchors (R, D_t), valid (B, K + R))`` of the
        batch's dataset ``rows`` ``(B,)`` at the current step."""
        rows = rows.to(self.neighbours.device)
        neighbour_rows = self.neighbours.index_select(0, rows).long()  # (B, K)
        random_rows = self.random_rows(self.step)
        emb = self.teacher_embeddings
        neighbour_anchors = emb[neighbour_rows].to(self.compute_dtype)
        random_anchors = emb.index_select(0, random_rows).to(self.compute_dtype)
        random_valid = random_rows[None, :] != rows[:, None]  # (B, R)
        if self.tail_correction and self.random_anchors:
            random_valid &= ~is_among(random_rows, neighbour_rows)
        valid = torch.cat([torch.ones_like(neighbour_rows, dtype=torch.bool), random_valid], dim=1)
        return neighbour_anchors, random_anchors, valid

    def forward(self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar loss of the batch.

        Args:
            student_embeddings: ``(B, D_s)`` raw student head output.
            teacher_embeddings: ``(B, D_t)`` cached teacher rows of the batch.
            rows: ``(B,)`` their dataset rows (required: they select the neighbours).
        """
        return self.query_loss(self.student_query(student_embeddings), teacher_embeddings, rows)

    def query_loss(self, query: torch.Tensor, teacher_embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """As ``forward``, from the already projected and normalised student query ``(B, D_t)``
        (``student_query``; computed inside the DDP-wrapped module during training)."""
        if rows is None:
            raise ValueError("the static-faiss objective needs the batch's dataset rows")
        neighbour_anchors, random_anchors, valid = self.support(rows)
        teacher_queries = F.normalize(teacher_embeddings.float(), dim=1).to(self.compute_dtype)
        student_queries = query.to(self.compute_dtype)
        return static_support_loss(teacher_queries, student_queries, neighbour_anchors, random_anchors, self.t_teacher, self.t_student, valid,
                                   self.random_log_weight)

    @torch.no_grad()
    def enqueue(self, teacher_embeddings: torch.Tensor, key_embeddings: torch.Tensor | None, row_ids: torch.Tensor | None = None) -> None:
        """After the step: the support is static, only the step counter advances."""
        self.step += 1
