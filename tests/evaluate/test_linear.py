"""Fast linear probe and few-label subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluate.label_subset import label_subset
from evaluate.linear import LinearConfig, LinearProbe, linear, scaled_milestones, train_linear_probe


def test_subset_fraction_and_shots_are_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [100, 50, 10])
    sub = label_subset(labels, fraction=0.1, seed=1)
    assert np.bincount(labels[sub]).tolist() == [10, 5, 1]
    np.testing.assert_array_equal(sub, label_subset(labels, fraction=0.1, seed=1))
    assert not np.array_equal(sub, label_subset(labels, fraction=0.1, seed=2))
    shots = label_subset(labels, shots=4, seed=0)
    assert np.bincount(labels[shots]).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="class 2 has 10 train rows, fewer than shots = 20"):
        label_subset(labels, shots=20)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        label_subset(labels, fraction=1.5)


def test_milestones_scale_with_epochs() -> None:
    assert scaled_milestones(40) == [15, 30]
    assert scaled_milestones(8) == [3, 6]


def test_probe_standardises_with_fixed_statistics() -> None:
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0])
    probe = LinearProbe(mean, var, 2, eps=0.0)
    probe.fc.weight.data = torch.eye(2)
    probe.fc.bias.data.zero_()
    out = probe(torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0]]))
    probe.train()
    probe(torch.randn(8, 2) * 100)
    torch.testing.assert_close(probe.mean, mean)  # not updated by batches


def test_probe_learns_separable_features() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    x = np.eye(3, 6, dtype=np.float32)[labels] + 0.1 * rng.standard_normal((300, 6)).astype(np.float32)
    probe = train_linear_probe(x, labels, 3, epochs=5, batch_size=32, lr=0.1)
    pred = probe(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == labels).mean() > 0.95


def test_full_protocol_without_model_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="augmented linear protocol .* needs --model and --data"):
        LinearConfig(features="x", fast=False)


def test_linear_command_records_protocol(tmp_path) -> None:
    from tests.evaluate.stores import write_feature_dir

    root = write_feature_dir(str(tmp_path / "f"))
    result = linear(LinearConfig(features=root, epochs=30, batch_size=8, lr=0.1, shots=5))
    assert result["protocol"] == "compress-fast" and result["params"]["train_rows_used"] == 20
    assert result["metrics"]["linear_top1"] > 60.0
