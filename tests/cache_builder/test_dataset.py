"""Sampler arithmetic, transforms and views in isolation."""

from __future__ import annotations

import torch

from cache_builder.dataset import ShardBatchSampler
from cache_builder.transforms import RRCViews, normalize_batch, sample_rrc, view_generator


def test_batches_never_cross_shards_and_cover_every_row_once() -> None:
    sampler = ShardBatchSampler([5, 4, 2], batch_size=3)
    batches = list(sampler)
    assert batches == [[0, 1, 2], [3, 4], [5, 6, 7], [8], [9, 10]]
    assert len(sampler) == 5


def test_normalize_batch_matches_formula() -> None:
    x = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)  # (1, 3, 1, 2)
    out = normalize_batch(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), -2.0)) and torch.allclose(out[0, :, 0, 1], torch.full((3,), 2.0))
    assert torch.equal(normalize_batch(x, None, None)[0, 0, 0], torch.tensor([0.0, 1.0]))


def test_normalisation_constants_are_made_once_per_device(monkeypatch) -> None:
    """The defect: stage 1 built its mean/std tensors on every batch (a blocking host-to-device
    copy per batch on a GPU). Stage 1 and stage 2 share one normalisation whose constants are
    made once per (mean, std, device)."""
    import cache_builder.transforms as transforms
    from distill.data import normalise

    made = []
    real_tensor = torch.tensor

    def counting_tensor(*args, **kwargs):
        made.append(kwargs.get("device"))
        return real_tensor(*args, **kwargs)

    if hasattr(transforms, "channel_constants"):
        transforms.channel_constants.cache_clear()
    monkeypatch.setattr(torch, "tensor", counting_tensor)
    x = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    first = normalize_batch(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    for _ in range(3):
        normalize_batch(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
        normalise(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))  # stage 2's name for the same function
    assert len(made) == 2  # mean and std, once
    expected = (real_tensor(0.0) - real_tensor((0.1, 0.2, 0.3)).view(1, 3, 1, 1)) / 0.5
    assert torch.allclose(first, expected.expand(2, 3, 4, 4))


def test_rrc_boxes_are_inside_the_image_and_seeded() -> None:
    for i in range(50):
        top, left, h, w = sample_rrc(60, 90, view_generator(3, i))
        assert 0 <= top and 0 <= left and top + h <= 60 and left + w <= 90 and h > 0 and w > 0
    assert sample_rrc(60, 90, view_generator(3, 7)) == sample_rrc(60, 90, view_generator(3, 7))
    assert sample_rrc(60, 90, view_generator(3, 7)) != sample_rrc(60, 90, view_generator(4, 7))


def test_rrc_views_shapes_and_determinism() -> None:
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    views = RRCViews(4, 24, seed=1)
    a, pa = views(img, index=5)
    b, pb = views(img, index=5)
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.uint8 and pa.shape == (4, 5)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert set(pa[:, 4].tolist()) <= {0.0, 1.0}
