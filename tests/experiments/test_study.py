"""Studies on small data: they run, resume after a kill to the same study.json, and refuse bad options."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit import UserError, study
from transferkit.cli import main
from transferkit.experiments.study import study_jobs, study_points, study_units
from transferkit.experiments.study_plan import Point, StudyConfig, shot_indices
from transferkit.reporting.study import ACCURACY_RANGE, POINTS_RANGE, interval, seeds_needed, summarise
from transferkit.training.batches import usable_cores

TINY = ["--limit", "200", "--epochs", "2", "--min-steps", "6"]
SHOTS = ["study", "shots", "mnist", "--shots", "3,all", "--seeds", "2", *TINY]


def _run(*args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, timeout=600,
                          env=env, preexec_fn=_few_processes)


def _few_processes() -> None:
    """A study with --jobs forks workers: the tests' ones run with a ceiling on processes (where the user is
    not root, which the limit does not bind) and on each process's memory, so a bug cannot fork without end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    limit = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_few_processes)


def _wait_for_points(proc: subprocess.Popen, out: Path, points: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be stopped"
        try:
            if len(json.loads((out / "study.json").read_text())["points"]) >= points:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{out}: no {points} points in 300 s")


def _workers(pid: int) -> list[int]:
    """The study's worker processes: the children of `pid` started by multiprocessing's spawn (not its
    resource tracker)."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                workers.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # ended meanwhile
            pass
    return workers


def _gone(pids: list[int], seconds: float = 20) -> bool:
    """Whether every one of `pids` has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


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
    """A study in one process (--jobs 1; the tests of --jobs 2 are below)."""
    out = tmp_path_factory.mktemp("study") / "ref"
    done = _run(*SHOTS, "--jobs", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_shots_study_records_every_point_with_intervals(uninterrupted):
    record = json.loads((uninterrupted / "study.json").read_text())
    assert len(record["points"]) == 2 * 2 * 2  # arms x shot counts x seeds
    assert record["dataset"]["tested_on"] == "test"  # MNIST's test split
    point = record["points"]["transfer/shots=3/seed=1"]
    assert point["arm"] == "transfer" and point["shots"] == 3 and point["seed"] == 1
    assert point["train_samples"] == 3 * 5 and point["steps"] >= 6
    row = next(r for r in record["summary"] if r["arm"] == "scratch" and r["shots"] == 0)
    values = [record["points"][f"scratch/shots=all/seed={s}"]["test_accuracy"] for s in (0, 1)]
    assert (row["test_accuracy"], row["ci_low"], row["ci_high"]) == pytest.approx(interval(values, ACCURACY_RANGE))
    assert row["ci_low"] < row["test_accuracy"] < row["ci_high"] or values[0] == values[1]
    assert any(line.startswith("With 3 images per class") for line in record["findings"])
    csv_rows = (uninterrupted / "study.csv").read_text().splitlines()
    assert csv_rows[0].startswith("arm,shots,cut,seed") and len(csv_rows) == 1 + 8
    assert (uninterrupted / "study.png").read_bytes().startswith(b"\x89PNG")
    assert "<li>" in (uninterrupted / "report.html").read_text()


def test_a_study_killed_then_resumed_equals_the_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *SHOTS, "--jobs", "1", "--out", str(out)],
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
    done = _run(*SHOTS, "--jobs", "1", "--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert "finished before" in done.stdout
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, uninterrupted))
    assert _without_time(a) == _without_time(b)


