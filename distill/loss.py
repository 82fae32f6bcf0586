"""The CompRess loss as pure tensor functions (DESIGN.md section 2).

For a batch of B queries and a bank of N anchors (all L2-normalised):

    teacher_logits[i, j] = t_i . a_j^t / tau_t          (B, N)
    student_logits[i, j] = s_i . a_j^s / tau_s          (B, N)
    p_i(t) = softmax(teacher_logits[i])                 teacher similarity distribution
    p_i(s) = softmax(student_logits[i])                 student similarity distribution
    loss = 1/B sum_i KL(p_i(t) || p_i(s))
         = 1/B sum_i [ cross_entropy(p_i(t), p_i(s)) - entropy(p_i(t)) ]

The loss is computed in float32 whatever the precision of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_logits(queries: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scaled dot products ``queries @ anchors.T / temperature``.

    Args:
        queries: ``(B, D)``; anchors: ``(N, D)`` (same dtype; bf16 on GPU keeps the GEMM cheap).
    Returns:
        ``(B, N)`` logits in float32.
    """
    if queries.shape[-1] != anchors.shape[-1]:
        raise ValueError(f"queries have dimension {queries.shape[-1]}, anchors {anchors.shape[-1]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return (queries @ anchors.to(queries.dtype).T).float() / temperature


def teacher_distribution(teacher_logits: torch.Tensor) -> torch.Tensor:
    """``p(t)``: softmax over the bank, ``(B, N)``."""
    return F.softmax(teacher_logits.float(), dim=1)


def student_log_distribution(student_logits: torch.Tensor) -> torch.Tensor:
    """``log p(s)``: log-softmax over the bank, ``(B, N)``."""
    return F.log_softmax(student_logits.float(), dim=1)


def cross_entropy_term(p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """``1/B sum_i -sum_j p_ij(t) log p_ij(s)``."""
    return -(p_teacher * log_p_student).sum(dim=1).mean()


def teacher_entropy_term(p_teacher: torch.Tensor) -> torch.Tensor:
    """``1/B sum_i -sum_j p_ij(t) log p_ij(t)`` (constant w.r.t. the student)."""
    return -(torch.special.xlogy(p_teacher, p_teacher)).sum(dim=1).mean()


def compress_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence ``KL(p(t) || p(s))`` over the batch.

    Args:
        teacher_logits, student_logits: ``(B, N)`` similarities already divided by their
            temperatures.
    Returns:
        A scalar float32 tensor, >= 0, and 0 when the two logit rows give equal distributions.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} differ")
    return F.kl_div(student_log_distribution(student_logits), teacher_distribution(teacher_logits), reduction="batchmean")
