"""``BuildConfig``: every setting of a cache build, its default and its help text, in one place.

The ``compress-cache build`` options are generated from these fields
(``storage.config_options``); ``validate()`` checks every value before any work starts and
names the option at fault (``UsageError``, exit status 2). See docs/cache.md.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from cache_builder.devices import DEVICE_HELP
from storage.config_options import setting
from storage.errors import CompressError, UsageError

# the Parquet --data column options of every stage that reads images (cache_builder.parquet_source)
IMAGE_COLUMN_HELP = "Parquet --data: the column of image bytes [default: image/img/jpg, or the only binary column]."
LABEL_COLUMN_HELP = "Parquet --data: the column of class indices [default: label, if present]."

DATA_ENV = "COMPRESS_DATA"
DTYPES = ("float16", "float32")
BACKENDS = ("zarr", "hdf5")
AUGMENTS = ("none", "rrc")
DECODES = ("cpu", "gpu")
EMBEDDINGS = ("cls", "mean", "cls+mean", "pool")
PIXEL_FORMATS = ("jpeg", "png")  # --pixels-format (cache_builder.pixel_copy)


class BuildError(CompressError):
    """The build cannot proceed (refused resume, bad data); the message says why and what to do."""


def default_workers() -> int:
    """DataLoader workers per process: the node's cores shared by the local ranks, at most 8."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_ranks)))


