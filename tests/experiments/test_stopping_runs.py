"""Training length end to end on real small images (scikit-learn's digits): finetune's phases plan their epochs
from the least steps, stop on the validation loss and keep the best epoch, which results.json, the console and
report.html say; a test split chooses nothing; a run stopped and resumed with early stopping is the same to the
bit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import signalled_at
from safetensors.torch import load_file

from transferkit import UserError
from transferkit.cli import main
from transferkit.training import CHECKPOINT_FILE, load_checkpoint


def _kept(phase: dict) -> dict:
    return phase["history"][phase["stopping"]["kept_epoch"] - 1]


def test_finetune_plans_stops_and_keeps_the_best_epoch(sk_digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "ft"
    main(["finetune", str(sk_digits), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
          "--min-steps", "100", "--patience", "2", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    frozen = results["phases"]["frozen"]
    stop = frozen["stopping"]
    steps = -(-results["dataset"]["train_samples"] // 32)
    assert stop["steps_per_epoch"] == steps and stop["epochs_planned"] == max(5, -(-100 // steps))
    losses = [r["val_loss"] for r in frozen["history"]]
    assert stop["best_epoch"] == stop["kept_epoch"] == losses.index(min(losses)) + 1
    assert stop["reason"] in ("patience", "epochs") and frozen["epochs"] == stop["epochs_trained"] == len(losses)
    if stop["reason"] == "patience":
        assert stop["epochs_trained"] == stop["best_epoch"] + 2
    # What is reported and saved is the kept epoch: its accuracy, and the confusion matrix of the restored weights.
    assert frozen["val_accuracy"] == _kept(frozen)["val_accuracy"] and frozen["validated_on"] == "val"
    assert not {"test_accuracy", "test_loss", "test_samples"} & set(frozen)  # validation is never called test
    matrix = np.asarray(frozen["confusion_matrix"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(frozen["val_accuracy"])
    said = f"best epoch {stop['best_epoch']} by validation loss"
    assert f"frozen: {stop['epochs_planned']} epochs planned (100 steps at least, {steps} an epoch)" in capsys.readouterr().out
    assert said in (out / "report.html").read_text()


def test_a_phase_validated_on_the_test_split_trains_its_planned_epochs_and_keeps_the_last(tmp_path):
    out = tmp_path / "run"
    main(["run", "mnist", "--limit", "100", "--source", "0-1", "--target", "2-3", "--no-scratch",
          "--min-steps", "12", "--batch-size", "32", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    for phase in results["phases"].values():
        stop = phase["stopping"]
        assert stop["reason"] == "validated on the test split: last epoch kept"
        assert stop["best_epoch"] is None and stop["patience"] == 0
        assert stop["epochs_trained"] == stop["epochs_planned"] == stop["kept_epoch"] == max(5, -(-12 // stop["steps_per_epoch"]))
        assert phase["test_accuracy"] == phase["history"][-1]["val_accuracy"] and phase["validated_on"] == "test"
    assert "validated on the test split: last epoch kept" in (out / "report.html").read_text()


def test_bad_stopping_options_are_one_line():
    with pytest.raises(UserError, match="--min-steps must be 0 or more, got -1"):
        from transferkit import run_split

        run_split("mnist", min_steps=-1, save=False, verbose=False)


# Resumed with early stopping: the best weights so far, their loss and the epochs since travel in the checkpoint.
ARGS = ["--epochs", "8", "--patience", "2", "--batch-size", "32", "--no-scratch"]


def test_stopped_and_resumed_with_early_stopping_equals_uninterrupted(sk_digits, tmp_path):
    """Stopped in process (a real Ctrl-C at a chosen step) in the source phase's third epoch, with a best
    epoch kept (its weights in the checkpoint), then resumed."""
    ref = tmp_path / "ref"
    main(["run", str(sk_digits), *ARGS, "--out", str(ref), "--quiet"])
    results = json.loads((ref / "results.json").read_text())
    checks = results["distributed"]["steps_per_rank"]["source"][0] // results["phases"]["source"]["epochs"] + 1
    assert results["phases"]["source"]["epochs"] >= 3
    out = tmp_path / "run"
    with signalled_at(2 * checks + 2), pytest.raises(SystemExit) as stopped:
        main(["run", str(sk_digits), *ARGS, "--out", str(out), "--quiet"])
    assert stopped.value.code == 130
    tensors, meta = load_checkpoint(out / CHECKPOINT_FILE)
    assert (meta["phase"], meta["fit"]["epoch"]) == ("source", 3)
    assert meta["fit"]["best_epoch"] >= 1 and any(k.startswith("best.") for k in tensors)
    main(["run", str(sk_digits), *ARGS, "--resume", str(out), "--quiet"])
    a, b = (json.loads((d / "results.json").read_text())["phases"] for d in (out, ref))
    for name in b:
        assert a[name]["stopping"] == b[name]["stopping"]
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a[name]["history"]]
        assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b[name]["history"]]
        assert a[name]["misclassified"] == b[name]["misclassified"]
        wa, wb = (load_file(Path(d) / "weights" / f"{name}.safetensors") for d in (out, ref))
        assert all(torch.equal(wa[k], wb[k]) for k in wb)