@pytest.mark.parametrize("args, says", [
    (["shots", "mnist", "--arms", "transfer,fancy"], "--arms: unknown arm 'fancy'; the shots study's arms are"),
    (["shots", "mnist", "--shots", "1,10000"], "--shots 10000: class '5' has only 20 training images; give shot counts up to 20 (or all)"),  # --limit 100: 20 a class
    (["freeze", "mnist", "--cuts", "1,4"], "--cuts 4: the seed network has 3 weight layers"),
    (["freeze", "mnist", "--seeds", "1"], "--seeds 1: a 95% interval needs 2 seeds or more"),
    (["freeze", "mnist", "--arms", "transfer"], "--arms: unknown arm 'transfer'; the freeze study's arms are"),
    (["shots", "mnist", "--jobs", "0"], "--jobs must be 1 or more, got 0"),
    (["shots", "mnist", "--seeds", "1000000000"], "--seeds 1000000000: at most 1000"),
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


def test_frozen_conv_layers_run_once_a_point_and_the_rest_trains_on_their_output(monkeypatch):
    module = sys.modules["transferkit.experiments.study_trainer"]  # where a point computes its frozen prefix
    passes = []
    real = module.compute_features

    def counted(prefix, x, *args, **kwargs):
        passes.append((list(dict(prefix.named_children())), len(x)))
        return real(prefix, x, *args, **kwargs)

    monkeypatch.setattr(module, "compute_features", counted)
    result = study("freeze", "mnist", seeds=2, cuts="1,2,3", arms="BnB,BnB+", limit=200, epochs=1, min_steps=4,
                   jobs=1, save=False, verbose=False)  # one process: the counter sees every pass
    # BnB at cuts 2 and 3 of 2 seeds: the frozen conv1, conv2 and pool once over the train and the test images;
    # not at cut 1 (conv2 trains) nor for BnB+ (everything trains).
    n_train, n_test = (result.results["dataset"][k] for k in ("target_train_samples", "target_test_samples"))
    assert passes == [(["conv1", "relu1", "conv2", "relu2", "pool"], n) for n in (n_train, n_test)] * 4
    points = result.results["points"]
    assert points["BnB/cut=3/seed=1"]["trainable"] == 128 * 5 + 5  # still dense2 alone: dense1 stays frozen
    assert points["BnB/cut=2/seed=1"]["trainable"] == points["BnB/cut=3/seed=1"]["trainable"] + 12 * 12 * 32 * 128 + 128

    # Beyond PREFIX_CACHE_BYTES the frozen layers run at every step instead: the same training, up to float sums.
    passes.clear()
    monkeypatch.setattr(module, "PREFIX_CACHE_BYTES", 0)
    again = study("freeze", "mnist", seeds=2, cuts="1,2,3", arms="BnB,BnB+", limit=200, epochs=1, min_steps=4,
                  jobs=1, save=False, verbose=False)
    assert passes == []
    for name, point in again.results["points"].items():
        assert point["test_accuracy"] == pytest.approx(points[name]["test_accuracy"], abs=1 / n_test), name
        assert point["test_loss"] == pytest.approx(points[name]["test_loss"], rel=1e-3), name


def test_the_rest_of_the_seed_network_on_its_frozen_conv_output_is_the_whole_network():
    from transferkit.config import ModelConfig
    from transferkit.models import SeedCNN
    from transferkit.training import compute_features, split_frozen

    torch.manual_seed(0)
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5).eval()
    x = torch.rand(8, 1, 28, 28)
    prefix, tail = split_frozen(model.features)
    rest = torch.nn.Sequential(tail, model.classifier).eval()
    torch.testing.assert_close(rest(compute_features(prefix, x)), model(x), rtol=1e-4, atol=1e-5)


def test_shot_sets_are_nested_and_the_same_for_both_arms():
    labels = np.repeat(np.arange(3), 20)
    five, ten = shot_indices(labels, 5, seed=7), shot_indices(labels, 10, seed=7)
    assert set(five) <= set(ten) and np.bincount(labels[five]).tolist() == [5, 5, 5]
    assert np.array_equal(five, shot_indices(labels, 5, seed=7))
    assert len(shot_indices(labels, 0, seed=7)) == 60  # all


def test_an_interval_stays_inside_what_its_values_can_be():
    # Two seeds: t = 12.7, so 0.6 and 0.8 give 0.7 +- 1.27, an accuracy interval from -0.57 to 1.97, cut to [0, 1].
    assert interval([0.6, 0.8], ACCURACY_RANGE) == pytest.approx((0.7, 0.0, 1.0))
    assert interval([-60.0, 90.0], POINTS_RANGE)[1:] == (-100.0, 100.0)
    mean, low, high = interval([0.70, 0.72, 0.71, 0.73, 0.69], ACCURACY_RANGE)  # well inside: t's own interval
    assert 0 < low < mean < high < 1 and high - low == pytest.approx(2 * 2.776 * 0.01581 / 5 ** 0.5, rel=1e-3)


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
    assert crossover == 100 and findings[-1].startswith("Scratch comes within 1 point of transfer from 100 images per class on")
    _, findings, crossover = summarise(points({1: 20.0, 0: 2.0}), "shots")
    assert crossover is None and "does not come within" in findings[-1]


def _gain_points(gains: dict[int, list[float]]) -> dict:
    """Points whose transfer-minus-scratch gain at each shot count is `gains` (points), seed by seed."""
    out = {}
    for shots, per_seed in gains.items():
        for seed, gain in enumerate(per_seed):
            for arm, acc in (("transfer", 0.9), ("scratch", 0.9 - gain / 100)):
                out[f"{arm}/{shots}/{seed}"] = {"arm": arm, "shots": shots, "seed": seed, "cut": None,
                                                "test_accuracy": acc, "test_loss": 0.1, "seconds": 1.0}
    return out


def test_a_difference_whose_interval_includes_zero_is_not_a_lead():
    # The study: 2 seeds, +0.4 and +1.4 points with intervals of about +-28 and +-24.
    rows, findings, crossover = summarise(_gain_points({1: [-2.9, 3.7], 10: [-0.5, 3.3]}), "shots")
    assert crossover is None
    for line, shots in zip(findings, ("1 image", "10 images"), strict=False):
        assert line.startswith(f"With {shots} per class the difference is not established at 2 seeds: transfer")
        assert "leads" not in line and "includes zero" in line and "a t interval from 2 seeds is wide" in line
        assert "seeds would be needed for this spread to exclude zero (an estimate" in line
    assert "does not come within" not in findings[-1] and "not established at any shot count" in findings[-1]
    # The estimate: the fewest seeds whose t interval of this mean and spread excludes zero.
    needed = seeds_needed([-0.5, 3.3])
    assert f"about {needed} seeds" in findings[1]
    s, d = np.std([-0.5, 3.3], ddof=1), 1.4
    from scipy import stats
    assert stats.t.ppf(0.975, needed - 1) * s / np.sqrt(needed) < d <= stats.t.ppf(0.975, needed - 2) * s / np.sqrt(needed - 1)
    # Established where the interval excludes zero, and a crossover only where every interval from it on ends
    # within a point: at 10, one of 3 seeds 5 points behind keeps it open; scratch is within from all on.
    _, findings, crossover = summarise(_gain_points({1: [20, 22, 25], 10: [5, -1, 0.5], 0: [0.2, 0.1, 0.3]}), "shots")
    assert findings[0] == "With 1 image per class transfer leads by 22.3 points (95% interval +16.1 to +28.6, 3 seeds)."
    assert "not established at 3 seeds" in findings[1]
    assert crossover == 0 and findings[-1].startswith("Scratch comes within 1 point of transfer from all images on")
    # Mixed, with no crossover: the sentence names each shot count for what its interval says.
    _, findings, crossover = summarise(_gain_points({1: [20, 22, 25], 10: [0.1, 0.2, 0.3], 0: [5, -1, 0.5]}), "shots")
    assert crossover is None and findings[-1] == (
        "Where scratch comes within 1 point of transfer is not established in this range: transfer ahead by more "
        "than 1 point at 1 image per class; scratch within 1 point at 10 images per class; not established at all "
        "images per class (the interval reaches both sides of +1.0, or there is none).")
    # Every seed the same difference (one image apart at each): an interval of no width is no lead.
    _, findings, _ = summarise(_gain_points({5: [-3.2, -3.2]}), "shots")
    assert findings[0] == ("With 5 images per class scratch is 3.2 points ahead at each of the 2 seeds alike: no spread "
                           "between the seeds to form an interval from, so no lead is established (more seeds would "
                           "show the spread).")


def test_one_seed_has_no_interval_said_so_and_drawn_without_one(tmp_path):
    from transferkit.jsonfile import strict_json
    from transferkit.reporting.study import shots_figure

    rows, findings, crossover = summarise(_gain_points({1: [5.0], 0: [0.3]}), "shots")
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in rows)
    assert {r["ci_note"] for r in rows} == {"no interval: no spread from one seed"}
    assert findings[0] == ("With 1 image per class the difference is not established at 1 seed: transfer 5.0 points "
                           "ahead (no interval: no spread from one seed).")
    assert crossover is None and "Scratch comes within" not in findings[-1]
    strict_json({"summary": rows, "findings": findings}, what="study.json")  # no NaN anywhere
    shots_figure({"summary": rows, "dataset": {"target_class_sizes": [10, 10]}})
    freeze_rows, freeze_findings, _ = summarise({
        "b": {"arm": "baseB", "cut": None, "seed": 0, "shots": None, "test_accuracy": 0.9, "test_loss": 0.1, "seconds": 1},
        "n": {"arm": "BnB", "cut": 1, "seed": 0, "shots": None, "test_accuracy": 0.8, "test_loss": 0.1, "seconds": 1},
    }, "freeze")
    assert freeze_findings[0] == "baseB reaches 0.9000 (no interval: no spread from one seed)."
    assert "no drop from fragile co-adaptation is established" in freeze_findings[1]


