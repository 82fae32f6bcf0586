"""Test data: an image folder (``tests.images``) converted to WebDataset tar shards and to Parquet.

Rows keep the folder's listing order (classes sorted, then paths), so a cache built from the
shards must equal the folder build's row for row (only the path column differs).
"""

from __future__ import annotations

import io
import os
import tarfile

from cache_builder.image_list import discover_splits

# the tiny builds of the sharded-input and pre-resized-copy tests: resnet18 at 16 px, shards of 8 rows
TINY_BUILD = dict(teacher="custom", arch="resnet18", input_size=16, resize_size=16, batch_size=4, shard_size=8, workers=0,
                  progress=False, knn=False, dtype="float32", backend="hdf5")


def jpeg_folder_and_weights(base: str, train_per_class: int) -> tuple[str, str]:
    """``(folder, weights)``: ``base/folder`` with classes a and b of JPEGs of 8-24 px (short side;
    ``train_per_class`` train and 2 val images per class) and random resnet18 weights ``base/r18.pth``."""
    import torch
    import torchvision

    from tests.cache_builder import synthetic as syn
    from tests.images import write_image_folder

    folder = os.path.join(base, "folder")
    write_image_folder(folder, ("a", "b"), {"train": train_per_class, "val": 2}, size=16, jitter=8, seed=4, ext="jpg")
    weights = os.path.join(base, "r18.pth")
    torch.save(syn.randomize_(torchvision.models.resnet18(), seed=5).state_dict(), weights)
    return folder, weights


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def folder_to_tar(folder: str, out: str, per_shard: int = 4, labels: bool = True) -> str:
    """``out/<split>/shard-NNNNNN.tar`` with members ``<key>.<ext>`` (+ ``<key>.cls``); returns ``out``."""
    for split, images in discover_splits(folder).items():
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for start in range(0, len(images), per_shard):
            with tarfile.open(os.path.join(out, split, f"shard-{start // per_shard:06d}.tar"), "w") as tar:
                for i in range(start, min(start + per_shard, len(images))):
                    key = f"s{i:05d}"
                    ext = os.path.splitext(images.paths[i])[1].lstrip(".")
                    _add(tar, f"{key}.{ext}", images.read_bytes(i))
                    if labels:
                        _add(tar, f"{key}.cls", str(images.labels[i]).encode())
    return out


def folder_to_parquet(folder: str, out: str, struct: bool = True, row_group_size: int = 3, image_column: str = "image",
                      label_column: str = "label", decoy_column: str | None = None) -> str:
    """``out/<split>/part-0.parquet`` with an image column (``{"bytes", "path"}`` structs as
    Hugging Face ``datasets`` writes them, or raw bytes) and a label column, named
    ``image_column`` and ``label_column``; ``decoy_column``: a second binary column (each
    image's path), so the image column cannot be guessed. Returns ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, images in discover_splits(folder).items():
        os.makedirs(os.path.join(out, split), exist_ok=True)
        data = [images.read_bytes(i) for i in range(len(images))]
        column = [{"bytes": b, "path": p} for b, p in zip(data, images.paths)] if struct else data
        columns = {image_column: column, label_column: list(images.labels)}
        if decoy_column is not None:
            columns[decoy_column] = [p.encode() for p in images.paths]
        pq.write_table(pa.table(columns), os.path.join(out, split, "part-0.parquet"), row_group_size=row_group_size)
    return out
