"""Experiment trackers: ``--logger jsonl|tensorboard|mlflow`` (repeatable; jsonl is always on).

``Tracker`` forwards numeric records ``{name: value}`` at a step to TensorBoard (event files in
``RUN/tensorboard``) and/or MLflow (``--mlflow-uri``, default ``sqlite:///RUN/mlflow.db``; a
``file:`` URI is a file store, which MLflow 3 refuses unless ``MLFLOW_ALLOW_FILE_STORE=true``,
set here when the user asked for one). Only the process that creates it logs: callers create it
on rank 0 only.

Resuming continues the same runs without duplicate steps: TensorBoard's writer is reopened on
the same directory with ``purge_step`` = the first step logged again (TensorBoard discards the
older events from that step on); the MLflow run id is kept in ``RUN/mlflow_run_id`` and steps at
or below the last one MLflow already holds are not sent again (a resumed run reproduces them
exactly). Missing packages: one line naming the extra (``pip install 'compress-distill[tensorboard]'``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from storage.errors import UsageError, unknown_name
from storage.package import MissingPackageError, require_module

LOGGERS = ("jsonl", "tensorboard", "mlflow")
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
LOGGER_HELP = "Experiment tracker, repeatable: jsonl (always on), tensorboard, mlflow."
MLFLOW_URI_HELP = "MLflow tracking URI (a local store): default sqlite:///<run dir>/mlflow.db; file:./mlruns for a file store."
RUN_ID_FILE = "mlflow_run_id"


class MissingTrackerError(MissingPackageError):
    """A logger's package is not installed."""


def check_loggers(loggers: tuple[str, ...]) -> tuple[str, ...]:
    """Validated, de-duplicated ``--logger`` values, ``jsonl`` first.

    Raises:
        UsageError: an unknown logger.
    """
    for name in loggers:
        if name not in LOGGERS:
            raise UsageError("--logger: " + unknown_name("logger", name, list(LOGGERS)))
    return ("jsonl",) + tuple(n for n in dict.fromkeys(loggers) if n != "jsonl")


def logger_options(command: Any) -> Any:
    """Click decorator: ``--logger`` (repeatable) and ``--mlflow-uri``."""
    import click

    command = click.option("--mlflow-uri", default=None, help=MLFLOW_URI_HELP)(command)
    return click.option("--logger", "loggers", multiple=True, type=click.Choice(list(LOGGERS)), help=LOGGER_HELP)(command)


def _require(module: str, logger: str) -> None:
    require_module(module, f"--logger {logger}", EXTRAS[logger], error=MissingTrackerError)


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
    return out


class Tracker:
    """TensorBoard and/or MLflow logging of one run (``run_dir``); no-op for jsonl only.

    Args:
        run_dir: where the event files, the MLflow run id (and the default sqlite store) live.
        loggers: ``check_loggers`` values.
        mlflow_uri: tracking URI; None -> ``sqlite:///run_dir/mlflow.db``.
        name: MLflow run name / experiment name ``compress``.
        params: hyper-parameters (nested dicts flattened with dots), logged once per run.
        resume_step: the last step already logged by an earlier process of this run (None
            for a fresh run): later records continue after it.
        subdir: the TensorBoard directory under ``run_dir``.
        keep_run_id: keep the MLflow run id in ``run_dir`` and continue that run (a training
            run); False starts a new MLflow run each time (an evaluation).
    """

    def __init__(self, run_dir: str, loggers: tuple[str, ...], *, mlflow_uri: str | None = None, name: str = "run",
                 params: dict[str, Any] | None = None, resume_step: int | None = None, experiment: str = "compress",
                 subdir: str = "tensorboard", keep_run_id: bool = True) -> None:
        loggers = check_loggers(loggers)
        self.tb: Any = None
        self.mlflow: Any = None
        self.mlflow_last: dict[str, int] = {}
        os.makedirs(run_dir, exist_ok=True)
        if "tensorboard" in loggers:
            _require("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(os.path.join(run_dir, subdir), purge_step=purge)
            if params and resume_step is None:
                self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flatten(params).items()), 0)
        if "mlflow" in loggers:
            self._open_mlflow(run_dir, mlflow_uri, name, experiment, params or {}, keep_run_id)

    def _open_mlflow(self, run_dir: str, uri: str | None, name: str, experiment: str, params: dict[str, Any], keep: bool) -> None:
        _require("mlflow", "mlflow")
        if uri and uri.startswith("file:"):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.tracking import MlflowClient

        uri = uri or "sqlite:///" + os.path.abspath(os.path.join(run_dir, "mlflow.db"))
        client = MlflowClient(tracking_uri=uri)
        id_path = os.path.join(run_dir, RUN_ID_FILE)
        run_id = open(id_path).read().strip() if keep and os.path.exists(id_path) else None
        if run_id:
            run = client.get_run(run_id)
            self.mlflow_last = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
        else:
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run_id = client.create_run(exp_id, run_name=name).info.run_id
            if keep:
                from storage.atomic import write_text_atomic

                write_text_atomic(id_path, run_id)
            for key, value in list(_flatten(params).items())[:500]:
                client.log_param(run_id, key[:250], value[:6000])
        self.mlflow, self.run_id, self.uri = client, run_id, uri

    def log(self, record: dict[str, Any], step: int) -> None:
        """Log the numeric fields of ``record`` (bools, ``step`` and ``epoch`` left out) at ``step``."""
        values = {k: float(v) for k, v in record.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(__import__("time").time() * 1000)
            fresh = [Metric(k, v, now, step) for k, v in values.items() if step > self.mlflow_last.get(k, -1)]
            if fresh:
                self.mlflow.log_batch(self.run_id, metrics=fresh)
                self.mlflow_last.update({m.key: step for m in fresh})

    def close(self, finished: bool = False) -> None:
        """Flush; ``finished`` marks the MLflow run FINISHED (an interrupted one stays RUNNING)."""
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.mlflow is not None and finished:
            self.mlflow.set_terminated(self.run_id, "FINISHED")


def training_tracker(cfg: Any, out: str, resume_step: int | None) -> Tracker | None:
    """The tracker of a ``compress-distill run`` (None with jsonl only): the resolved config as
    hyper-parameters, the run directory's name as the MLflow run name."""
    if tuple(cfg.loggers) in ((), ("jsonl",)):
        return None
    return Tracker(out, tuple(cfg.loggers), mlflow_uri=cfg.mlflow_uri, name=os.path.basename(os.path.abspath(out)),
                   params=cfg.to_json(), resume_step=resume_step, experiment="compress-distill")