@dataclass(frozen=True)
class BuildConfig:
    """Everything a cache build depends on. ``None`` fields are resolved by ``resolved()``.

    ``views``/``augment``/``seed``: ``views`` seeded RandomResizedCrop+flip views per image
    (``augment="rrc"``) instead of the center crop; the crop parameters go in column ``crops``.
    ``splits`` is set by the repeatable ``--split`` option.
    """

    teacher: str = setting("", "Teacher name (see `compress-cache list-teachers`), timm:<model_name>, or `custom`.", cli=False)
    weights: str | None = setting(None, "Local weights file (ViT / timm teachers: .pth, .safetensors or a hub directory with "
                                        "config.json + model.safetensors). Default: $COMPRESS_HOME/weights/<teacher>.pth "
                                        "($COMPRESS_HOME defaults to ~/.cache/compress).")
    embedding: str | None = setting(None, "ViT / timm teachers: cls (CLS token after the final norm), mean (of the patch "
                                          "tokens), cls+mean (both, 2D), pool (the model's own pooled / projected output). "
                                          "Default: the teacher's (DINO family cls, CLIP/SigLIP/timm pool).", choices=EMBEDDINGS)
    data: str | None = setting(None, "Split root (train/, val/), class-folder root, file list, or tar shards / Parquet files "
                                     "(a directory, a brace pattern such as train-{000..127}.tar, or an fsspec URL). "
                                     "Default: $COMPRESS_DATA or ./data.")
    root: str | None = setting(None, "Base directory of a file list's relative paths (default: the list's directory).")
    # sharded input (cache_builder.parquet_source)
    image_column: str | None = setting(None, IMAGE_COLUMN_HELP)
    label_column: str | None = setting(None, LABEL_COLUMN_HELP)
    out: str = setting("./cache", "Cache directory; one store per split (OUT/train, OUT/val).")
    arch: str | None = setting(None, "custom teacher: a torchvision model name.")
    prefix: str = setting("", "custom teacher: key prefix to strip (e.g. module.backbone.).")
    embed_layer: str | None = setting(None, "custom teacher: submodule whose (pooled) output is the embedding.")
    input_size: int | None = setting(None, "Override the crop size (default from the teacher spec, 224); ViT position "
                                           "embeddings are resampled to the new patch grid.")
    resize_size: int | None = setting(None, "Override the resize size (default input-size / the teacher's crop ratio, "
                                            "e.g. 256/224).")
    splits: tuple[str, ...] | None = setting(None, "Build only these splits.", cli=False)
    batch_size: int = setting(64, "Images per teacher forward.")
    workers: int | None = setting(None, "DataLoader workers per process (default: CPU cores / local ranks, at most 8).")
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("float16", "Embedding dtype in the store.", choices=DTYPES)
    backend: str = setting("zarr", "Store backend.", choices=BACKENDS)
    shard_size: int | None = setting(None, "Rows per shard (default about 64 MiB of embeddings).")
    views: int | None = setting(None, "K random views per image (needs --augment rrc; default 1 with rrc).")
    augment: str = setting("none", "none: one center crop per image; rrc: seeded RandomResizedCrop+flip views.", choices=AUGMENTS)
    seed: int = setting(0, "Seed of the random views.")
    skip_bad: bool = setting(False, "Record unreadable images in the manifest and skip them (default: stop at the first).")
    overwrite: bool = setting(False, "Replace an existing cache built with another teacher/weights/recipe.")
    compile: bool = setting(False, "torch.compile the teacher.")
    decode: str = setting("cpu", "gpu: decode JPEGs on the GPU with torchvision (falls back to the CPU without CUDA).",
                          choices=DECODES)
    amp: bool = setting(True, "bf16/fp16 autocast on GPU (ViT / timm teachers also hold their weights in bf16 there).")
    # the pre-resized training copy (cache_builder.pixel_copy)
    pixels: int | None = setting(None, "Also write a pre-resized training copy: every image with its short side at most SIZE "
                                       "px, in tar shards in OUT/pixels/<split>; compress-distill run then reads it instead of "
                                       "the original images (docs/cache.md). E.g. 256 for 224 px students.")
    pixels_format: str = setting("jpeg", "Format of the --pixels copy: jpeg (quality --pixels-quality) or png (lossless).",
                                 choices=PIXEL_FORMATS)
    pixels_quality: int = setting(90, "JPEG quality of the --pixels copy (1-100).")
    knn: bool = setting(True, "1-NN sanity check of val against train at the end.")
    progress: bool = setting(True, "Show progress bars.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UsageError`` naming the option of the first invalid value."""
        if not self.teacher:
            raise UsageError("--teacher is required (see `compress-cache list-teachers`)")
        for name, count in (("--batch-size", self.batch_size), ("--shard-size", self.shard_size),
                            ("--input-size", self.input_size), ("--resize-size", self.resize_size)):
            if count is not None and count <= 0:
                raise UsageError(f"{name} must be positive, got {count}")
        if self.pixels is not None and self.pixels <= 0:
            raise UsageError(f"--pixels must be a positive short-side size in pixels, got {self.pixels}")
        if not 1 <= self.pixels_quality <= 100:
            raise UsageError(f"--pixels-quality must be in 1-100, got {self.pixels_quality}")
        if self.pixels_format not in PIXEL_FORMATS:
            raise UsageError(f"--pixels-format must be one of {', '.join(PIXEL_FORMATS)}, got {self.pixels_format!r}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        for name, value, allowed in (("--dtype", self.dtype, DTYPES), ("--backend", self.backend, BACKENDS),
                                     ("--augment", self.augment, AUGMENTS), ("--decode", self.decode, DECODES)):
            if value not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.views is not None and (self.views <= 0 or self.augment != "rrc"):
            raise UsageError(f"--views {self.views} needs a positive count and --augment rrc")
        if self.decode == "gpu" and self.augment != "none":
            raise UsageError("--decode gpu supports center-crop caches only (not --augment rrc)")
        if self.input_size is not None and self.resize_size is not None and self.resize_size < self.input_size:
            raise UsageError(f"--resize-size {self.resize_size} must be >= --input-size {self.input_size}")
        if self.teacher != "custom" and (self.arch or self.prefix or self.embed_layer):
            raise UsageError(f"--arch/--prefix/--embed-layer apply to teacher 'custom' only, not {self.teacher!r}")
        if self.embedding is not None and self.embedding not in EMBEDDINGS:
            raise UsageError(f"--embedding must be one of {', '.join(EMBEDDINGS)}, got {self.embedding!r}")
        if self.teacher == "custom" and not self.arch:
            raise UsageError("teacher 'custom' needs --arch (a torchvision model name, e.g. resnet18)")
        _check_out(self.out)

    def resolved(self) -> BuildConfig:
        """Defaults filled in: weights path, data root, worker count, views for ``rrc``."""
        from cache_builder.teachers import default_weights_path

        return dataclasses.replace(
            self,
            weights=self.weights or default_weights_path(self.teacher),
            data=self.data or os.environ.get(DATA_ENV) or "./data",
            workers=self.workers if self.workers is not None else default_workers(),
            views=self.views if self.views is not None or self.augment == "none" else 1,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _check_out(out: str) -> None:
    """``--out`` must be (or be creatable as) a directory: no regular file on its way."""
    path = os.path.abspath(out)
    while True:
        if os.path.exists(path):
            if not os.path.isdir(path):
                where = "is" if path == os.path.abspath(out) else f"is under {path}, which is"
                raise UsageError(f"--out {out} {where} a regular file, not a directory")
            return
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
