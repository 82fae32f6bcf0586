"""--logger tensorboard / mlflow: event files and the MLflow store read back, one value per
step across an interrupted and resumed run."""

from __future__ import annotations

import os

import pytest

from distill import tracking
from distill import trainer as trainer_module
from distill.engine import run
from distill.tracking import MissingTrackerError, Tracker, check_loggers
from storage.errors import UsageError
from tests.distill.synthetic import losses, make_cache, make_images, tiny

pytest.importorskip("tensorboard")  # the [test] extra installs both; skip only where they are missing
pytest.importorskip("mlflow")


def tb_steps(log_dir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    data = make_images(str(root / "data"))
    return data, make_cache(str(root / "cache"), data)


def test_check_loggers_and_missing_package(monkeypatch) -> None:
    assert check_loggers(("mlflow", "tensorboard", "mlflow")) == ("jsonl", "mlflow", "tensorboard")
    with pytest.raises(UsageError, match="--logger"):
        check_loggers(("wandb",))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingTrackerError, match=r"pip install 'compress-distill\[mlflow\]'"):
        Tracker("/tmp/unused-tracker", ("mlflow",))


def test_tracker_resume_continues_both_runs_without_duplicates(tmp_path) -> None:
    uri = "file:" + str(tmp_path / "mlruns")
    first = Tracker(str(tmp_path), ("tensorboard", "mlflow"), mlflow_uri=uri, params={"a": {"b": 1}})
    for step in range(1, 6):
        first.log({"loss": float(step), "epoch": 0}, step)
    first.tb.flush()  # killed after step 5; its checkpoint is at step 3
    again = Tracker(str(tmp_path), ("tensorboard", "mlflow"), mlflow_uri=uri, resume_step=3)
    for step in range(4, 8):
        again.log({"loss": 10.0 * step}, step)
    again.close(finished=True)
    assert again.run_id == first.run_id
    assert tb_steps(os.path.join(tmp_path, "tensorboard"), "loss") == list(range(1, 8))
    # MLflow keeps the values already logged for steps 4-5 (a resumed run reproduces them)
    assert mlflow_history(uri, first.run_id, "loss") == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 60), (7, 70)]
    assert "epoch" not in [k for k in again.mlflow.get_run(first.run_id).data.metrics]


@pytest.mark.slow  # two training runs per store: ~2 min each on 2 shared cores
@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_interrupted_run_resumes_the_same_runs_without_duplicate_steps(setup, tmp_path, monkeypatch, store) -> None:
    _, cache = setup
    uri = None if store == "sqlite" else "file:" + str(tmp_path / "mlruns")
    opts = dict(epochs=2, ckpt_every=4, loggers=("jsonl", "tensorboard", "mlflow"), mlflow_uri=uri)
    reference = str(tmp_path / "reference")
    run(tiny(cache, reference, epochs=2, ckpt_every=4))
    expected = losses(reference)
    out = str(tmp_path / "run")
    opened: list[Tracker] = []
    real_tracker = tracking.training_tracker

    def capture(*a, **k):
        opened.append(real_tracker(*a, **k))
        return opened[-1]

    monkeypatch.setattr(trainer_module, "training_tracker", capture)
    real_step = trainer_module.Trainer.train_step

    def dying_step(self, *a, **k):
        if self.global_step == 7:  # checkpoint at step 4; steps 5-7 already logged: the "kill"
            opened[-1].tb.flush()
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(cache, out, **opts))
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    first_id = opened[0].run_id
    run(tiny(cache, out, **opts))
    assert opened[1].run_id == first_id  # the same MLflow run continues
    n = len(expected)
    assert tb_steps(os.path.join(out, "tensorboard"), "loss") == list(range(1, n + 1))
    history = mlflow_history(opened[1].uri, first_id, "loss")
    assert [s for s, _ in history] == list(range(1, n + 1))
    assert [v for _, v in history] == pytest.approx(expected, rel=1e-5)
    assert [s for s, _ in mlflow_history(opened[1].uri, first_id, "overlap10")] == [0, 6, 12]
    from mlflow.tracking import MlflowClient

    finished = MlflowClient(tracking_uri=opened[1].uri).get_run(first_id)
    assert finished.info.status == "FINISHED" and finished.data.params["student"] == "tiny_cnn"
    if store == "file":
        assert os.path.isdir(tmp_path / "mlruns")


def test_eval_command_logs_its_accuracies(tmp_path) -> None:
    from click.testing import CliRunner

    from evaluate.cli import main
    from tests.evaluate.stores import write_feature_dir

    feats = write_feature_dir(str(tmp_path / "f"))
    out = str(tmp_path / "res" / "knn.json")
    res = CliRunner().invoke(main, ["knn", "--features", feats, "--out", out, "--logger", "tensorboard", "--logger", "mlflow"])
    assert res.exit_code == 0, res.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "res" / "mlflow.db"))
    exp = client.get_experiment_by_name("compress-eval")
    (run_,) = client.search_runs([exp.experiment_id])
    assert set(run_.data.metrics) == {"nn", "knn20"} and run_.data.params["tie_break"] == "random"
    assert tb_steps(str(tmp_path / "res" / "tensorboard" / "knn"), "knn20") == [0]