def test_seeds_are_bounded_and_the_plan_is_built_once(monkeypatch):
    with pytest.raises(UserError, match="--seeds 1001: at most 1000"):
        StudyConfig("shots", seeds=1001)  # before any plan: 10^9 seeds were a MemoryError in study_points
    module = sys.modules["transferkit.experiments.study"]
    built = []
    real = module.study_points
    monkeypatch.setattr(module, "study_points", lambda config: built.append(1) or real(config))
    config = StudyConfig("shots", seeds=40, shots=(1, 0))
    names = [p.name for p in real(config)]
    points = {name: {} for name in reversed(names)}
    results = {"phases": {}, "points": points, "distributed": {}}
    module.in_plan_order(results, config)
    assert list(results["points"]) == names and len(built) == 1  # was once a seed: 76 s at 1000 seeds
    assert sum(len(u.points) for u in study_units(config)) == len(names) and len(built) == 2


def test_a_study_needs_two_seeds_from_the_api_too():
    with pytest.raises(UserError, match="--seeds 1"):
        study("shots", "mnist", seeds=1, shots="1", save=False, verbose=False)


# --- points in parallel processes (--jobs) ---

needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="--jobs 2 needs 2 usable cores")


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "jobs2"
    done = _run(*SHOTS, "--jobs", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 processes x" in done.stdout
    return out


@needs_two_cores
def test_two_jobs_train_the_points_of_one_job_with_as_many_threads(two_jobs, tmp_path):
    # A point's numbers depend on its thread count (float sums split over threads), not on which process
    # trained it: 2 processes x T threads give one process of T threads' study.json to the bit.
    threads = usable_cores() // 2
    done = _run(*SHOTS, "--jobs", "1", "--out", str(tmp_path / "one"), threads=threads)
    assert done.returncode == 0, done.stderr
    a, b = (json.loads((d / "study.json").read_text()) for d in (two_jobs, tmp_path / "one"))
    assert (a["distributed"]["jobs"], a["distributed"]["threads_per_job"]) == (2, threads)
    assert (b["distributed"]["jobs"], b["distributed"]["threads_per_job"]) == (1, threads)
    for record in (a, b):
        del record["distributed"]["jobs"]
    assert _without_time(a) == _without_time(b)
    assert list(a["points"]) == list(b["points"])  # recorded in the plan's order, whichever process was first


@needs_two_cores
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_two_job_study_stopped_then_resumed_equals_the_uninterrupted_one(two_jobs, tmp_path, stop):
    out = tmp_path / "run"
    proc = _popen(*SHOTS, "--jobs", "2", "--out", str(out))
    _wait_for_points(proc, out, 2)
    workers = _workers(proc.pid)
    assert workers
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert _gone(workers), "worker processes left behind"
    status = json.loads((out / "status.json").read_text())["status"]
    if stop == signal.SIGTERM:  # checkpointed and said so, as one process does
        assert proc.returncode == 143 and status == "interrupted", err
        assert f"--jobs 2 --resume {out}" in err.splitlines()[-1]
    else:
        assert status == "running"
    done = _run(*SHOTS, "--jobs", "2", "--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert "finished before" in done.stdout
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, two_jobs))
    assert _without_time(a) == _without_time(b)
    assert not list(out.glob("checkpoint*"))


