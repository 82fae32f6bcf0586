"""The loss and the objective against a direct implementation of the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.loss import compress_loss, cross_entropy_term, similarity_logits, student_log_distribution, teacher_distribution, teacher_entropy_term
from distill.memory_bank import MemoryBank
from distill.objective import CompRessObjective


def direct_kl(t: torch.Tensor, s: torch.Tensor, bank_t: torch.Tensor, bank_s: torch.Tensor, tau_t: float, tau_s: float) -> float:
    """Per-element loops over the formula p_ij = exp(x_i.a_j/tau) / sum_k exp(x_i.a_k/tau)."""
    total = 0.0
    for i in range(t.shape[0]):
        zt = [math.exp(float(t[i] @ bank_t[j]) / tau_t) for j in range(bank_t.shape[0])]
        zs = [math.exp(float(s[i] @ bank_s[j]) / tau_s) for j in range(bank_s.shape[0])]
        pt = [z / sum(zt) for z in zt]
        ps = [z / sum(zs) for z in zs]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    return total / t.shape[0]


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).float()


def test_kl_terms_and_identity() -> None:
    t_logits, s_logits = torch.randn(5, 9), torch.randn(5, 9)
    pt, log_ps = teacher_distribution(t_logits), student_log_distribution(s_logits)
    kl = compress_loss(t_logits, s_logits)
    assert torch.allclose(kl, cross_entropy_term(pt, log_ps) - teacher_entropy_term(pt), atol=1e-5)
    assert kl >= 0
    assert compress_loss(s_logits, s_logits).abs() < 1e-6
    assert compress_loss(s_logits, s_logits + 3.0).abs() < 1e-6  # softmax is shift invariant


@pytest.mark.parametrize("variant", ["2q", "2q-momentum", "1q"])
def test_objective_equals_the_formula(variant) -> None:
    B, N, Dt, Ds, tau_t, tau_s = 4, 7, 6, 3, 0.04, 0.07
    obj = CompRessObjective(variant, Dt, Ds, N, tau_t, tau_s)
    teacher, student_raw = unit(B, Dt, seed=1), torch.randn(B, Ds)
    bank_t, bank_s = unit(N, Dt, seed=2), unit(N, Ds, seed=3)
    obj.fill(bank_t, None if variant == "1q" else bank_s, torch.arange(N))
    loss = obj(student_raw, teacher)
    if variant == "1q":
        query = F.normalize(obj.projection(student_raw), dim=1).detach()
        expected = direct_kl(teacher, query, bank_t, bank_t, tau_t, tau_s)
    else:
        expected = direct_kl(teacher, F.normalize(student_raw, dim=1), bank_t, bank_s, tau_t, tau_s)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_loss_is_zero_when_student_equals_teacher_space() -> None:
    x = unit(4, 8, seed=0)
    bank = unit(10, 8, seed=5)
    obj = CompRessObjective("2q", 8, 8, 10)
    obj.fill(bank, bank, torch.arange(10))
    assert obj(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_reaches_the_student_only() -> None:
    obj = CompRessObjective("1q", 6, 3, 5)
    obj.fill(unit(5, 6, seed=1), None, torch.arange(5))
    student = torch.randn(2, 3, requires_grad=True)
    obj(student, unit(2, 6, seed=2)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert obj.projection.weight.grad is not None
    assert not obj.teacher_bank.anchors.requires_grad


def test_bank_enqueue_wraps_around() -> None:
    bank = MemoryBank(5, 2)
    bank.enqueue(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    bank.enqueue(torch.full((3, 2), 2.0), torch.tensor([3, 4, 5]))
    assert bank.pointer.item() == 1
    assert bank.anchors[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]
    assert bank.row_ids.tolist() == [5, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot enqueue 6 embeddings into a bank of 5"):
        bank.enqueue(torch.ones(6, 2))
    assert "anchors" in bank.state_dict() and "pointer" in bank.state_dict()


def test_similarity_validation() -> None:
    with pytest.raises(ValueError, match="queries have dimension 3, anchors 4"):
        similarity_logits(torch.ones(2, 3), torch.ones(5, 4), 0.1)
    with pytest.raises(ValueError, match="unknown variant '3q'"):
        CompRessObjective("3q", 2, 2, 2)


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_an_image_is_never_compared_with_itself(variant) -> None:
    """With row ids, the anchors holding the query's own image drop out of both softmaxes:
    the loss equals the formula over the bank without them (per query)."""
    B, N, Dt, Ds = 3, 8, 6, 4
    obj = CompRessObjective(variant, Dt, Ds, N, 0.04, 0.07)
    bank_t, bank_s = unit(N, Dt, seed=2), unit(N, Ds, seed=3)
    bank_rows = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    obj.fill(bank_t, None if variant == "1q" else bank_s, bank_rows)
    rows = torch.tensor([11, 99, 16])  # queries 0 and 2 are in the bank, query 1 is not
    teacher, student_raw = unit(B, Dt, seed=4), torch.randn(B, Ds)
    loss = obj(student_raw, teacher, rows)
    query = obj.student_query(student_raw).detach()
    anchors_s = bank_t if variant == "1q" else bank_s
    expected = 0.0
    for i in range(B):
        keep = bank_rows != rows[i]
        expected += direct_kl(teacher[i:i + 1], query[i:i + 1], bank_t[keep], anchors_s[keep], 0.04, 0.07) / B
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert loss.item() != pytest.approx(obj(student_raw, teacher).item(), rel=1e-3)
    teacher_logits, _ = obj.logits(student_raw, teacher, rows)
    assert teacher_distribution(teacher_logits)[0, 1] == 0 and teacher_distribution(teacher_logits)[2, 6] == 0
