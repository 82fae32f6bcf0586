"""``compress-eval``: kNN, linear probe and cluster alignment of any representation.

A thin layer over library functions: each command's options are generated from its frozen
config dataclass (``evaluate.config``: the one place defaults and help live), every command
takes ``--config FILE``, and errors are the product's one-line errors (``compress_group``).
torch/faiss are imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import click

from distill.tracking import logger_options
from evaluate.config import DEFAULT_FEATURES, MODEL_HELP, ClusterConfig, FeaturesConfig, KnnConfig, LinearConfig, RetrievalConfig, SourceConfig
from evaluate.latency_config import LatencyConfig
from storage.cli_errors import compress_group
from storage.config_options import CommaTuple, config_file_option, config_from_params, config_options
from storage.errors import CompressError, UsageError


@compress_group()
def main() -> None:
    """Evaluate a student, a teacher or a cache with the protocols papers report
    (kNN, linear probe, cluster alignment, retrieval); every result records its protocol."""


def _resolve_source(source: SourceConfig, device: str) -> tuple[str, dict | None]:
    """The features directory to evaluate and, for --model/--data, the extraction info."""
    if source.model and source.data:
        from cache_builder.devices import resolve_device
        from evaluate.features import cached_features

        model = source.model
        root = source.feature_cache or (os.path.join(model, "eval", "features") if os.path.isdir(model) else "eval-cache")
        info = cached_features(model, source.data, root, image_size=source.image_size, batch_size=source.extract_batch_size,
                               workers=source.workers, device=str(resolve_device(device)), progress=source.progress,
                               image_column=source.image_column, label_column=source.label_column)
        click.echo(f"{'reusing' if info['reused'] else 'extracted'} features of {model} on {source.data}: {info['out']}")
        return info["out"], info
    if source.features:
        return source.features, None
    if not os.path.isdir(DEFAULT_FEATURES):
        raise UsageError(f"--features: none given, no --model/--data either, and there is no ./{DEFAULT_FEATURES} to evaluate")
    click.echo(f"evaluating ./{DEFAULT_FEATURES} (no --features given)")
    return DEFAULT_FEATURES, None


def _default_out(command: str, protocol: str, model: str | None) -> str:
    base = os.path.join(model, "eval") if model and os.path.isdir(model) else "eval-results"
    return os.path.join(base, f"{command}-{protocol}.json")


def _finish(result: dict, out: str, extraction: dict | None, params: dict | None = None) -> None:
    from evaluate.results import metric_table, write_result

    if extraction:
        result["model"] = {**extraction["model"], **_parameter_count(extraction)}
        result["dataset"] = extraction["dataset"]
        result["extraction_fingerprint"] = extraction["fingerprint"]
    write_result(result, out)
    click.echo(metric_table(result))
    click.echo(f"result written to {out}")
    loggers = tuple((params or {}).get("loggers") or ())
    if any(name != "jsonl" for name in loggers):
        from evaluate.results import track_result

        where = track_result(result, out, loggers, (params or {}).get("mlflow_uri"))
        click.echo(f"logged to {where}")


def _parameter_count(extraction: dict) -> dict:
    """``{"parameters": P}`` of the extracted backbone (for ``report``'s tradeoff plot); empty
    when the model cannot be rebuilt here."""
    from cache_builder.architectures import count_parameters
    from evaluate.models import resolve_model

    try:
        return {"parameters": int(count_parameters(resolve_model(extraction["config"]["model"]).module))}
    except (CompressError, OSError, KeyError):
        return {}


def _ks_option(command: Any) -> Any:
    """``-k 1,20`` or ``-k 1 -k 20`` (KnnConfig.ks)."""
    help_text = {f.name: f for f in dataclasses.fields(KnnConfig)}["ks"].metadata["help"]
    return click.option("-k", "--ks", "ks", type=CommaTuple(int, None), multiple=True, help=help_text)(command)


@main.command()
@config_file_option
@config_options(SourceConfig)
@config_options(KnnConfig)
@_ks_option
@logger_options
def knn(**params: Any) -> None:
    """k-nearest-neighbour accuracy (compress: L2, majority, k=1,20; dino: cosine, weighted, k=10..200)."""
    from evaluate.knn import knn as run_knn

    source = config_from_params(SourceConfig, params)
    ks = tuple(k for group in params["ks"] for k in group)
    cfg = config_from_params(KnnConfig, params, features="", ks=ks)
    src, info = _resolve_source(source, cfg.device)
    result = run_knn(dataclasses.replace(cfg, features=src))
    _finish(result, source.out or _default_out("knn", cfg.protocol, source.model), info, params)


@main.command()
@config_file_option
@config_options(SourceConfig)
@config_options(LinearConfig)
@logger_options
def linear(**params: Any) -> None:
    """Linear probe: L2 -> whole-train-set standardisation -> linear, SGD 0.01, steps at 15/30 of 40."""
    from evaluate.linear import linear as run_linear

    source = config_from_params(SourceConfig, params)
    out = source.out or _default_out("linear", "compress-fast" if params["fast"] else "compress", source.model)
    cfg = config_from_params(LinearConfig, params, features="", checkpoint=os.path.splitext(out)[0] + "-checkpoint.pt")
    src, info = _resolve_source(source, cfg.device)
    result = run_linear(dataclasses.replace(cfg, features=src))
    _finish(result, out, info, params)


@main.command()
@config_file_option
@config_options(SourceConfig)
@config_options(ClusterConfig)
@logger_options
def cluster(**params: Any) -> None:
    """Cluster alignment: k-means on all train points, Hungarian matching on train, accuracy on val."""
    from evaluate.cluster import cluster as run_cluster

    source = config_from_params(SourceConfig, params)
    out = source.out or _default_out("cluster", "compress", source.model)
    confusion = params["confusion"] or os.path.splitext(out)[0] + "-confusion.npy"
    cfg = config_from_params(ClusterConfig, params, features="", confusion=os.path.normpath(confusion),
                             data_root=params["data_root"] or source.data)
    src, info = _resolve_source(source, cfg.device)
    result = run_cluster(dataclasses.replace(cfg, features=src))
    _finish(result, out, info, params)


@main.command()
@config_file_option
@config_options(SourceConfig)
@config_options(RetrievalConfig)
@logger_options
def retrieval(**params: Any) -> None:
    """Image retrieval (metric-learning protocol): Recall@K, MAP@R, R-precision; query set = gallery."""
    from evaluate.retrieval import retrieval as run_retrieval

    source = config_from_params(SourceConfig, params)
    cfg = config_from_params(RetrievalConfig, params, features="")
    src, info = _resolve_source(source, cfg.device)
    result = run_retrieval(dataclasses.replace(cfg, features=src))
    _finish(result, source.out or _default_out("retrieval", "metric-learning", source.model), info, params)


@main.command()
@config_file_option
@click.option("--model", required=True, help=MODEL_HELP)
@click.option("--data", required=True, help="ImageFolder-style root (train/, val/), or tar shards / Parquet files in train/ "
                                            "and val/ sub-locations (a directory or an fsspec URL).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (OUT/train, OUT/val stores).")
@config_options(FeaturesConfig)
def features(**params: Any) -> None:
    """Extract L2-normalised center-crop backbone features of train and val into stores."""
    from evaluate.features import extract_features

    info = extract_features(config_from_params(FeaturesConfig, params))
    out = params["out"]
    click.echo(f"{'reused' if info['reused'] else 'wrote'} {out}/train ({info['split_sizes']['train']} rows) and "
               f"{out}/val ({info['split_sizes']['val']} rows); fingerprint {info['fingerprint'][:16]}")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--chart", type=click.Path(dir_okay=False), default="eval-report.png", show_default=True, help="Bar chart PNG.")
@click.option("--tradeoff", type=click.Path(dir_okay=False), default="tradeoff.png", show_default=True,
              help="Accuracy (kNN-20, linear) vs parameters and vs CPU latency (when a latency result exists) PNG.")
def report(sources: tuple[str, ...], chart: str, tradeoff: str) -> None:
    """Markdown comparison table of results (JSON files or run dirs), a bar chart PNG and the
    accuracy-vs-cost plot."""
    from evaluate.results import bar_chart, comparison_table, read_results
    from evaluate.tradeoff import tradeoff_chart, tradeoff_points

    results = read_results(list(sources))
    table, rows, cols, values = comparison_table(results)
    click.echo(table)
    bar_chart(rows, cols, values, chart)
    click.echo(f"\nchart written to {chart}")
    if tradeoff_chart(tradeoff_points(results), tradeoff):
        click.echo(f"tradeoff plot written to {tradeoff}")
    else:
        click.echo("no tradeoff plot: no result has both a kNN-20 accuracy and a parameter count or latency")


@main.command()
@config_file_option
@click.option("--model", "models", multiple=True, required=True,
              help="A model to time (repeatable): run dir, .pth, .onnx, .pt, .safetensors, teacher:... or torchvision:...")
@config_options(LatencyConfig)
def latency(models: tuple[str, ...], **params: Any) -> None:
    """Median and p95 per-batch latency and img/s of every --model, interleaved (A B A B) in one run."""
    from evaluate.latency import latency as run_latency

    cfg = config_from_params(LatencyConfig, params, models=models, out=params.get("out") or os.path.join("eval-results", "latency.json"))
    result = run_latency(cfg)
    click.echo(result["table"])
    click.echo(f"result written to {cfg.out}")


if __name__ == "__main__":
    main()
