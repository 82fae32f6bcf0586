"""``compress-distill``: train a student with the CompRess objective from a teacher cache.

A thin layer over ``distill.engine.run`` and ``distill.export``; torch is imported inside the
commands so that ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os

import click


def _is_rank_zero() -> bool:
    """True unless this is a non-zero rank started by torchrun (only rank 0 prints)."""
    return int(os.environ.get("RANK", "0")) == 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Distil a small student from cached teacher embeddings (stage 2 of CompRess).

    The student learns to reproduce the teacher's similarity distribution (softmax at
    temperature 0.04) over a memory bank of anchor images; no labels are used.
    """
    logging.basicConfig(level=logging.INFO if _is_rank_zero() else logging.WARNING, format="%(message)s")


@main.command()
@click.option("--cache", default="./cache", show_default=True, help="Teacher cache directory (from compress-cache build).")
@click.option("--data", default=None, help="Image root the cache was built from [default: recorded in the cache manifest].")
@click.option("--out", default=None, help="Run directory [default: ./runs/<student>-from-<teacher>].")
@click.option("--student", default="resnet18", show_default=True, help="Student: resnet18, resnet34, resnet50, mobilenet_v2, alexnet, tiny_cnn or any torchvision model.")
@click.option("--dim", default=128, show_default=True, help="Student head dimension (8192 for a ResNet-50 student of an R50x4 teacher).")
@click.option("--variant", type=click.Choice(["2q", "2q-momentum", "1q"]), default=None,
              help="Bank variant (docs/distill.md, Method) [default: 2q-momentum with --bank queue, 1q with --bank static-faiss].")
@click.option("--bank", type=click.Choice(["queue", "static-faiss"]), default="queue", show_default=True,
              help="queue: FIFO memory bank(s) of recent batches (the paper). static-faiss: each image's top-K teacher neighbours "
                   "over the whole cached train split + R random anchors (1q-style).")
@click.option("--bank-size", default=128_000, show_default=True, help="Anchors in the memory bank (capped at the number of images).")
@click.option("--neighbours", default=1024, show_default=True, help="static-faiss: teacher neighbours K per image (computed on demand).")
@click.option("--random-anchors", default=4096, show_default=True, help="static-faiss: random anchors R per step, shared by the batch.")
@click.option("--tail-correction/--no-tail-correction", default=True, show_default=True,
              help="static-faiss: weight each random anchor as N/R train rows (and drop those among the query's neighbours), "
                   "so the support's softmax estimates the one over the whole split; off: the K + R anchors as they are.")
@click.option("--t-teacher", default=0.04, show_default=True, help="Teacher softmax temperature.")
@click.option("--t-student", default=0.04, show_default=True, help="Student softmax temperature.")
@click.option("--momentum", default=0.999, show_default=True, help="EMA momentum of the key student (2q-momentum).")
@click.option("--epochs", default=130, show_default=True)
@click.option("--batch-size", default=256, show_default=True, help="Per-process batch size.")
@click.option("--lr", default=0.01, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True)
@click.option("--lr-steps", default="90,120", show_default=True, help="Epochs at which the step schedule multiplies the lr by 0.2.")
@click.option("--input-size", type=int, default=None, help="Student crop size [default: the student's spec].")
@click.option("--crop-scale", default="0.08,1.0", show_default=True, help="RandomResizedCrop area range.")
@click.option("--workers", default=2, show_default=True, help="DataLoader worker processes per rank (persistent across epochs).")
@click.option("--prefetch-factor", default=2, show_default=True, help="Batches each worker loads ahead.")
@click.option("--bank-dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Precision of the banks and their similarity GEMMs: auto = bfloat16 on GPUs and on CPUs with bf16 "
                   "matrix units (AMX, AVX512-BF16), else float32; a resumed run keeps the precision it started with.")