@needs_two_cores
def test_a_worker_that_dies_fails_the_study_with_its_error(tmp_path):
    out = tmp_path / "run"
    proc = _popen(*SHOTS, "--jobs", "2", "--out", str(out))
    _wait_for_points(proc, out, 1)
    workers = _workers(proc.pid)
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and _gone(workers)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed"
    # One line naming the worker, how it died, its unit and how to continue (was the parent's traceback).
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: study process "), err
    line = err.strip().splitlines()[-1]
    assert re.search(r"study process \d ended with exit code -9 \(killed by SIGKILL: the out-of-memory killer's "
                     r"signal, or kill -9\) while training unit \d+ \(", line), line
    assert line.endswith(f"the finished points are saved: continue with --resume {out} and the same options")
    assert status["error"] == "UserError: " + line[len("error: "):]


def test_what_a_resumed_study_cannot_read_is_computed_again_keeping_the_finished_points(tmp_path, monkeypatch):
    """A base network's weights cut short (SafetensorError, was a traceback) or missing, and a checkpoint cut
    short (was: start again): trained again from their seeds, to the uninterrupted study's numbers."""
    from transferkit.experiments.study import StudyRecorder

    options = {"shots": "3", "seeds": 2, "limit": 200, "epochs": 1, "min_steps": 4, "jobs": 1, "verbose": False}
    reference = study("shots", "mnist", out=tmp_path / "ref", **options).results
    progress = StudyRecorder.record

    def stop_after_four(self, *args):
        progress(self, *args)
        if self.done == 4:  # both seeds' baseA and transfer point
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(StudyRecorder, "record", stop_after_four)
        with pytest.raises(KeyboardInterrupt):
            study("shots", "mnist", out=out, **options)
    base = out / "weights" / "baseA-seed=0.safetensors"
    base.write_bytes(base.read_bytes()[:100])
    (out / "weights" / "baseA-seed=1.safetensors").unlink()
    checkpoint = out / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:50])
    with pytest.warns(UserWarning) as said:
        resumed = study("shots", "mnist", resume=out, **options).results
    lines = [str(w.message) for w in said]
    assert any(line.startswith(f"{base}: cannot be read (") and "training baseA/seed=0 again from its seed" in line
               for line in lines), lines
    assert any("baseA-seed=1.safetensors: cannot be read" in line for line in lines), lines
    assert any(line.startswith(f"{checkpoint}: cannot be read (") and "deleted; training baseA/seed=0 again from its "
               "start" in line for line in lines), lines
    assert {name: p["test_accuracy"] for name, p in resumed["points"].items()} == {
        name: p["test_accuracy"] for name, p in reference["points"].items()}
    assert list(resumed["phases"]) == list(reference["phases"])


