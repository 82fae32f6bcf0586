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


if __name__ == "__main__":
    main()
