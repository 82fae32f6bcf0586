"""Which train and val stores may be evaluated together (docs/evaluate.md, "Provenance").

A kNN, linear or cluster result compares val rows with train rows, so both stores must hold
features of the **same network** with the same preprocessing, and every val label must be a
class train knows. The stores' manifests record where their rows came from (their
``provenance``): ``compress-cache build`` writes the teacher's fields at the top level
(``teacher``, ``arch``, ``weights_sha256``, ``preprocessing``, ...), ``compress-eval
features`` writes the model's identity under ``model`` and the class names under ``classes``.

``check_same_model`` compares the identity fields both stores record (a field recorded by
only one of them is a mismatch too); ``check_val_labels`` checks the labels. Each raises
``ProvenanceMismatchError`` with one line naming the two stores and the field.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluate.errors import ProvenanceMismatchError

# provenance fields naming the network that computed a store's rows (``model.x`` = ``provenance["model"]["x"]``)
MODEL_FIELDS = ("teacher", "arch", "weights_sha256", "preprocessing", "embed_layer", "views", "augment",
                "model", "model.kind", "model.name", "model.weights_sha256", "model.preprocessing")
MISSING = object()


def model_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """The model-identity fields of a store's provenance, flattened (``model.weights_sha256``).

    ``model`` is kept whole only when it is not a dict (e.g. ``"raw pixels"``); a student's
    ``model.name`` (the run folder's name) is left out, its weights identify it.
    """
    out: dict[str, Any] = {}
    for key in ("teacher", "arch", "weights_sha256", "preprocessing", "embed_layer", "views", "augment"):
        if key in provenance:
            out[key] = provenance[key]
    model = provenance.get("model", MISSING)
    if isinstance(model, dict):
        for key in ("kind", "name", "weights_sha256", "preprocessing"):
            if key in model and not (key == "name" and model.get("kind") == "student"):
                out[f"model.{key}"] = model[key]
    elif model is not MISSING:
        out["model"] = model
    return out


def _show(value: Any) -> str:
    return "not recorded" if value is MISSING else repr(value)


def check_same_model(train_path: str, train_provenance: dict[str, Any], val_path: str, val_provenance: dict[str, Any]) -> None:
    """Refuse train and val stores whose provenance names different models.

    Stores that record no model identity at all (neither of them) are accepted: nothing says
    they differ.

    Raises:
        ProvenanceMismatchError: a model-identity field differs (or only one store records it).
    """
    a, b = model_identity(train_provenance), model_identity(val_provenance)
    if not a and not b:
        return
    for key in MODEL_FIELDS:
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if va != vb:
            raise ProvenanceMismatchError(
                f"{train_path} and {val_path} hold features of different models: provenance field {key!r} is "
                f"{_show(va)} in {train_path} but {_show(vb)} in {val_path}; extract both splits with the same model"
            )


def check_val_labels(train_path: str, train_provenance: dict[str, Any], train_labels: np.ndarray,
                     val_path: str, val_provenance: dict[str, Any], val_labels: np.ndarray) -> None:
    """Refuse val labels that train does not know.

    The class names (``classes``) must agree when both stores record them, and every val
    label other than ``-1`` (unknown) must occur in train.

    Raises:
        ProvenanceMismatchError: different class lists, or val labels absent from train.
    """
    ca, cb = train_provenance.get("classes", MISSING), val_provenance.get("classes", MISSING)
    if ca is not MISSING and cb is not MISSING and list(ca) != list(cb):
        raise ProvenanceMismatchError(
            f"{train_path} and {val_path} number their classes differently: provenance field 'classes' is "
            f"{_show(ca)} in {train_path} but {_show(cb)} in {val_path}"
        )
    known = np.unique(train_labels[train_labels >= 0])
    unknown = np.setdiff1d(np.unique(val_labels[val_labels >= 0]), known)
    if unknown.size:
        shown = ", ".join(str(int(c)) for c in unknown[:10]) + (", ..." if unknown.size > 10 else "")
        raise ProvenanceMismatchError(
            f"{val_path} has labels that do not occur in {train_path}: field 'labels' values {shown} "
            f"({unknown.size} classes, {int(np.isin(val_labels, unknown).sum())} val rows); "
            "train and val must come from the same labelled dataset"
        )