def test_a_damaged_study_json_is_one_line_for_report_and_resume(tmp_path, capsys):
    from transferkit.reporting import write_status

    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"experiment": "study", "kind": "shots", "config": {}, "phases": {},
                                                "dataset": {}, "points": []}))
    write_status(out, "interrupted")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err == (f"error: {out / 'study.json'}: points must be a JSON object, got []; the file is damaged; run the "
                   "study again")


def test_the_resume_mismatch_names_the_command_that_gives_the_kind():
    from transferkit.experiments.run_folder import config_differences

    assert config_differences({"kind": "shots", "seeds": 2}, {"kind": "freeze", "seeds": 3}) == [
        "kind was 'shots', now 'freeze' (transferkit study shots)", "seeds was 2, now 3 (--seeds 2)"]


def test_jobs_are_capped_at_the_cores_and_the_seeds(monkeypatch):
    for module in ("transferkit.experiments.study", "transferkit.training.batches"):  # (the function study
        monkeypatch.setattr(sys.modules[module], "usable_cores", lambda: 2)  # hides its module's name)
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="--jobs 64: this process may use 2 core"):
        assert study_jobs(64, units=5, device=cpu) == 2
    assert study_jobs(2, units=5, device=cpu) == 2 and study_jobs(2, units=1, device=cpu) == 1
    assert study_jobs(None, units=5, device=cpu) == 2 and study_jobs(None, units=1, device=cpu) == 1  # default
    assert study_jobs(None, units=5, device=torch.device("cuda")) == 1
    with pytest.raises(UserError, match="--jobs must be 1 or more, got -1"):
        study_jobs(-1, units=5, device=cpu)
    with pytest.raises(UserError, match="parallel study processes are for the CPU"):
        study_jobs(2, units=5, device=torch.device("cuda"))



