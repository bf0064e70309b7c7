"""Kill a run (SIGKILL, Ctrl-C, SIGTERM) mid-phase, resume it, and get what an uninterrupted run gets, to the bit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from transferkit import UserError
from transferkit.reporting.status import read_status
from transferkit.training import CHECKPOINT_FILE, load_checkpoint

# Small enough to be quick, with epochs long enough (13 steps) that a kill lands inside a phase.
ARGS = ["run", "mnist", "--limit", "800", "--epochs", "3", "--batch-size", "64"]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferkit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, timeout=300)


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


def _killed_in(phase: str, out: Path) -> Path:
    """A run started, then killed with SIGKILL once it has checkpointed inside `phase`."""
    proc = _start(*ARGS, "--out", str(out))
    _wait_for_checkpoint(out, phase, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out


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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    done = _run(*ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("phase", ["source", "transfer"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, phase):
    out = _killed_in(phase, tmp_path / "run")
    assert json.loads((out / "status.json").read_text())["status"] == "running"  # died without a word
    assert read_status(out)["status"] == "stale"  # ...which its readers (report, export, compare) are told
    done = _run(*ARGS, "--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    _assert_same_run(out, uninterrupted)


# SIGTERM is what timeout, docker stop, systemd, Slurm and Kubernetes send: handled as Ctrl-C is.
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_checkpoints_mid_epoch_and_resumes(tmp_path, uninterrupted, sig, code):
    out = tmp_path / "run"
    proc = _start(*ARGS, "--out", str(out))
    _wait_for_checkpoint(out, "source", proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert f"--resume {out}" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    done = _run(*ARGS, "--resume", str(out))
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, uninterrupted)


@pytest.fixture(scope="module")
def killed_in_source(tmp_path_factory) -> Path:
    """One run killed in the source phase, copied by the tests that only try to resume it."""
    return _killed_in("source", tmp_path_factory.mktemp("killed") / "run")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return shutil.copytree(run_dir, tmp_path / "run")


def test_resume_refuses_another_configuration(uninterrupted, killed_in_source, tmp_path):
    out = _copy(killed_in_source, tmp_path)
    done = _run(*ARGS[:-2], "--batch-size", "32", "--resume", str(out))
    assert done.returncode == 2
    assert "train.batch_size was 64, now 32" in done.stderr and "Traceback" not in done.stderr
    assert "complete" in _run(*ARGS, "--resume", str(uninterrupted)).stderr


@pytest.mark.parametrize("damage", ["truncate", "cut-tensors", "pickle"])
def test_damaged_checkpoint_is_refused(killed_in_source, tmp_path, damage):
    out = _copy(killed_in_source, tmp_path)
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
    done = _run(*ARGS, "--resume", str(out))
    assert done.returncode == 2 and "not a readable transferkit checkpoint" in done.stderr
    assert not (tmp_path / "pwned").exists()
