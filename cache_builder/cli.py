"""``compress-cache``: build, inspect and verify teacher-embedding caches.

A thin layer over library functions; heavy modules (torch, zarr, h5py) are imported inside
the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import json
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    from storage import StoreError, open_store

    try:
        stores = [open_store(p) for p in _split_paths(cache)]
    except StoreError as e:
        raise click.ClickException(str(e)) from None
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


@main.command()
@click.argument("cache", default="./cache")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per store.")
def verify(cache: str, progress: bool) -> None:
    """Re-read every shard of CACHE (all splits): checksums, counts, dtype, finiteness, unit norms.

    Exits with status 1 and names the bad shard and row range when anything is wrong.
    """
    from storage import StoreError
    from storage import verify as verify_store

    try:
        reports = [verify_store(p, progress=progress) for p in _split_paths(cache)]
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    for r in reports:
        click.echo(r.summary())
    if not all(r.ok for r in reports):
        sys.exit(1)


def _setup_logging() -> None:
    import logging
    import os

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[compress-cache] %(message)s")


@main.command()
@click.option("--teacher", required=True, help="Teacher name (see `compress-cache list-teachers`) or `custom`.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Local weights file. Default: $COMPRESS_HOME/weights/<teacher>.pth ($COMPRESS_HOME defaults to ~/.cache/compress).")
@click.option("--data", default=None, help="Split root (train/, val/), class-folder root, or file list. Default: $COMPRESS_DATA or ./data.")
@click.option("--root", default=None, help="Base directory of a file list's relative paths (default: the list's directory).")
@click.option("--out", default="./cache", show_default=True, help="Cache directory; one store per split (OUT/train, OUT/val).")
@click.option("--arch", default=None, help="custom teacher: a torchvision model name.")
@click.option("--prefix", default="", help="custom teacher: key prefix to strip (e.g. module.backbone.).")
@click.option("--embed-layer", default=None, help="custom teacher: submodule whose (pooled) output is the embedding.")
@click.option("--input-size", type=int, default=None, help="Override the crop size (default from the teacher spec, 224).")
@click.option("--resize-size", type=int, default=None, help="Override the resize size (default input-size * 256/224).")
@click.option("--split", "splits", multiple=True, help="Build only these splits (repeatable).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=None, help="DataLoader workers per process (default: CPU cores / local ranks, at most 8).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--backend", type=click.Choice(["zarr", "hdf5"]), default="zarr", show_default=True)
@click.option("--shard-size", type=int, default=None, help="Rows per shard (default about 64 MiB of embeddings).")
@click.option("--views", type=int, default=None, help="K random views per image (needs --augment rrc).")
@click.option("--augment", type=click.Choice(["none", "rrc"]), default="none", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random views.")
@click.option("--skip-bad", is_flag=True, help="Record unreadable images in the manifest and skip them (default: stop).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache built with another teacher/weights/recipe.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the teacher.")
@click.option("--decode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: decode JPEGs on the GPU with torchvision (falls back to the CPU without CUDA).")
@click.option("--no-amp", is_flag=True, help="Disable bf16/fp16 autocast on GPU.")
@click.option("--no-knn", is_flag=True, help="Skip the 1-NN sanity check on val.")
@click.option("--progress/--no-progress", default=True)
def build(teacher, weights, data, root, out, arch, prefix, embed_layer, input_size, resize_size, splits, batch_size,
          workers, device, dtype, backend, shard_size, views, augment, seed, skip_bad, overwrite, compile_, decode,
          no_amp, no_knn, progress) -> None:
    """Run a frozen teacher over every split of DATA and cache its L2-normalised embeddings in OUT.

    Rerunning the same command resumes an interrupted build (completed shards are kept).
    Under torchrun the shards are split across ranks.
    """
    _setup_logging()
    from cache_builder.build import BuildConfig, BuildError, build_cache
    from cache_builder.checkpoints import CheckpointError
    from cache_builder.dataset import BadImageError
    from cache_builder.image_list import ImageListError
    from cache_builder.teachers import MissingWeightsError, UnknownTeacherError
    from storage import StoreError

    try:
        cfg = BuildConfig(
            teacher=teacher, weights=weights, data=data, root=root, out=out, arch=arch, prefix=prefix,
            embed_layer=embed_layer, input_size=input_size, resize_size=resize_size, splits=tuple(splits) or None,
            batch_size=batch_size, workers=workers, device=device, dtype=dtype, backend=backend, shard_size=shard_size,
            views=views, augment=augment, seed=seed, skip_bad=skip_bad, overwrite=overwrite, compile=compile_,
            decode=decode, amp=not no_amp, knn=not no_knn, progress=progress,
        )
        build_cache(cfg)
    except (MissingWeightsError, UnknownTeacherError, CheckpointError, ImageListError, BuildError, StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except BadImageError as e:  # from a DataLoader worker it carries the worker's traceback: keep the message
        lines = [m for m in str(e).strip().splitlines() if "cannot decode image" in m or "cannot read file" in m]
        msg = lines[-1].split("BadImageError: ")[-1] if lines else str(e)
        raise click.ClickException(msg + "\n(rerun with --skip-bad to record unreadable images in the manifest and skip them)") from None


@main.command("list-teachers")
@click.option("--flops/--no-flops", default=True, help="Count GFLOPs at 224 px (meta device, about a second).")
def list_teachers(flops: bool) -> None:
    """Registered teachers: name, architecture, dim, parameters, GFLOPs at 224 px, accepted layouts."""
    from cache_builder import architectures
    from cache_builder.teachers import CUSTOM, TEACHERS, build_meta

    click.echo(f"{'name':<24} {'arch':<14} {'dim':>6} {'params':>8} {'GFLOPs':>7}  layouts")
    for name, spec in TEACHERS.items():
        model = build_meta(spec)
        params = architectures.count_parameters(model) / 1e6
        gf = f"{architectures.gflops(model, 224):.1f}" if flops else "-"
        click.echo(f"{name:<24} {spec.arch:<14} {spec.embed_dim:>6} {params:>7.1f}M {gf:>7}  {spec.expected_layout()}")
    click.echo(f"{CUSTOM:<24} {'--arch':<14} {'?':>6} {'?':>8} {'?':>7}  keys under --prefix (any torchvision model)")
    click.echo("GFLOPs = 2 x multiply-adds of the headless network for one 224x224 image.")


if __name__ == "__main__":
    main()
