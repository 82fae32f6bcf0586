"""The CompRess loss as pure tensor functions (docs/distill.md, "Method").

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


# ---- the static support (``--bank static-faiss``) --------------------------------------------
#
# For query i the support is its K nearest teacher neighbours n_i1..n_iK over the whole train
# split plus R random anchors r_1..r_R shared by the batch (all teacher vectors):
#
#     teacher_logits[i] = [t_i . t_{n_ik} / tau_t]_k ++ [t_i . t_{r_j} / tau_t]_j     (B, K + R)
#     student_logits[i] = [q_i . t_{n_ik} / tau_s]_k ++ [q_i . t_{r_j} / tau_s]_j     (B, K + R)
#
# with q_i the L2-normalised projection of the student embedding to D_t (1q-style), and the
# loss is the same KL(p_i(t) || p_i(s)) as above, over the support. Support entries that must
# not count (a random anchor that is the query itself, or one of its neighbours, which the
# support holds already) get ``MASKED_LOGIT`` in both rows: their probability is exactly 0 and
# they add nothing to the loss or its gradient.
#
# Tail correction (``random_log_weight = log w``): the R random anchors are a uniform sample of
# the M = N - 1 - K rows outside the neighbourhood, so each stands for w = M / R of them. Adding
# log w to their logits (teacher and student alike) makes each row's softmax normaliser the
# unbiased estimate  sum_k exp(l_ik) + w sum_j exp(l_ij)  of the sum over all N - 1 anchors:
# the tail gets the weight it has in the full distribution instead of R / M of it (the
# sampled-softmax correction for a uniform proposal). With w = 1 the support is taken as is.

MASKED_LOGIT = -1e9


def neighbour_term(queries: torch.Tensor, neighbour_anchors: torch.Tensor) -> torch.Tensor:
    """``queries[i] . neighbour_anchors[i, k]``: ``(B, D)``, ``(B, K, D)`` -> ``(B, K)``."""
    if neighbour_anchors.dim() != 3 or neighbour_anchors.shape[0] != queries.shape[0] or neighbour_anchors.shape[2] != queries.shape[1]:
        raise ValueError(f"neighbour anchors {tuple(neighbour_anchors.shape)} do not fit queries {tuple(queries.shape)}; expected (B, K, D)")
    return torch.bmm(neighbour_anchors.to(queries.dtype), queries.unsqueeze(2)).squeeze(2)


def random_term(queries: torch.Tensor, random_anchors: torch.Tensor) -> torch.Tensor:
    """``queries[i] . random_anchors[j]``: ``(B, D)``, ``(R, D)`` -> ``(B, R)`` (one GEMM)."""
    if random_anchors.shape[-1] != queries.shape[-1]:
        raise ValueError(f"queries have dimension {queries.shape[-1]}, random anchors {random_anchors.shape[-1]}")
    return queries @ random_anchors.to(queries.dtype).T


def support_logits(
    queries: torch.Tensor,
    neighbour_anchors: torch.Tensor,
    random_anchors: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
    random_log_weight: float = 0.0,
) -> torch.Tensor:
    """Logits of each query over its support:
    ``[neighbour_term / temperature ++ random_term / temperature + random_log_weight]``.

    Args:
        queries: ``(B, D)`` L2-normalised.
        neighbour_anchors: ``(B, K, D)`` the anchors of each query's own neighbours.
        random_anchors: ``(R, D)`` anchors shared by the batch (``R`` may be 0).
        temperature: > 0.
        valid: optional ``(B, K + R)`` bool; False entries get ``MASKED_LOGIT``.
        random_log_weight: ``log w`` added to the random anchors' logits (tail correction).
    Returns:
        ``(B, K + R)`` float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = queries * (1.0 / temperature)
    random_logits = random_term(scaled, random_anchors).float()
    if random_log_weight:
        random_logits = random_logits + random_log_weight
    logits = torch.cat([neighbour_term(scaled, neighbour_anchors).float(), random_logits], dim=1)
    if valid is not None:
        if valid.shape != logits.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} does not match the support logits {tuple(logits.shape)}")
        logits = logits.masked_fill(~valid, MASKED_LOGIT)
    return logits


def static_support_loss(
    teacher_queries: torch.Tensor,
    student_queries: torch.Tensor,
    neighbour_anchors: torch.Tensor,
    random_anchors: torch.Tensor,
    t_teacher: float,
    t_student: float,
    valid: torch.Tensor | None = None,
    random_log_weight: float = 0.0,
) -> torch.Tensor:
    """Mean ``KL(p_i(t) || p_i(s))`` over each query's support of K neighbours + R random anchors.

    Args:
        teacher_queries: ``(B, D_t)`` L2-normalised teacher embeddings t_i.
        student_queries: ``(B, D_t)`` L2-normalised projected student embeddings q_i.
        neighbour_anchors: ``(B, K, D_t)`` teacher vectors of each query's neighbours.
        random_anchors: ``(R, D_t)`` teacher vectors of the shared random anchors.
        t_teacher, t_student: temperatures.
        valid: optional ``(B, K + R)`` bool mask of support entries that count.
        random_log_weight: ``log w``, the tail correction (see above); 0 takes the support as is.
    Returns:
        A scalar float32 tensor (gradient only through ``student_queries``).
    """
    with torch.no_grad():
        teacher_logits = support_logits(teacher_queries, neighbour_anchors, random_anchors, t_teacher, valid, random_log_weight)
    student_logits = support_logits(student_queries, neighbour_anchors, random_anchors, t_student, valid, random_log_weight)
    return compress_loss(teacher_logits, student_logits)
