"""The CompRess objective as a module: banks (persistent buffers) + the pure loss.

Variants (docs/distill.md, "Method"):

* ``2q``: a teacher bank of teacher embeddings and a student bank of student embeddings of
  the *same* images, so anchor ``j`` describes one image in both spaces.
* ``2q-momentum``: as ``2q``, but the student bank is filled by an EMA copy of the student
  (the key student, owned by the trainer) — the reference code's default.
* ``1q``: one teacher bank; the student embedding goes through a linear projection to the
  teacher's dimension and is compared with the teacher bank (``a_j^s = a_j^t``). The
  projection is dropped at export.

Similarities are computed against the banks *before* the current batch is enqueued; the
caller enqueues after the loss (``enqueue``), so the loss never compares an image with itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import VARIANTS
from distill.loss import MASKED_LOGIT, compress_loss, similarity_logits
from distill.memory_bank import MemoryBank
from storage.errors import UsageError, unknown_name


def normalised_query(student_embeddings: torch.Tensor, projection: nn.Module | None) -> torch.Tensor:
    """``(B, D_s)`` student head output -> L2-normalised float32 query ``(B, D_s)``, or
    ``(B, D_t)`` through the 1q ``projection``."""
    if projection is not None:
        student_embeddings = projection(student_embeddings)
    return F.normalize(student_embeddings.float(), dim=1)


class CompRessObjective(nn.Module):
    """Holds the banks (and the 1q projection) and computes the loss for a batch.

    Args:
        variant: one of ``VARIANTS``.
        teacher_dim: D_t of the cached teacher embeddings.
        student_dim: D_s of the student head output.
        bank_size: number of anchors N.
        t_teacher, t_student: temperatures of the two softmaxes.
        bank_dtype: storage/matmul precision of the banks (bf16 on GPU, fp32 on CPU).
    """

    def __init__(
        self,
        variant: str,
        teacher_dim: int,
        student_dim: int,
        bank_size: int,
        t_teacher: float = 0.04,
        t_student: float = 0.04,
        bank_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise UsageError("--variant: " + unknown_name("variant", variant, VARIANTS))
        self.variant = variant
        self.t_teacher = float(t_teacher)
        self.t_student = float(t_student)
        self.teacher_bank = MemoryBank(bank_size, teacher_dim, bank_dtype)
        if variant == "1q":
            self.projection: nn.Linear | None = nn.Linear(student_dim, teacher_dim)
            self.student_bank: MemoryBank | None = None
        else:
            self.projection = None
            self.student_bank = MemoryBank(bank_size, student_dim, bank_dtype)

    @property
    def uses_key_student(self) -> bool:
        return self.variant == "2q-momentum"

    def student_query(self, student_embeddings: torch.Tensor) -> torch.Tensor:
        """L2-normalised student query ``(B, D_s)`` (``(B, D_t)`` after the 1q projection)."""
        return normalised_query(student_embeddings, self.projection)

    def logits(
        self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, row_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher_logits, student_logits)``, each ``(B, N)`` float32.

        Args:
            student_embeddings: ``(B, D_s)`` raw student head output (normalised here).
            teacher_embeddings: ``(B, D_t)`` cached, L2-normalised teacher embeddings.
            row_ids: ``(B,)`` dataset rows of the batch. Anchors that hold the query's own image
                (enqueued in an earlier epoch) are masked out of both distributions, so the
                loss never compares an image with itself. That happens once the bank holds a
                sizeable fraction of the dataset: a self-anchor takes most of the teacher's mass
                (similarity 1 / tau) and turns the target into instance discrimination.
        """
        return self.query_logits(self.student_query(student_embeddings), teacher_embeddings, row_ids)

    def query_logits(
        self, query: torch.Tensor, teacher_embeddings: torch.Tensor, row_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``logits``, from the already projected and normalised student query ``(B, D_q)``
        (``student_query``; computed inside the DDP-wrapped module during training)."""
        bank_dtype = self.teacher_bank.anchors.dtype
        teacher_query = F.normalize(teacher_embeddings.float(), dim=1).to(bank_dtype)
        with torch.no_grad():
            teacher_logits = similarity_logits(teacher_query, self.teacher_bank.anchors, self.t_teacher)
        student_anchors = self.teacher_bank.anchors if self.student_bank is None else self.student_bank.anchors
        student_logits = similarity_logits(query.to(bank_dtype), student_anchors, self.t_student)
        if row_ids is not None:
            own = row_ids.to(self.teacher_bank.row_ids.device)[:, None] == self.teacher_bank.row_ids[None, :]
            teacher_logits = teacher_logits.masked_fill(own, MASKED_LOGIT)
            student_logits = student_logits.masked_fill(own, MASKED_LOGIT)
        return teacher_logits, student_logits

    def forward(self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, row_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar CompRess loss of the batch against the current banks (``row_ids``: see
        ``logits``)."""
        return self.query_loss(self.student_query(student_embeddings), teacher_embeddings, row_ids)

    def query_loss(self, query: torch.Tensor, teacher_embeddings: torch.Tensor, row_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar loss from the student query ``(B, D_q)`` (see ``query_logits``)."""
        teacher_logits, student_logits = self.query_logits(query, teacher_embeddings, row_ids)
        return compress_loss(teacher_logits, student_logits)

    @torch.no_grad()
    def enqueue(self, teacher_embeddings: torch.Tensor, key_embeddings: torch.Tensor | None, row_ids: torch.Tensor | None = None) -> None:
        """Push the batch into the banks (after the loss). ``key_embeddings`` ``(B, D_s)`` are the
        student (2q) or key-student (2q-momentum) embeddings of the same images; None for 1q."""
        self.teacher_bank.enqueue(F.normalize(teacher_embeddings.float(), dim=1), row_ids)
        if self.student_bank is not None:
            if key_embeddings is None:
                raise ValueError(f"variant {self.variant} needs the student embeddings of the batch to enqueue")
            self.student_bank.enqueue(F.normalize(key_embeddings.float(), dim=1), row_ids)

    @torch.no_grad()
    def fill(self, teacher_embeddings: torch.Tensor, key_embeddings: torch.Tensor | None, row_ids: torch.Tensor) -> None:
        """Initialise the banks from real embeddings of ``bank_size`` images (instead of the
        reference code's uniform noise, which makes the first steps compare against noise)."""
        self.teacher_bank.fill(F.normalize(teacher_embeddings.float(), dim=1).to(self.teacher_bank.anchors.dtype), row_ids)
        if self.student_bank is not None:
            if key_embeddings is None:
                raise ValueError(f"variant {self.variant} needs student embeddings to fill the student bank")
            self.student_bank.fill(F.normalize(key_embeddings.float(), dim=1).to(self.student_bank.anchors.dtype), row_ids)


class QueryNetwork(nn.Module):
    """The trained parameters as one module, which is what DDP wraps (so the 1q projection's
    gradients are all-reduced with the student's).

    ``forward``: normalised images ``(B, 3, S, S)`` -> ``(head output (B, D_s), L2-normalised
    query (B, D_q))`` with ``D_q = D_t`` through the 1q projection, else ``D_s``.
    """

    def __init__(self, student: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.student(x)
        return out, normalised_query(out, self.projection)
