"""Kill a run (SIGKILL, Ctrl-C, SIGTERM) mid-phase, resume it, and get what an uninterrupted run gets, to the bit.

One real kill -9 of a real process (nothing written at the end: status.json still says running); the other
interruptions are real signals sent in process at a chosen step (conftest.signalled_at), resumed in process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_in_process, signalled_at
from safetensors.torch import load_file

from transferkit import UserError
from transferkit.reporting.status import read_status
from transferkit.training import CHECKPOINT_FILE, load_checkpoint

# Small enough to be quick, with epochs long enough (13 steps) that a kill lands inside a phase.
ARGS = ["run", "mnist", "--limit", "800", "--epochs", "3", "--batch-size", "64"]
# Stopped at a chosen step in process, a run can be smaller still (7 steps an epoch).
SMALL = ["run", "mnist", "--limit", "300", "--epochs", "2", "--batch-size", "32"]


_cli = cli_in_process


def _wait_for_checkpoint(run_dir: Path, phase: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run has checkpointed inside `phase` (so killing it now interrupts that phase)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if (run_dir / CHECKPOINT_FILE).is_file():
            try:
                _, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
            except UserError:  # read while the run renamed a new checkpoint over it: look again
                continue
            if meta["phase"] == phase and meta["fit"]["epoch"] <= 3:
                return
        time.sleep(0.01)
    raise AssertionError("no checkpoint in time")


def _metrics(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {name: {**{k: v for k, v in p.items() if k not in ("train_seconds", "history", "feature_cache_seconds")},
                   "history": [{k: v for k, v in r.items() if k != "seconds"} for r in p["history"]]}
            for name, p in results["phases"].items()}


def _assert_same_run(a: Path, b: Path) -> None:
    assert _metrics(a) == _metrics(b)  # misclassified examples included: a finished phase keeps its own
    # ...and the report's figure of them shows every phase again, drawn as the uninterrupted run drew it
    assert (a / "misclassified.png").read_bytes() == (b / "misclassified.png").read_bytes()
    for phase in ("source", "transfer", "scratch"):
        wa, wb = load_file(a / "weights" / f"{phase}.safetensors"), load_file(b / "weights" / f"{phase}.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert (wa[k] == wb[k]).all(), f"{phase} {k}"


def _checkpoint_phase(run_dir: Path) -> tuple[str, int]:
    _, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
    return meta["phase"], meta["fit"]["epoch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference, in a process of its own: the interrupted runs, resumed in this one, must equal it."""
    out = tmp_path_factory.mktemp("ref") / "run"
    done = subprocess.run([sys.executable, "-m", "transferkit", *ARGS, "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out, "source", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "status.json").read_text())["status"] == "running"  # died without a word
    assert read_status(out)["status"] == "stale"  # ...which its readers (report, export, compare) are told
    code, err = _cli(*ARGS, "--resume", str(out))
    assert code == 0, err
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    _assert_same_run(out, uninterrupted)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, int]:
    """The SMALL run uninterrupted, in this process, and its stop checks an epoch: one after each step, and one
    as the epoch ends."""
    out = tmp_path_factory.mktemp("small") / "run"
    assert _cli(*SMALL, "--out", str(out)) == (0, "")
    results = json.loads((out / "results.json").read_text())
    steps = results["distributed"]["steps_per_rank"]["source"][0] // results["phases"]["source"]["epochs"]
    return out, steps + 1


# SIGTERM is what timeout, docker stop, systemd, Slurm and Kubernetes send: handled as Ctrl-C is. The source
# phase stopped in its second epoch, the transfer phase in its first (the source phase then read back).
@pytest.mark.parametrize("sig, code, phase", [(signal.SIGINT, 130, "source"), (signal.SIGTERM, 143, "transfer")])
def test_ctrl_c_or_sigterm_checkpoints_mid_epoch_and_resumes(tmp_path, small, sig, code, phase):
    reference, checks = small
    out = tmp_path / "run"
    with signalled_at(checks + 3 if phase == "source" else 2 * checks + 3, sig):
        exit_code, err = _cli(*SMALL, "--out", str(out))
    assert exit_code == code
    assert f"--resume {out}" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert _checkpoint_phase(out) == (phase, 2 if phase == "source" else 1)  # mid-epoch, where it was asked
    exit_code, err = _cli(*SMALL, "--resume", str(out))
    assert exit_code == 0, err
    _assert_same_run(out, reference)


@pytest.fixture(scope="module")
def stopped_in_source(tmp_path_factory) -> Path:
    """One run stopped in the source phase, copied by the tests that only try to resume it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with signalled_at(3):
        assert _cli(*SMALL, "--out", str(out))[0] == 130
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return shutil.copytree(run_dir, tmp_path / "run")


def test_resume_refuses_another_configuration(small, stopped_in_source, tmp_path):
    out = _copy(stopped_in_source, tmp_path)
    code, err = _cli(*SMALL[:-2], "--batch-size", "16", "--resume", str(out))
    assert code == 2
    assert "train.batch_size was 32, now 16" in err and "Traceback" not in err
    assert "complete" in _cli(*SMALL, "--resume", str(small[0]))[1]


@pytest.mark.parametrize("damage", ["truncate", "cut-tensors", "pickle"])
def test_damaged_checkpoint_is_refused(stopped_in_source, tmp_path, damage):
    out = _copy(stopped_in_source, tmp_path)
    ckpt = out / CHECKPOINT_FILE
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "cut-tensors":  # the header whole, the tensors short of what it promises
        ckpt.write_bytes(ckpt.read_bytes()[:-1000])
    else:
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        ckpt.write_bytes(pickle.dumps({"model": Evil()}))
    code, err = _cli(*SMALL, "--resume", str(out))
    assert code == 2 and "not a readable transferkit checkpoint" in err
    assert not (tmp_path / "pwned").exists()