def test_a_script_without_a_main_guard_runs_a_study_in_worker_processes(tmp_path):
    """Spawned workers never run the user's script again: an unguarded top-level call works (it used to start a
    study in every worker, and CPython's spawn then blocked writing to a worker that had died)."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text("import transferkit\n"
                      "r = transferkit.study('shots', 'mnist', shots='5,10', seeds=2, limit=300, epochs=1, "
                      "min_steps=3, jobs=2, save=False, verbose=False)\n"
                      "print('points', len(r.results['points']))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "points 8" and "Traceback" not in done.stderr


def test_the_work_is_cut_into_units_that_share_only_finished_networks():
    """Every point in exactly one unit; a point that copies a network is in the unit that trains it; longest
    units first (networks to train, then single points from all down), so no process ends alone on a seed."""
    shots = StudyConfig("shots", seeds=5, shots=(1, 10, 0))
    units = study_units(shots)
    assert [(u.seed, u.base, [p.arm for p in u.points]) for u in units[:5]] == [
        (s, "baseA", ["transfer"] * 3) for s in range(5)]
    assert [(u.base, len(u.points), u.points[0].arm, u.points[0].shots) for u in units[5:]] == [
        (None, 1, "scratch", n) for n in (0, 10, 1) for _ in range(5)]
    freeze = StudyConfig("freeze", seeds=3, cuts=(1, 2))
    for config, planned in ((shots, units), (freeze, study_units(freeze))):
        points = [p for u in planned for p in u.points] + [Point("baseB", u.seed) for u in planned if u.base == "baseB"]
        assert sorted(p.name for p in points) == sorted(p.name for p in study_points(config))
        for u in planned:
            assert all(p.seed == u.seed for p in u.points)
            assert u.base == {"transfer": "baseA", "AnB": "baseA", "AnB+": "baseA", "BnB": "baseB", "BnB+": "baseB",
                              "scratch": None}[u.points[0].arm] if u.points else u.base == "baseB"
    assert len(study_units(freeze)) == 6  # A's and B's chain per seed: 3 seeds keep 2 processes busy to the end
    only_scratch = StudyConfig("shots", seeds=2, shots=(5,), arms=("scratch",))
    assert [u.base for u in study_units(only_scratch)] == [None, None]  # no source network where no arm copies one


@pytest.mark.parametrize("kind, held_out", [("shots", "test"), ("freeze", "val")])
def test_both_study_kinds_run_the_seed_network_on_an_image_folder(shapes, tmp_path, kind, held_out):
    out, folder = tmp_path / kind, tmp_path / "shapes"
    shutil.copytree(shapes, folder)
    (folder / "test").rename(folder / held_out)  # a folder of train/ and val/ only: its points tested on val/
    options = ["--shots", "2,all"] if kind == "shots" else ["--cuts", "1,3"]
    main(["study", kind, str(folder), *options, "--seeds", "2", "--epochs", "1", "--min-steps", "3", "--jobs", "1",
          "--out", str(out), "--quiet"])
    record = json.loads((out / "study.json").read_text())
    assert record["dataset"]["tested_on"] == held_out
    said = re.search(r"target\s+(validation|test) images at every point", (out / "report.html").read_text())
    assert said and said.group(1) == ("validation" if held_out == "val" else "test")
    assert record["dataset"]["source_classes"] == ["amber", "blue"]
    assert record["dataset"]["target_classes"] == ["cyan", "green"]
    assert record["dataset"]["image_shape"] == [3, 16, 16]
    assert len(record["points"]) == (2 * 2 * 2 if kind == "shots" else 2 * (1 + 2 * 4))
    assert (out / "report.html").is_file() and (out / "study.png").is_file()