@click.option("--decode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Decode JPEGs in the workers (cpu) or on the training GPU (gpu; falls back to cpu without CUDA).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--seed", default=0, show_default=True)
@click.option("--ckpt-every", default=500, show_default=True, help="Checkpoint every N steps (and every epoch).")
@click.option("--log-every", default=20, show_default=True, help="Read the loss (a host sync) every N steps.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in total (resume later).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the student.")
@click.option("--shared-cache", is_flag=True, help="Memory-map one node-wide copy of the cache for all local ranks.")
@click.option("--fresh", is_flag=True, help="Start over in --out even if it holds a different run.")
def run(**kw: object) -> None:
    """Train a student (resumes automatically when --out holds the same run)."""
    from distill.engine import DistillConfig, resolve_config, run as run_engine

    cfg = DistillConfig(
        cache=kw["cache"], data=kw["data"], out=kw["out"], student=kw["student"], dim=kw["dim"],
        variant=kw["variant"] or ("1q" if kw["bank"] == "static-faiss" else "2q-momentum"), bank=kw["bank"],
        neighbours=kw["neighbours"], random_anchors=kw["random_anchors"], tail_correction=kw["tail_correction"], bank_dtype=kw["bank_dtype"],
        bank_size=kw["bank_size"], t_teacher=kw["t_teacher"], t_student=kw["t_student"], momentum=kw["momentum"],
        epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"], schedule=kw["schedule"],
        lr_steps=tuple(int(x) for x in str(kw["lr_steps"]).split(",") if x), input_size=kw["input_size"],
        crop_scale=tuple(float(x) for x in str(kw["crop_scale"]).split(",")),  # type: ignore[arg-type]
        workers=kw["workers"], prefetch_factor=kw["prefetch_factor"], decode=kw["decode"], device=kw["device"], seed=kw["seed"], ckpt_every=kw["ckpt_every"], log_every=kw["log_every"],
        max_steps=kw["max_steps"], compile=kw["compile_"], shared_cache=kw["shared_cache"], fresh=kw["fresh"],
    )  # type: ignore[arg-type]
    try:
        resolved = resolve_config(cfg)
        if _is_rank_zero():
            click.echo(f"student {resolved.student} ({resolved.variant}, bank {resolved.bank}), data {resolved.data}, out {resolved.out}")
        result = run_engine(resolved)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if _is_rank_zero():
        click.echo(json.dumps(result))


@main.command()
@click.option("--cache", default="./cache", show_default=True, help="Teacher cache directory (its train split is searched).")
@click.option("--k", "k", default=1024, show_default=True, help="Neighbours per image (the image itself excluded).")
@click.option("--block-rows", default=8192, show_default=True, help="Query rows per resumable block.")
@click.option("--recompute", is_flag=True, help="Discard a table computed from another cache (or other settings) and start over.")
def neighbours(cache: str, k: int, block_rows: int, recompute: bool) -> None:
    """Precompute every train image's top-K teacher neighbours (for run --bank static-faiss).

    Exact inner-product search with FAISS over the whole cached train split, blockwise and
    resumable; written to CACHE/neighbours-k{K}/ and reused while the cache is unchanged.
    Under torchrun (one process per GPU) the blocks are split between the processes.
    """
    from distill import distributed as D
    from distill.engine import pick_device
    from distill.neighbours import compute_neighbours
    from distill.targets import train_store_path
    from storage import StoreError

    D.init_from_env(pick_device("auto"))
    try:
        table = compute_neighbours(train_store_path(cache), k, block_rows=block_rows, recompute=recompute,
                                   shard=(D.rank(), D.world_size()), barrier=D.barrier)
    except (ValueError, FileNotFoundError, OSError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        D.shutdown()
    if _is_rank_zero():
        click.echo(f"{table.path}: {table.rows.shape[0]} rows x {table.k} neighbours")


@main.command()
@click.argument("run_dir")
@click.option("--out", required=True, help="Path of the exported backbone .pth (a .json sidecar is written beside it).")
def export(run_dir: str, out: str) -> None:
    """Export RUN_DIR's student backbone as a torchvision-compatible state dict."""
    from distill.export import export_student

    try:
        meta = export_student(run_dir, out)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out} ({meta['architecture']}, {meta['feature_dim']}-d features, {meta['epochs']} epochs)")


if __name__ == "__main__":
    main()
