"""--track tensorboard / mlflow: what a tiny run wrote, read back with each library's own reader (TensorBoard's
EventAccumulator, MLflow's client on a file store under tmp: no server), against history.csv; one tracker run
after an interruption and --resume; a failing tracker warns once and the run completes."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from conftest import cli_in_process, signalled_at

import transferkit
from transferkit import UserError

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

# 100 images a split, batches of 32: 4 steps (5 stop checks) an epoch, two epochs a phase.
TINY = ["run", "mnist", "--limit", "100", "--epochs", "2", "--batch-size", "32"]


_cli = cli_in_process


def _history(run_dir: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with open(run_dir / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["phase"], []).append(row)
    return rows


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _client(uri: str):
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, str]:
    """A tiny run (source, transfer and its scratch control) tracked by both."""
    root = tmp_path_factory.mktemp("tracked")
    uri = (root / "mlruns").as_uri()
    code, err = _cli(*TINY, "--out", str(root / "run"), "--track", "tensorboard", "--track", f"mlflow={uri}")
    assert code == 0, err
    return root / "run", uri


def test_tensorboard_holds_history_csv(tracked):
    run_dir, _ = tracked
    history = _history(run_dir)
    assert set(history) == {"source", "transfer", "scratch"}
    for phase, rows in history.items():
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            scalars = _scalars(run_dir / "tensorboard" / phase, f"epoch/{key}")
            assert [s for s, _ in scalars] == [1, 2]  # one event a step: the epoch
            assert [v for _, v in scalars] == pytest.approx([float(r[key]) for r in rows], rel=1e-6)  # float32
        lr = _scalars(run_dir / "tensorboard" / phase, "epoch/lr")
        assert [s for s, _ in lr] == [1, 2] and all(v > 0 for _, v in lr)
        assert all(v > 0 for _, v in _scalars(run_dir / "tensorboard" / phase, "epoch/images_per_s"))
    results = json.loads((run_dir / "results.json").read_text())
    final = _scalars(run_dir / "tensorboard" / "transfer", "final/balanced_accuracy")
    assert final[0][1] == pytest.approx(results["phases"]["transfer"]["metrics"]["balanced_accuracy"], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    figures = EventAccumulator(str(run_dir / "tensorboard" / "run"), size_guidance={"images": 0})
    figures.Reload()
    assert "figures/curves" in figures.Tags()["images"]
    assert results["tracking"]["tensorboard"]["dir"] == str(run_dir / "tensorboard")


def test_mlflow_holds_params_metrics_and_files(tracked):
    run_dir, uri = tracked
    client = _client(uri)
    results = json.loads((run_dir / "results.json").read_text())
    run_id = results["tracking"]["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.filters"] == "32"
    assert run.data.params["target_classes"] == "5,6,7,8,9"
    for phase, rows in _history(run_dir).items():
        for key in ("loss", "val_accuracy"):
            metrics = client.get_metric_history(run_id, f"{key}/{phase}")
            assert [(m.step, m.value) for m in metrics] == [(int(r["epoch"]), float(r[key])) for r in rows]
    transfer = results["phases"]["transfer"]
    assert run.data.metrics["final/transfer/accuracy"] == transfer["test_accuracy"]
    assert run.data.metrics["final/transfer/macro_f1"] == transfer["metrics"]["macro_f1"]
    files = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "weights")}
    assert {"results.json", "history.csv", "report.html", "curves.png", "weights/transfer.safetensors"} <= files
    assert not any(f.startswith("checkpoint") for f in files)


def test_resume_continues_the_same_tracker_run(tmp_path):
    """Stopped two steps into the transfer phase's second epoch, resumed: one MLflow run, every epoch once."""
    uri, out = (tmp_path / "mlruns").as_uri(), tmp_path / "run"
    args = [*TINY, "--no-scratch", "--track", "tensorboard", "--track", f"mlflow={uri}"]
    with signalled_at(2 * 5 + 5 + 2):  # source's 2 epochs, transfer's first, 2 steps of its second
        code, err = _cli(*args, "--out", str(out))
    assert code == 130, err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    run_id = json.loads((out / "results.json").read_text())["tracking"]["mlflow"]["run_id"]
    assert [m.step for m in _client(uri).get_metric_history(run_id, "loss/transfer")] == [1]
    code, err = _cli(*TINY, "--no-scratch", "--resume", str(out))  # the trackers recorded are continued
    assert code == 0, err
    client = _client(uri)
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("transferkit").experiment_id])] \
        == [run_id]
    history = _history(out)
    for phase in ("source", "transfer"):
        metrics = client.get_metric_history(run_id, f"val_accuracy/{phase}")
        assert [(m.step, m.value) for m in metrics] == [(int(r["epoch"]), float(r["val_accuracy"]))
                                                        for r in history[phase]]
        assert [s for s, _ in _scalars(out / "tensorboard" / phase, "epoch/val_accuracy")] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_failing_tracker_warns_once_and_the_run_completes(tmp_path, monkeypatch):
    from transferkit.reporting.tracking_tensorboard import TensorBoardTracker

    def full(self, phase, step, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "epoch", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = transferkit.run_split("mnist", limit=100, epochs=1, batch_size=32, scratch=False,
                                       out=tmp_path / "run", verbose=False, track="tensorboard")
    said = [str(w.message) for w in caught if "--track" in str(w.message)]
    assert len(said) == 1 and "No space left on device" in said[0] and "training goes on" in said[0]
    assert json.loads((result.run_dir / "status.json").read_text())["status"] == "complete"


def test_a_study_logs_a_child_run_per_point(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    from transferkit.experiments.study import study

    result = study("shots", "mnist", shots="10", seeds=2, limit=100, epochs=1, min_steps=1, jobs=1,
                   out=tmp_path / "study", verbose=False, track=[f"mlflow={uri}"])
    client = _client(uri)
    parent = result.results["tracking"]["mlflow"]["run_id"]
    experiment = client.get_experiment_by_name("transferkit").experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == sorted(result.results["points"])
    assert all(r.data.metrics for r in children)


@pytest.mark.parametrize("value, said", [
    ("wandb", "--track wandb: unknown tracker; give tensorboard[=DIR] or mlflow[=URI]"),
    ("mlflow=", "--track mlflow=: empty URI"),
])
def test_bad_track_values_are_one_line(value, said):
    code, err = _cli("run", "mnist", "--track", value)
    assert code == 2 and said in err and "Traceback" not in err


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r'--track mlflow: .*pip install "transferkit\[mlflow\]"'):
        transferkit.run_split("mnist", limit=100, epochs=1, track="mlflow")


def test_no_run_folder_tracks_nothing():
    with pytest.raises(UserError, match="save=False"):
        transferkit.run_split("mnist", limit=100, epochs=1, save=False, track=["tensorboard"])


def test_a_rank_logs_a_child_run_per_candidate():
    from transferkit.reporting.tracking import children

    rows = [{"name": "efficientnet_lite0", "control": False, "scores": {"logme": 1.5, "knn": 0.75}, "layer": None},
            {"name": "efficientnet_lite0 (random)", "control": True, "scores": {"logme": float("nan"), "knn": 0.25}}]
    assert children({"experiment": "rank", "candidates": rows}) == [
        ("efficientnet_lite0", {"scores.logme": 1.5, "scores.knn": 0.75}),
        ("efficientnet_lite0 (random)", {"scores.knn": 0.25})]  # NaN is no number a tracker is given


def test_a_finetune_logs_both_phases(digits_folder, tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    tuned = transferkit.finetune(digits_folder, backbone="resnet18", weights="none", image_size=32, epochs=1,
                                 unfreeze_epochs=1, batch_size=16, out=tmp_path / "run", verbose=False,
                                 track=[f"mlflow={uri}", "tensorboard"])
    client, run_id = _client(uri), tuned.results["tracking"]["mlflow"]["run_id"]
    for phase, rows in _history(tuned.run_dir).items():
        assert [m.value for m in client.get_metric_history(run_id, f"val_loss/{phase}")] == \
            [float(r["val_loss"]) for r in rows]
        assert [s for s, _ in _scalars(tuned.run_dir / "tensorboard" / phase, "epoch/val_loss")] == [1]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["final/unfrozen/balanced_accuracy"] == \
        tuned.results["phases"]["unfrozen"]["metrics"]["balanced_accuracy"]
    assert "weights/model.safetensors" in {a.path for a in client.list_artifacts(run_id, "weights")}
