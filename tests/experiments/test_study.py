"""Studies on small data: they run, resume after a kill to the same study.json, and refuse bad options."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from transferkit import UserError, study
from transferkit.cli import main
from transferkit.experiments.study import shot_indices
from transferkit.reporting.study import interval, summarise

TINY = ["--limit", "200", "--epochs", "2", "--min-steps", "6"]
SHOTS = ["study", "shots", "mnist", "--shots", "3,all", "--seeds", "2", *TINY]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, timeout=600)


def _without_time(study_json: dict) -> dict:
    """What must be equal between two studies of the same seeds: everything but clocks."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if k not in ("seconds", "train_seconds", "created", "feature_cache_seconds", "environment")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(study_json)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "ref"
    done = _run(*SHOTS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_shots_study_records_every_point_with_intervals(uninterrupted):
    record = json.loads((uninterrupted / "study.json").read_text())
    assert len(record["points"]) == 2 * 2 * 2  # arms x shot counts x seeds
    point = record["points"]["transfer/shots=3/seed=1"]
    assert point["arm"] == "transfer" and point["shots"] == 3 and point["seed"] == 1
    assert point["train_samples"] == 3 * 5 and point["steps"] >= 6
    row = next(r for r in record["summary"] if r["arm"] == "scratch" and r["shots"] == 0)
    values = [record["points"][f"scratch/shots=all/seed={s}"]["test_accuracy"] for s in (0, 1)]
    assert (row["test_accuracy"], row["ci_low"], row["ci_high"]) == pytest.approx(interval(values))
    assert row["ci_low"] < row["test_accuracy"] < row["ci_high"] or values[0] == values[1]
    assert any(line.startswith("With 3 images per class") for line in record["findings"])
    csv_rows = (uninterrupted / "study.csv").read_text().splitlines()
    assert csv_rows[0].startswith("arm,shots,cut,seed") and len(csv_rows) == 1 + 8
    assert (uninterrupted / "study.png").read_bytes().startswith(b"\x89PNG")
    assert "<li>" in (uninterrupted / "report.html").read_text()


def test_a_study_killed_then_resumed_equals_the_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *SHOTS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # killed once some points of the first seed are written
        assert proc.poll() is None, "the study ended before it could be killed"
        try:
            if len(json.loads((out / "study.json").read_text())["points"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "status.json").read_text())["status"] == "running"
    done = _run(*SHOTS, "--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert "finished before" in done.stdout
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, uninterrupted))
    assert _without_time(a) == _without_time(b)


@pytest.mark.parametrize("args, says", [
    (["shots", "mnist", "--arms", "transfer,fancy"], "--arms: unknown arm 'fancy'; the shots study's arms are"),
    (["shots", "mnist", "--shots", "1,10000"], "--shots 10000: class '6' has only 14 training images; give shot counts up to 14 (or all)"),
    (["shots", "mnist", "--shots", "1,many"], "--shots 1,many: 'many' is not a whole number or all"),
    (["freeze", "mnist", "--cuts", "1,4"], "--cuts 4: the seed network has 3 weight layers"),
    (["freeze", "mnist", "--seeds", "1"], "--seeds 1: a 95% interval needs 2 seeds or more"),
    (["freeze", "mnist", "--arms", "transfer"], "--arms: unknown arm 'transfer'; the freeze study's arms are"),
])
def test_bad_study_options_are_one_line(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", *args, "--limit", "100"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before a study folder exists


def test_a_freeze_study_copies_and_freezes_the_cut(tmp_path):
    result = study("freeze", "mnist", seeds=2, cuts="1,3", arms="baseB,BnB,AnB+", limit=200, epochs=1,
                   min_steps=4, out=tmp_path / "freeze", verbose=False)
    points = result.results["points"]
    assert sorted({p["arm"] for p in points.values()}) == ["AnB+", "BnB", "baseB"]
    # Frozen: BnB at cut 3 trains dense2 alone (128 x 5 + 5); AnB+ trains everything.
    assert points["BnB/cut=3/seed=0"]["trainable"] == 128 * 5 + 5
    assert points["AnB+/cut=1/seed=0"]["trainable"] == points["baseB/seed=0"]["trainable"]
    assert result.table[0]["arm"] in ("AnB+", "BnB", "baseB") and len(result.results["findings"]) >= 2


def test_shot_sets_are_nested_and_the_same_for_both_arms():
    labels = np.repeat(np.arange(3), 20)
    five, ten = shot_indices(labels, 5, seed=7), shot_indices(labels, 10, seed=7)
    assert set(five) <= set(ten) and np.bincount(labels[five]).tolist() == [5, 5, 5]
    assert np.array_equal(five, shot_indices(labels, 5, seed=7))
    assert len(shot_indices(labels, 0, seed=7)) == 60  # all


def test_the_crossover_is_the_smallest_shot_count_from_which_scratch_keeps_up():
    def points(gains: dict[int, float]) -> dict:
        out = {}
        for shots, gain in gains.items():
            for seed in (0, 1):
                out[f"transfer/{shots}/{seed}"] = {"arm": "transfer", "shots": shots, "seed": seed, "cut": None,
                                                   "test_accuracy": 0.9, "test_loss": 0.1, "seconds": 1.0}
                out[f"scratch/{shots}/{seed}"] = {"arm": "scratch", "shots": shots, "seed": seed, "cut": None,
                                                  "test_accuracy": 0.9 - gain / 100, "test_loss": 0.1, "seconds": 1.0}
        return out

    # Within a point at 10, behind again at 50: the crossover is where it stays within, 100.
    _, findings, crossover = summarise(points({1: 20.0, 10: 0.5, 50: 3.0, 100: 0.2, 0: -0.4}), "shots")
    assert crossover == 100 and findings[-1] == "Scratch comes within 1 point of transfer from 100 images per class on."
    _, findings, crossover = summarise(points({1: 20.0, 0: 2.0}), "shots")
    assert crossover is None and "does not come within" in findings[-1]


def test_a_study_needs_two_seeds_from_the_api_too():
    with pytest.raises(UserError, match="--seeds 1"):
        study("shots", "mnist", seeds=1, shots="1", save=False, verbose=False)
