"""``compress-eval``: kNN, linear probe and cluster alignment of any representation.

A thin layer over library functions; torch/faiss are imported inside the commands so that
``--help`` is instant. Each command builds its frozen config dataclass and calls the library
function (``knn(cfg)``, ``linear(cfg)``, ``cluster(cfg)``).
"""

from __future__ import annotations

import contextlib
import os

import click

DEFAULT_CACHE = "cache"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Evaluate a student, a teacher or a cache with the protocols papers report
    (kNN, linear probe, cluster alignment); every result records its protocol."""


def _source_options(f):
    """``--features DIR`` or ``--model M --data ROOT`` (+ extraction options), and ``--out``."""
    options = [
        click.option("--features", "features", type=click.Path(file_okay=False), default=None,
                     help="Features or teacher-cache directory with train/ and val/ stores (default: ./cache if present)."),
        click.option("--model", default=None, help="Student run dir, exported .pth, teacher:NAME:WEIGHTS or torchvision:ARCH[:WEIGHTS]."),
        click.option("--data", type=click.Path(exists=True, file_okay=False), default=None, help="ImageFolder-style root (train/, val/)."),
        click.option("--feature-cache", type=click.Path(file_okay=False), default=None,
                     help="Where --model/--data features are cached (default: RUN/eval/features or ./eval-cache)."),
        click.option("--image-size", type=int, default=None, help="Center-crop size for torchvision models."),
        click.option("--batch-size", "extract_batch_size", type=int, default=64, show_default=True, help="Extraction batch size."),
        click.option("--workers", type=int, default=0, show_default=True, help="Extraction loader workers."),
        click.option("--out", type=click.Path(dir_okay=False), default=None, help="Result JSON path (default: under eval-results/ or RUN/eval/)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _resolve_source(features, model, data, feature_cache, image_size, extract_batch_size, workers, device) -> tuple[str, dict | None]:
    """The features directory to evaluate and, for --model/--data, the extraction info."""
    if features and (model or data):
        raise click.UsageError("give either --features or --model/--data, not both")
    if model or data:
        if not (model and data):
            raise click.UsageError("--model and --data go together")
        from evaluate.features import cached_features

        root = feature_cache or (os.path.join(model, "eval", "features") if os.path.isdir(model) else "eval-cache")
        info = cached_features(model, data, root, image_size=image_size, batch_size=extract_batch_size,
                               workers=workers, device=device or "cpu", progress=True)
        click.echo(f"{'reusing' if info['reused'] else 'extracted'} features of {model} on {data}: {info['out']}")
        return info["out"], info
    if features is None:
        if not os.path.isdir(DEFAULT_CACHE):
            raise click.UsageError("no --features or --model/--data given and there is no ./cache to evaluate")
        features = DEFAULT_CACHE
        click.echo(f"evaluating ./{DEFAULT_CACHE} (no --features given)")
    return features, None


def _finish(result: dict, out: str | None, extraction: dict | None, model: str | None) -> None:
    from evaluate.results import metric_table, write_result

    if extraction:
        result["model"] = extraction["model"]
        result["dataset"] = extraction["dataset"]
        result["extraction_fingerprint"] = extraction["fingerprint"]
    if out is None:
        out = _default_out(result["command"], result["protocol"], model)
    write_result(result, out)
    click.echo(metric_table(result))
    click.echo(f"result written to {out}")


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err)) from None


@contextlib.contextmanager
def _user_errors():
    """Report bad input (ValueError, OSError, storage errors) as a one-line CLI error."""
    try:
        yield
    except (ValueError, OSError) as e:
        _fail(e)
    except Exception as e:  # storage errors name the culprit in their message
        if type(e).__module__.startswith("storage"):
            _fail(e)
        raise


def _default_out(command: str, protocol: str, model: str | None) -> str:
    base = os.path.join(model, "eval") if model and os.path.isdir(model) else "eval-results"
    return os.path.join(base, f"{command}-{protocol}.json")


@main.command()
@_source_options
@click.option("--protocol", type=click.Choice(["compress", "dino"]), default="compress", show_default=True)
@click.option("-k", "ks", type=int, multiple=True, help="Neighbour counts (default: the protocol's).")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="DINO vote temperature.")
@click.option("--backend", type=click.Choice(["auto", "faiss", "torch"]), default="auto", show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--query-block", type=int, default=None, help="Queries per block (default: 1024 torch, 8192 faiss).")
@click.option("--database-block", type=int, default=131072, show_default=True)
@click.option("--stream", is_flag=True, help="Stream the train rows from their store shard by shard instead of loading them.")
def knn(features, model, data, feature_cache, image_size, extract_batch_size, workers, out, protocol, ks, temperature,
        backend, device, query_block, database_block, stream) -> None:
    """k-nearest-neighbour accuracy (compress: L2, majority, k=1,20; dino: cosine, weighted, k=10..200)."""
    from evaluate.knn import KnnConfig
    from evaluate.knn import knn as run_knn

    with _user_errors():
        src, info = _resolve_source(features, model, data, feature_cache, image_size, extract_batch_size, workers, device)
        cfg = KnnConfig(features=src, protocol=protocol, ks=tuple(ks), temperature=temperature, backend=backend,
                        device=device, query_block=query_block, database_block=database_block, stream=stream)
        result = run_knn(cfg)
    _finish(result, out, info, model)


@main.command()
@_source_options
@click.option("--fast/--full", default=True, show_default=True,
              help="--fast: train on cached center-crop features (a different protocol, 'compress-fast'). "
                   "--full: RandomResizedCrop + flip through the frozen backbone (needs --model/--data; resumable).")
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--train-batch-size", type=int, default=256, show_default=True)
@click.option("--fraction", type=float, default=None, help="Class-balanced fraction of train labels (e.g. 0.01, 0.1).")
@click.option("--shots", type=int, default=None, help="Labelled train images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def linear(features, model, data, feature_cache, image_size, extract_batch_size, workers, out, fast, epochs, lr,
           train_batch_size, fraction, shots, seed, device) -> None:
    """Linear probe: L2 -> whole-train-set standardisation -> linear, SGD 0.01, steps at 15/30 of 40."""
    from evaluate.linear import LinearConfig
    from evaluate.linear import linear as run_linear

    with _user_errors():
        out = out or _default_out("linear", "compress-fast" if fast else "compress", model)
        cfg = LinearConfig(features="", fast=fast, epochs=epochs, lr=lr, batch_size=train_batch_size,
                           fraction=fraction, shots=shots, seed=seed, device=device, model=model, data=data,
                           image_size=image_size, workers=workers, checkpoint=os.path.splitext(out)[0] + "-checkpoint.pt")
        src, info = _resolve_source(features, model, data, feature_cache, image_size, extract_batch_size, workers, device)
        import dataclasses

        result = run_linear(dataclasses.replace(cfg, features=src))
    _finish(result, out, info, model)


@main.command()
@_source_options
@click.option("--clusters", type=int, default=1000, show_default=True)
@click.option("--iterations", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "faiss", "torch"]), default="auto", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--confusion", type=click.Path(dir_okay=False), default=None, help="Confusion matrix .npy (default: next to the result).")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="PNG grid of images from random clusters.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image root the stores' paths are relative to (for --grid; default --data).")
def cluster(features, model, data, feature_cache, image_size, extract_batch_size, workers, out, clusters, iterations,
            seed, backend, device, confusion, grid, data_root) -> None:
    """Cluster alignment: k-means on all train points, Hungarian matching on train, accuracy on val."""
    from evaluate.cluster import ClusterConfig
    from evaluate.cluster import cluster as run_cluster

    with _user_errors():
        src, info = _resolve_source(features, model, data, feature_cache, image_size, extract_batch_size, workers, device)
        out = out or _default_out("cluster", "compress", model)
        confusion = confusion or os.path.splitext(out)[0] + "-confusion.npy"
        cfg = ClusterConfig(features=src, clusters=clusters, iterations=iterations, seed=seed, backend=backend, device=device,
                            confusion=os.path.normpath(confusion), grid=grid, data_root=data_root or data)
        result = run_cluster(cfg)
    _finish(result, out, info, model)


@main.command()
@click.option("--model", required=True, help="Student run dir, exported .pth, teacher:NAME:WEIGHTS or torchvision:ARCH[:WEIGHTS].")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="ImageFolder-style root (train/, val/).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (OUT/train, OUT/val stores).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--image-size", type=int, default=None, help="Center-crop size for torchvision models.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace features extracted with another model or dataset.")
def features(model, data, out, batch_size, workers, device, image_size, dtype, overwrite) -> None:
    """Extract L2-normalised center-crop backbone features of train and val into stores."""
    from evaluate.features import FeaturesConfig, extract_features

    with _user_errors():
        info = extract_features(FeaturesConfig(model=model, data=data, out=out, batch_size=batch_size, workers=workers,
                                               device=device, image_size=image_size, dtype=dtype, overwrite=overwrite,
                                               progress=True))
    click.echo(f"{'reused' if info['reused'] else 'wrote'} {out}/train ({info['split_sizes']['train']} rows) and "
               f"{out}/val ({info['split_sizes']['val']} rows); fingerprint {info['fingerprint'][:16]}")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--chart", type=click.Path(dir_okay=False), default="eval-report.png", show_default=True, help="Bar chart PNG.")
def report(sources, chart) -> None:
    """Markdown comparison table of results (JSON files or run dirs) and a bar chart PNG."""
    from evaluate.results import bar_chart, comparison_table, read_results

    try:
        results = read_results(list(sources))
    except ValueError as e:
        _fail(e)
    table, rows, cols, values = comparison_table(results)
    click.echo(table)
    bar_chart(rows, cols, values, chart)
    click.echo(f"\nchart written to {chart}")


if __name__ == "__main__":
    main()
