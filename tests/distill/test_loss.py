"""The loss and the objective against a direct implementation of the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.loss import (
    compress_loss,
    cross_entropy_term,
    neighbour_term,
    random_term,
    similarity_logits,
    static_support_loss,
    student_log_distribution,
    support_logits,
    teacher_distribution,
    teacher_entropy_term,
)
from distill.memory_bank import MemoryBank
from distill.objective import CompRessObjective
from distill.static_support import StaticSupportObjective, is_among


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


# ---- the static support (--bank static-faiss) ------------------------------------------------


def direct_support_kl(t, q, table, emb, neighbours, randoms, tau_t, tau_s, weight: float = 1.0, corrected: bool = False) -> float:
    """Loops over the formula: support of row i = its neighbours + the random rows that are not i
    (and, ``corrected``, not among its neighbours), each random row counted ``weight`` times."""
    total = 0.0
    for b, i in enumerate(table):
        own = [int(j) for j in neighbours[i]]
        tail = [int(r) for r in randoms if int(r) != int(i) and not (corrected and int(r) in own)]
        support = [(j, 1.0) for j in own] + [(j, weight) for j in tail]
        zt = [w * math.exp(float(t[b] @ emb[j]) / tau_t) for j, w in support]
        zs = [w * math.exp(float(q[b] @ emb[j]) / tau_s) for j, w in support]
        total += sum((a / sum(zt)) * math.log((a / sum(zt)) / (c / sum(zs))) for a, c in zip(zt, zs))
    return total / len(table)


@pytest.mark.parametrize("corrected", [True, False])
def test_static_support_loss_equals_the_formula(corrected) -> None:
    N, Dt, Ds, K, R, tau_t, tau_s = 12, 5, 3, 4, 6, 0.04, 0.07
    emb = unit(N, Dt, seed=1)
    neighbours = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(i))[:K + 1] for i in range(N)])
    neighbours = torch.stack([row[row != i][:K] for i, row in enumerate(neighbours)]).int()
    obj = StaticSupportObjective(emb, neighbours, Ds, random_anchors=R, t_teacher=tau_t, t_student=tau_s, seed=3, tail_correction=corrected)
    rows = torch.tensor([0, 5, 7])
    student_raw = torch.randn(3, Ds)
    randoms = obj.random_rows(0)
    randoms[0] = 5  # make sure one random anchor is a query itself (masked out)
    randoms[1] = neighbours[0, 2]  # and one is a neighbour of query 0 (masked out for it when corrected)
    obj.random_rows = lambda step: randoms  # type: ignore[method-assign]
    loss = obj(student_raw, emb[rows], rows)
    q = obj.student_query(student_raw).detach()
    weight = N / R if corrected else 1.0
    expected = direct_support_kl(emb[rows], q, rows, emb, neighbours, randoms, tau_t, tau_s, weight, corrected)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    loss.backward()
    assert obj.projection.weight.grad.abs().sum() > 0


def test_tail_corrected_support_normaliser_is_unbiased_for_the_whole_split() -> None:
    """Averaged over steps, sum_k exp(l_ik) + N/R sum_j exp(l_ij) over the support equals the
    sum over all other rows; without the correction it is far below."""
    N, D, K, R, tau = 60, 6, 5, 8, 0.5
    emb = unit(N, D, seed=5)
    sims = emb @ emb.T
    neighbours = torch.stack([torch.tensor([j for j in sims[i].argsort(descending=True).tolist() if j != i][:K]) for i in range(N)]).int()
    rows = torch.arange(N)
    exact = torch.exp(sims / tau).fill_diagonal_(0).sum(1)  # (N,) over all other rows
    estimates = {}
    for corrected in (True, False):
        obj = StaticSupportObjective(emb, neighbours, 3, random_anchors=R, t_teacher=tau, seed=0, tail_correction=corrected)
        total = torch.zeros(N)
        steps = 3000
        for step in range(steps):
            obj.step = step
            neighbour_anchors, random_anchors, valid = obj.support(rows)
            logits = support_logits(emb, neighbour_anchors, random_anchors, tau, valid, obj.random_log_weight)
            total += torch.exp(logits).sum(1)
        estimates[corrected] = total / steps
    assert torch.allclose(estimates[True], exact, rtol=0.05)
    assert (estimates[False] < 0.5 * exact).all()


def test_is_among_matches_a_direct_comparison() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 30, (7, 5), generator=g)
    candidates = torch.randint(0, 30, (40,), generator=g)
    expected = (candidates[None, :, None] == rows[:, None, :]).any(2)
    assert torch.equal(is_among(candidates, rows), expected)


def test_static_support_terms_and_zero_kl_when_logits_coincide() -> None:
    B, K, R, D = 3, 4, 5, 6
    queries, neigh, rand = unit(B, D, seed=0), unit(B, K, D, seed=1), unit(R, D, seed=2)
    logits = support_logits(queries, neigh, rand, 0.1)
    assert logits.shape == (B, K + R)
    assert torch.allclose(logits[:, :K], neighbour_term(queries, neigh) / 0.1) and torch.allclose(logits[:, K:], random_term(queries, rand) / 0.1)
    assert torch.allclose(logits[1, 2], queries[1] @ neigh[1, 2] / 0.1)
    assert static_support_loss(queries, queries, neigh, rand, 0.1, 0.1).abs() < 1e-6
    valid = torch.ones(B, K + R, dtype=torch.bool)
    valid[0, K] = False
    other = unit(B, D, seed=9)
    masked = static_support_loss(queries, other, neigh, rand, 0.1, 0.2, valid)
    assert torch.isfinite(masked) and masked > 0
    keep = torch.cat([torch.arange(K), torch.arange(K + 1, K + R)])  # row 0 without random anchor 0
    t0, s0 = support_logits(queries[:1], neigh[:1], rand, 0.1)[:, keep], support_logits(other[:1], neigh[:1], rand, 0.2)[:, keep]
    t12, s12 = support_logits(queries[1:], neigh[1:], rand, 0.1), support_logits(other[1:], neigh[1:], rand, 0.2)
    expected = (compress_loss(t0, s0) + 2 * compress_loss(t12, s12)) / 3
    assert masked.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"do not fit queries"):
        neighbour_term(queries, unit(B, K, D + 1, seed=3))


def test_static_support_random_anchors_depend_on_seed_and_step_only() -> None:
    emb = unit(50, 4, seed=0)
    table = torch.zeros(50, 2, dtype=torch.int32)
    a, b = StaticSupportObjective(emb, table, 3, 8, seed=1), StaticSupportObjective(emb, table, 3, 8, seed=1)
    assert torch.equal(a.random_rows(7), b.random_rows(7)) and not torch.equal(a.random_rows(7), a.random_rows(8))
    a.enqueue(emb[:2], None)
    state = a.state_dict()
    b.load_state_dict(state)
    assert b.step == 1 and "projection.weight" in state
