"""``compress-cache``: build, inspect and verify teacher-embedding caches.

A thin layer over library functions: the ``build`` options are generated from
``BuildConfig`` (defaults and help live there), errors are reported as one line by
``storage.cli_errors.compress_group``, and heavy modules (torch, zarr, h5py) are imported inside
the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cache_builder.build_config import BuildConfig
from storage.cli_errors import compress_group, one_line
from storage.config_options import config_file_option, config_from_params, config_options


@compress_group()
def main() -> None:
    """Cache a frozen teacher's L2-normalised embeddings (stage 1 of CompRess).

    A cache directory holds one store per split (CACHE/train, CACHE/val), each with a
    manifest that makes every row traceable to its image and every build resumable.
    """


def _split_paths(cache: str) -> list[str]:
    """The store paths of a cache directory (its split stores), or ``[cache]`` if it is one."""
    from storage.cache_layout import split_store_paths

    return split_store_paths(cache)


@main.command()
@click.argument("cache", default="./cache")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
def info(cache: str, as_json: bool) -> None:
    """Show counts, dims, dtype, teacher, provenance and completeness of CACHE (default ./cache)."""
    from cache_builder.pixel_source import PixelCopy, copy_of
    from storage import open_store

    stores = [open_store(p) for p in _split_paths(cache)]
    if as_json:
        click.echo(json.dumps({s.path: json.loads(s.manifest.to_json()) for s in stores}, indent=2))
        return
    for s in stores:
        m = s.manifest
        click.echo(f"{s.path}")
        click.echo(f"  rows x dim   : {m.n} x {m.d}" + (f" x {m.views} views" if m.views else ""))
        click.echo(f"  dtype        : {m.dtype} ({'L2-normalised' if m.normalized else 'not normalised'})")
        click.echo(f"  backend      : {m.backend}, {len(m.shards)} shards of {m.shard_size} rows")
        click.echo(f"  status       : {s.status()}")
        for key, value in m.provenance.items():
            click.echo(f"  {key:<13}: {value}")
        copy = copy_of(s.path)
        if copy is not None:
            pixels = PixelCopy.open(copy)
            state = "complete" if pixels.complete else f"{len(pixels.missing)} of {len(pixels.manifest['shards'])} shards missing"
            click.echo(f"  pixel copy   : {copy} ({pixels.settings.describe()}, {state})")


@main.command()
@click.argument("cache", default="./cache")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar per store.")
def verify(cache: str, progress: bool) -> None:
    """Re-read every shard of CACHE (all splits): checksums, counts, dtype, finiteness, unit norms,
    and each split's pre-resized copy (--pixels): every tar's sha256 and members against its index.

    Exits with status 1 and names the bad shard and row range when anything is wrong.
    """
    from cache_builder.pixel_source import copy_of, verify_copy
    from storage import open_store
    from storage import verify as verify_store

    ok = True
    for path in _split_paths(cache):
        report = verify_store(path, progress=progress)
        click.echo(report.summary())
        ok = ok and report.ok
        copy = copy_of(path)
        if copy is not None:  # the split's pre-resized copy (compress-cache build --pixels)
            problems = verify_copy(copy, open_store(path, check_files=False).manifest.fingerprint, progress=progress)
            click.echo("\n".join([f"{copy}: {'FAILED' if problems else 'OK'} (pre-resized copy)", *(f"  - {p}" for p in problems)]))
            ok = ok and not problems
    if not ok:
        sys.exit(1)


def _setup_logging() -> None:
    import logging
    import os

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[compress-cache] %(message)s")


@main.command()
@config_file_option
@click.option("--teacher", required=True,
              help="Teacher name (see `compress-cache list-teachers`), timm:<model_name> (any timm model), or `custom`.")
@click.option("--split", "split", multiple=True,
              help="Build only this split (repeatable, or comma-separated: --split train,val). Default: every split.")
@config_options(BuildConfig)
def build(teacher: str, split: tuple[str, ...], **params: Any) -> None:
    """Run a frozen teacher over every split of DATA and cache its L2-normalised embeddings in OUT.

    Rerunning the same command resumes an interrupted build (completed shards are kept).
    Under torchrun the shards are split across ranks.
    """
    splits = tuple(s.strip() for item in split for s in item.split(",") if s.strip()) or None
    cfg = config_from_params(BuildConfig, params, teacher=teacher, splits=splits)  # every option checked before any work
    _setup_logging()
    from cache_builder.build import BuildError, build_cache
    from cache_builder.dataset import BadImageError

    try:
        build_cache(cfg)
    except BadImageError as e:  # from a DataLoader worker it carries the worker's traceback: keep the message
        raise BuildError(f"{one_line(e)} (rerun with --skip-bad to record unreadable images in the manifest and skip them)") from e


@main.command("list-teachers")
@click.option("--flops/--no-flops", default=True, show_default=True, help="Show GFLOPs at 224 px.")
@click.option("--sources/--no-sources", default=True, show_default=True, help="Show where each teacher's weights come from.")
def list_teachers(flops: bool, sources: bool) -> None:
    """Registered teachers: name, architecture, embedding and dim, parameters, GFLOPs at 224 px,
    accepted checkpoint layouts and the public source of the weights.

    The counts are recorded in the teacher specs: nothing is built, nothing is downloaded.
    """
    from cache_builder.teachers import CUSTOM, TEACHERS
    from cache_builder.vit_teachers import TIMM_PREFIX, VIT_TEACHERS

    def row(name: str, arch: str, embedding: str, dim: object, params: int | None, gf: float | None, layouts: str) -> None:
        p = f"{params / 1e6:.1f}M" if params is not None else "?"
        g = f"{gf:.1f}" if flops and gf is not None else "-"
        click.echo(f"{name:<24} {arch:<36} {embedding:<6} {dim!s:>5} {p:>8} {g:>7}  {layouts}")

    click.echo(f"{'name':<24} {'arch':<36} {'embed':<6} {'dim':>5} {'params':>8} {'GFLOPs':>7}  layouts")
    for name, spec in TEACHERS.items():
        row(name, spec.arch, spec.embedding, spec.embed_dim, spec.params, spec.gflops, spec.expected_layout())
        if sources:
            click.echo(f"{'':<24} source: {spec.source}")
    for name, vit in VIT_TEACHERS.items():
        row(name, f"timm {vit.arch}", vit.embedding, vit.embed_dim, vit.params, vit.gflops, vit.expected_layout())
        if sources:
            click.echo(f"{'':<24} source: {vit.source}")
    row(TIMM_PREFIX + "<model_name>", "any timm model (timm.list_models())", "pool", "?", None, None,
        "timm names; .pth/.safetensors or hub directory")
    row(CUSTOM, "--arch (any torchvision model)", "pool", "?", None, None, "keys under --prefix")
    click.echo("GFLOPs = 2 x multiply-adds of the headless network for one 224x224 image. ViT / timm teachers take "
               "--embedding cls|mean|cls+mean|pool (see docs/cache.md, \"Teachers\").")


if __name__ == "__main__":
    main()
