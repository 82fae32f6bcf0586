"""Defect 7: ``--features`` train and val stores must come from one model, and val labels
must be classes train knows; both are refused with one line naming the two stores and the field."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from evaluate.cli import main
from evaluate.errors import ProvenanceMismatchError
from evaluate.feature_set import load_feature_set
from tests.evaluate.stores import write_store

TEACHER = {"teacher": "moco_v2_r50", "arch": "resnet50", "weights_sha256": "sha256:" + "a" * 64, "preprocessing": "r256c224"}


def blobs(seed: int, n: int, classes: int = 4, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return np.eye(classes, d, dtype=np.float32)[labels] + 0.3 * rng.standard_normal((n, d)).astype(np.float32), labels


def feature_dir(root: str, train_prov: dict, val_prov: dict, val_labels: np.ndarray | None = None) -> str:
    x, y = blobs(0, 40)
    write_store(os.path.join(root, "train"), x, y, provenance={**train_prov, "split": "train"})
    xv, yv = blobs(1, 12)
    write_store(os.path.join(root, "val"), xv, yv if val_labels is None else val_labels, provenance={**val_prov, "split": "val"})
    return root


def test_stores_of_one_model_are_accepted(tmp_path) -> None:
    root = feature_dir(str(tmp_path / "f"), {**TEACHER, "started": "t0"}, {**TEACHER, "started": "t1"})
    assert load_feature_set(root).val.n == 12


def test_train_and_val_from_different_teacher_weights_are_refused(tmp_path) -> None:
    other = {**TEACHER, "weights_sha256": "sha256:" + "b" * 64}
    root = feature_dir(str(tmp_path / "f"), TEACHER, other)
    with pytest.raises(ProvenanceMismatchError) as err:
        load_feature_set(root)
    msg = str(err.value)
    assert "'weights_sha256'" in msg and os.path.join(root, "train") in msg and os.path.join(root, "val") in msg
    assert "sha256:aaaa" in msg and "sha256:bbbb" in msg


def test_eval_features_of_different_models_are_refused(tmp_path) -> None:
    a = {"model": {"kind": "torchvision", "name": "resnet18", "weights_sha256": None, "preprocessing": "p"}}
    b = {"model": {"kind": "torchvision", "name": "resnet34", "weights_sha256": None, "preprocessing": "p"}}
    with pytest.raises(ProvenanceMismatchError, match="'model.name' is 'resnet18' in .* but 'resnet34' in"):
        load_feature_set(feature_dir(str(tmp_path / "f"), a, b))


def test_a_model_recorded_by_only_one_store_is_refused(tmp_path) -> None:
    with pytest.raises(ProvenanceMismatchError, match="'teacher' is 'moco_v2_r50' in .* but not recorded in"):
        load_feature_set(feature_dir(str(tmp_path / "f"), TEACHER, {"model": "raw pixels"}))


def test_students_compare_by_weights_not_by_run_folder_name(tmp_path) -> None:
    a = {"model": {"kind": "student", "name": "run-a", "weights_sha256": "sha256:" + "c" * 64, "preprocessing": "p"}}
    b = {"model": {**a["model"], "name": "copy-of-run-a"}}
    assert load_feature_set(feature_dir(str(tmp_path / "f"), a, b)).train.n == 40
    c = {"model": {**a["model"], "weights_sha256": "sha256:" + "d" * 64}}
    with pytest.raises(ProvenanceMismatchError, match="'model.weights_sha256'"):
        load_feature_set(feature_dir(str(tmp_path / "g"), a, c))


def test_val_labels_unknown_to_train_are_refused(tmp_path) -> None:
    val_labels = np.array([0, 1, 2, 3, 7, 7, 9, 0, 1, 2, 3, -1])
    root = feature_dir(str(tmp_path / "f"), TEACHER, TEACHER, val_labels)
    with pytest.raises(ProvenanceMismatchError, match=r"val has labels that do not occur in .*train: field 'labels' values 7, 9 "
                                                      r"\(2 classes, 3 val rows\)"):
        load_feature_set(root)


def test_different_class_lists_are_refused(tmp_path) -> None:
    root = feature_dir(str(tmp_path / "f"), {**TEACHER, "classes": ["cat", "dog"]}, {**TEACHER, "classes": ["dog", "cat"]})
    with pytest.raises(ProvenanceMismatchError, match="provenance field 'classes'"):
        load_feature_set(root)


@pytest.mark.parametrize("command", ["knn", "linear", "cluster"])
def test_every_protocol_refuses_with_one_line_exit_1(tmp_path, command) -> None:
    root = feature_dir(str(tmp_path / "f"), TEACHER, {**TEACHER, "weights_sha256": "sha256:" + "b" * 64})
    extra = ["--clusters", "4"] if command == "cluster" else []
    res = CliRunner().invoke(main, [command, "--features", root, "--out", str(tmp_path / "r.json"), *extra])
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("Error: ")
    assert "weights_sha256" in res.output and not os.path.exists(tmp_path / "r.json")
