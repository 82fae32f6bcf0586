"""``compress-distill``: train a student with the CompRess objective from a teacher cache.

A thin layer over ``distill.engine.run``, ``distill.neighbours`` and ``distill.export``. The
options of ``run`` are generated from ``distill.config.DistillConfig`` (defaults and help live
there); torch is imported inside the commands so that ``--help`` is instant. Errors are one
line (``storage.cli_errors``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import click

from distill.config import VARIANTS, DistillConfig
from distill.deploy_config import ExportConfig
from storage.cli_errors import compress_group
from storage.config_options import config_file_option, config_from_params, config_options


def _is_rank_zero() -> bool:
    """True unless this is a non-zero rank started by torchrun (only rank 0 prints)."""
    return int(os.environ.get("RANK", "0")) == 0


@compress_group()
def main() -> None:
    """Distil a small student from cached teacher embeddings (stage 2 of CompRess).

    The student learns to reproduce the teacher's similarity distribution (softmax at
    temperature 0.04) over a memory bank of anchor images; no labels are used.
    """
    logging.basicConfig(level=logging.INFO if _is_rank_zero() else logging.WARNING, format="%(message)s")


_DEFAULT_VARIANT = next(f.default for f in dataclasses.fields(DistillConfig) if f.name == "variant")


@main.command()
@config_file_option
@click.option("--variant", type=click.Choice(list(VARIANTS)), default=None,
              help=f"Bank variant (docs/distill.md) [default: {_DEFAULT_VARIANT} with --bank queue, 1q with --bank static-faiss].")
@config_options(DistillConfig, exclude=("variant",))
@click.option("--logger", "loggers", multiple=True, type=click.Choice(["jsonl", "tensorboard", "mlflow"]),
              help="Experiment tracker, repeatable: jsonl (always on), tensorboard, mlflow (docs/distill.md).")
def run(variant: str | None, loggers: tuple[str, ...], **params: Any) -> None:
    """Train a student (resumes automatically when --out holds the same run).

    From a teacher cache (--cache, default ./cache), or with --teacher NAME --weights FILE
    --data DIR the frozen teacher runs online on every step's student crops (no cache).

    The defaults are the paper's recipe: 130 epochs of SGD at lr 0.01, x0.2 at epochs 90 and
    120; with another --epochs (and no --lr-steps) the milestones scale with it (90/130 and
    120/130 of the run). The resolved schedule is printed at the start and saved in
    OUT/config.json.
    """
    from distill.engine import resolve_config
    from distill.engine import run as run_engine

    chosen = variant or ("1q" if params.get("bank") == "static-faiss" else _DEFAULT_VARIANT)
    from distill.tracking import check_loggers

    resolved = resolve_config(config_from_params(DistillConfig, params, variant=chosen, loggers=check_loggers(loggers)))
    if _is_rank_zero():
        source = f"online teacher {resolved.teacher} ({resolved.weights})" if resolved.teacher else f"cache {resolved.cache}"
        click.echo(f"student {resolved.student} ({resolved.variant}, bank {resolved.bank}), {source}, data {resolved.data}, out {resolved.out}")
    result = run_engine(resolved)
    if _is_rank_zero():
        click.echo(json.dumps(result))


@main.command("list-students")
@click.option("--timm", "timm_pattern", default=None, metavar="PATTERN",
              help="Also list the timm models matching PATTERN (shell wildcards, or a substring: mobilenetv3) as timm:<name> students.")
@click.option("--limit", default=40, show_default=True, help="At most this many timm models with --timm.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def list_students_command(timm_pattern: str | None, limit: int, as_json: bool) -> None:
    """The registered students and a few timm examples: parameters and GFLOPs of the backbone at
    its default input size (counted on the meta device). Any torchvision classification model
    name works as --student too, and so does any timm model as timm:<model_name>."""
    from distill.students import list_students
    from distill.timm_students import EXAMPLES, matching_models

    names = matching_models(timm_pattern, limit) if timm_pattern else list(EXAMPLES)
    if timm_pattern and not names:
        from storage.errors import UsageError

        raise UsageError(f"--timm {timm_pattern!r}: no timm model matches")
    rows = list_students(names)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(16, *(len(r["name"]) for r in rows))
    click.echo(f"{'student':<{width}} {'params':>10} {'GFLOPs':>8} {'input':>6} {'features':>9}")
    for r in rows:
        click.echo(f"{r['name']:<{width}} {r['parameters'] / 1e6:>9.2f}M {r['gflops']:>8.3f} {r['input_size']:>6} {r['feature_dim']:>9}")
    if not timm_pattern:
        click.echo("timm: rows are examples; any timm model works as --student timm:<name> (list them: --timm PATTERN)")


@main.command()
@click.option("--cache", default="./cache", show_default=True, help="Teacher cache directory (its train split is searched).")
@click.option("--k", "k", default=1024, show_default=True, help="Neighbours per image (the image itself excluded).")
@click.option("--block-rows", default=8192, show_default=True, help="Query rows per resumable block.")
@click.option("--recompute", is_flag=True, help="Discard a table computed from another cache (or other settings) and start over.")
@click.option("--device", default="auto", show_default=True,
              help="auto (this process's GPU when CUDA is available, else cpu), cpu, cuda or cuda:N.")
def neighbours(cache: str, k: int, block_rows: int, recompute: bool, device: str) -> None:
    """Precompute every train image's top-K teacher neighbours (for run --bank static-faiss).

    Exact inner-product search with FAISS over the whole cached train split, blockwise and
    resumable; written to CACHE/neighbours-k{K}/ and reused while the cache is unchanged.
    Under torchrun (one process per GPU) the blocks are split between the processes.
    """
    from cache_builder import distributed as D
    from distill.neighbours import compute_neighbours
    from distill.targets import train_store_path

    D.init_from_env(device)
    try:
        table = compute_neighbours(train_store_path(cache), k, block_rows=block_rows, recompute=recompute,
                                   shard=(D.rank(), D.world_size()), barrier=D.barrier)
    finally:
        D.shutdown()
    if _is_rank_zero():
        click.echo(f"{table.path}: {table.rows.shape[0]} rows x {table.k} neighbours")


@main.command()
@config_file_option
@click.argument("run_dir")
@click.option("--out", required=True, help="Output file: NAME.pth | NAME.onnx | NAME.pt (TorchScript) | NAME.safetensors or a "
                                           "directory (model.safetensors + config.json); a .json sidecar is written beside it.")
@config_options(ExportConfig)
def export(run_dir: str, out: str, **params: Any) -> None:
    """Export RUN_DIR's student backbone: a torchvision-compatible .pth state dict (default), ONNX
    (fp32, --quantize int8 or fp16), TorchScript or safetensors (docs/deploy.md). Prints the file
    size and the parity against the PyTorch backbone; a sidecar JSON records both."""
    cfg = config_from_params(ExportConfig, params, run=run_dir, out=out)
    if cfg.resolved_format == "pth":
        from distill.export import export_student

        meta = export_student(run_dir, out, allow_unfinished=cfg.allow_unfinished)
        state = "finished" if meta["finished"] else f"UNFINISHED at epoch {meta['epoch']}, step {meta['steps']}"
        click.echo(f"wrote {out} ({meta['architecture']}, {meta['feature_dim']}-d features, {meta['epochs']} epochs, {state})")
        return
    from distill.deploy import describe, export_deployable

    for line in describe(export_deployable(cfg)):
        click.echo(line)


if __name__ == "__main__":
    main()
