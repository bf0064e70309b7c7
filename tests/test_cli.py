"""The command line end to end: artifacts of a run, help, one-line errors."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from transferkit import load_model
from transferkit.cli import main
from transferkit.data import load_mnist, split_by_class
from transferkit.training import evaluate, images_to_tensor


@pytest.fixture(scope="module")
def run_dir(split_run):
    return split_run  # conftest's: run mnist --limit 400 --epochs 2


def test_results_json_schema(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["experiment"] == "split"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert not (run_dir / "checkpoint.safetensors").exists()  # a complete run keeps weights, not checkpoints
    assert results["dataset"]["name"] == "mnist"
    assert results["config"]["train"]["batch_size"] == 128 and results["config"]["limit"] == 400
    assert results["config"]["learning_rate"] == 1.0
    env = results["environment"]
    assert {"torch", "threads", "precision", "precision_reason", "device", "cpu"} <= set(env)
    assert list(results["phases"]) == ["source", "transfer", "scratch"]
    for phase in results["phases"].values():
        assert phase["train_samples"] == 400 and phase["test_samples"] == 400 and phase["epochs"] == 2
        confusion = phase["confusion_matrix"]  # the accuracy is the confusion matrix's diagonal share
        assert phase["test_accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(len(confusion)))
                                                       / sum(map(sum, confusion)))
        assert phase["train_seconds"] > 0
        assert set(phase["params"]) == {"total", "trainable", "non_trainable"}
        assert [r["epoch"] for r in phase["history"]] == [1, 2]
        assert set(phase["history"][0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
        # test metrics are the last validation on the test set, as the seeds report them
        assert phase["test_accuracy"] == phase["history"][-1]["val_accuracy"]
        # the span covers every epoch, validation included
        assert phase["train_seconds"] >= sum(r["seconds"] for r in phase["history"])
    assert results["phases"]["transfer"]["classes"] == ["5", "6", "7", "8", "9"]


def test_history_csv(run_dir):
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        (p, e) for p in ("source", "transfer", "scratch") for e in ("1", "2")]


def test_figures_are_real_pngs(run_dir):
    for name in ("curves", "training_time", "samples"):
        with Image.open(run_dir / f"{name}.png") as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200


@pytest.mark.parametrize("phase, classes", [("source", range(5)), ("transfer", range(5, 10))])
def test_weights_load_again_and_reproduce_the_metric(run_dir, phase, classes):
    model, spec = load_model(run_dir / "weights" / f"{phase}.safetensors")
    assert spec["class_names"] == [str(c) for c in classes]
    split = split_by_class(load_mnist(), list(classes), limit=400)
    results = json.loads((run_dir / "results.json").read_text())
    # at the precision it was measured at (auto is bf16 on CPUs that have it natively)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[results["environment"]["precision"]]
    _, accuracy = evaluate(model, images_to_tensor(split.x_test), torch.from_numpy(split.y_test),
                           autocast_dtype=dtype)
    assert accuracy == pytest.approx(results["phases"][phase]["test_accuracy"], abs=1e-9)


def test_refuses_a_non_empty_out(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "mnist", "--out", str(run_dir)])
    assert e.value.code == 2
    assert f"holds a run already; continue it with --resume {run_dir}" in capsys.readouterr().err


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, timeout=120)


def test_help_on_every_command():
    for args in ([], ["run"], ["finetune"], ["predict"], ["report"], ["compare"], ["export"], ["study"],
                 ["study", "shots"], ["study", "freeze"]):
        done = _cli(*args, "--help")
        assert done.returncode == 0 and "Usage:" in done.stdout


def test_help_answers_without_loading_torch():
    # torch takes seconds to import; help, --version and option errors should not wait for it
    check = ("import sys; from transferkit.cli import cli\n"
             "for args in (['--help'], ['run', '--help'], ['finetune', '--help'], ['study', 'shots', '--help'],\n"
             "             ['--version']):\n"
             "    try: cli(args, standalone_mode=False)\n"
             "    except SystemExit: pass\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n"
             "import transferkit; transferkit.run_split; transferkit.finetune; transferkit.predict; transferkit.load_model\n"
             "assert 'torch' in sys.modules\n"
             # torchvision takes seconds more: only backbones and their preprocessing load it, when used
             "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
             "assert 'scipy.stats' not in sys.modules, 'scipy.stats was imported'")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--data", "/nonexistent/mnist.npz"], "/nonexistent/mnist.npz: no such file"),
    (["--source", "0-4", "--target", "3-9"], "--source and --target share class(es) 3, 4"),
    (["--target", "x"], "--target: unknown class 'x'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, args, fragment):
    done = _cli("run", "mnist", "--out", str(tmp_path / "run"), *args)
    assert done.returncode == 2
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bad_npz_file_is_named(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    done = _cli("run", "mnist", "--data", str(bad), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and f"{bad}: not a readable .npz file" in done.stderr
    debug = _cli("--debug", "run", "mnist", "--data", str(bad), "--out", str(tmp_path / "run2"))
    assert "Traceback" in debug.stderr


def test_every_error_message_starts_with_error_colon(monkeypatch, capsys):
    """click's own exceptions (a ClickException raised inside a command) print as transferkit's: "error: ..."."""
    import click

    from transferkit.cli import cli

    @click.command("fails")
    def fails() -> None:
        raise click.ClickException("it failed")

    monkeypatch.setitem(cli.commands, "fails", fails)
    with pytest.raises(SystemExit) as e:
        main(["fails"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == "error: it failed\n", err
    with pytest.raises(SystemExit):
        main(["run", "--epochs", "x"])  # a usage error
    assert capsys.readouterr().err.startswith("error: ")
