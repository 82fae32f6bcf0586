"""A tiny image folder, a matching synthetic teacher cache, and the tiny run config that
distillation tests train with (plus readers of its metrics)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from cache_builder.image_decode import decode_image
from cache_builder.image_list import IDENTITY_COLUMN, IDENTITY_COLUMN_SPEC, discover_splits, file_identities
from distill.config import DistillConfig
from storage import create_store
from tests.images import write_image_folder

CLASSES = ("a", "b", "c", "d")


def make_images(root: str, per_class: int = 24, size: int = 16, seed: int = 0) -> str:
    """``root/train/<class>/NNN.png`` (classes ``CLASSES``): smooth random colour layouts tinted by
    class (``tests.images``, style "layout": content a student can learn, unlike pixel noise)."""
    write_image_folder(root, CLASSES, per_class, splits=("train",), size=size, seed=seed)
    return root


def make_cache(cache: str, data: str, dim: int = 32, seed: int = 0, teacher: str = "synthetic") -> str:
    """A teacher cache whose rows are a fixed random projection of each image's pixels
    (so image content determines the teacher's similarity structure)."""
    images = discover_splits(data)["train"]
    pixels = np.stack([np.asarray(decode_image(images.absolute(i)).resize((4, 4), Image.BILINEAR), np.float32).ravel()
                       for i in range(len(images))])
    pixels -= pixels.mean(0)
    proj = np.random.default_rng(seed).standard_normal((pixels.shape[1], dim)).astype(np.float32)
    emb = pixels @ proj
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    identities = file_identities(images)  # what compress-cache build records, so stage 2's content check passes
    writer = create_store(os.path.join(cache, "train"), len(images), dim, "float16", backend="hdf5", shard_size=40,
                          provenance={"teacher": teacher, "data_root": images.root}, columns={IDENTITY_COLUMN: IDENTITY_COLUMN_SPEC})
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, emb[a:b].astype(np.float16), labels=np.array(images.labels[a:b]), paths=list(images.paths[a:b]),
                           columns={IDENTITY_COLUMN: identities[a:b]})
    writer.finalize()
    return cache


def tiny(cache: str, out: str | None, **kw) -> DistillConfig:
    """A run of ``tiny_cnn`` on 16 px crops, bank 48, batch 16, 6 epochs, a metric line per step."""
    base = dict(cache=cache, out=out, student="tiny_cnn", dim=16, input_size=16, bank_size=48, batch_size=16, epochs=6,
                lr=0.1, lr_steps=(), crop_scale=(0.5, 1.0), workers=0, log_every=1, ckpt_every=1000, progress=False, probe_size=64)
    base.update(kw)
    return DistillConfig(**base)


def losses(out: str) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]


def agreements(out: str, key: str = "agreement") -> list[float]:
    """The probe metric ``key`` (``agreement``: top-1; ``overlap10``: top-10 overlap) per log line."""
    return [r[key] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if key in r]


def kill_and_resume(cmd: list[str], env: dict[str, str], out: str, after: int, deadline_s: float = 120) -> int:
    """Start ``cmd`` (a ``compress-distill run`` writing to ``out``) in a subprocess, SIGKILL it
    once ``metrics.jsonl`` holds at least ``after`` losses (or at ``deadline_s``), then rerun it
    to completion (asserting exit 0). Returns how many losses there were at the kill."""
    import signal
    import subprocess
    import time

    from tests.conftest import REPO_ROOT

    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + deadline_s
    while time.time() < deadline and (not os.path.exists(metrics) or len(losses(out)) < after):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(losses(out))
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return killed_at
