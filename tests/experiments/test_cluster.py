"""Studies on a Ray cluster (--cluster ray) and as SLURM jobs (--cluster slurm, submitit's local processes here):
the same points as in one process, a lost worker retried, a stopped study resumed, and the one-line refusals.
The Ray tests share one local cluster of 2 CPUs, its node at 127.0.0.1."""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from transferkit import study
from transferkit.cli import main
from transferkit.errors import Interrupted, UserError
from transferkit.experiments.study import StudyRecorder
from transferkit.experiments.study_ray import RayCluster

TINY = {"shots": "3,all", "seeds": 2, "limit": 200, "epochs": 2, "min_steps": 6}
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs pip install "transferkit[cluster]"')


@pytest.fixture(scope="module")
def local_ray():
    """A Ray cluster of 2 CPUs on this machine (its node at 127.0.0.1, a small object store), for the module's tests;
    the study uses the Ray this process started. The signal handlers ray.init replaces are given back."""
    import ray

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 << 20, logging_level="warning")
    yield ray
    ray.shutdown()
    for s, handler in handlers.items():
        signal.signal(s, handler)


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory) -> dict:
    """The study in this process with 1 thread, the thread count a Ray task trains with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("cluster") / "one"
        study("shots", "mnist", jobs=1, out=out, verbose=False, **TINY)
    finally:
        torch.set_num_threads(before)
    return json.loads((out / "study.json").read_text())


def without_clocks(record: dict) -> dict:
    """What two studies of the same seeds share: everything but clocks and where the points trained."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if k not in ("seconds", "train_seconds", "created", "feature_cache_seconds", "environment",
                                 "jobs", "cluster")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(record)


@needs_ray
def test_a_study_on_ray_gives_the_points_of_one_process(local_ray, one_thread, tmp_path):
    out = tmp_path / "ray"
    study("shots", "mnist", cluster="ray", out=out, verbose=False, **TINY)
    record = json.loads((out / "study.json").read_text())
    assert record["distributed"]["cluster"] == "ray" and record["distributed"]["threads_per_job"] == 1
    assert len(record["points"]) == 8 and list(record["points"]) == list(one_thread["points"])
    assert without_clocks(record) == without_clocks(one_thread)  # to the bit: every loss and accuracy
    # The networks the tasks trained, written here by the driver: a resumed study reads them again.
    assert sorted(p.name for p in (out / "weights").glob("*.safetensors")) == [
        "baseA-seed=0.safetensors", "baseA-seed=1.safetensors"]
    assert not list(out.glob("checkpoint*"))


@needs_ray
def test_a_ray_worker_killed_while_it_trains_a_unit_is_retried_to_the_same_numbers(local_ray, one_thread,
                                                                                    tmp_path, monkeypatch, capsys):
    killed = []
    receive = RayCluster.receive

    def kill_the_first_worker(self, i, message, work):  # once its task said it started on unit 0
        if message[0] == "started" and i == 0 and not killed:
            pid = int(re.match(r"pid (\d+) ", message[1]).group(1))
            os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
            killed.append(pid)
        return receive(self, i, message, work)

    monkeypatch.setattr(RayCluster, "receive", kill_the_first_worker)
    out = tmp_path / "ray"
    study("shots", "mnist", cluster="ray", out=out, verbose=True, **TINY)
    said = " ".join(capsys.readouterr().out.split())  # the lines as printed, unwrapped
    assert killed and re.search(rf"unit 0 \(baseA/seed=0, transfer/shots=3/seed=0, transfer/shots=all/seed=0\): its "
                                rf"Ray worker \(pid {killed[0]} on [^)]+\) was lost; Ray ran it again from its start "
                                r"\(pid \d+ ", said), said
    record = json.loads((out / "study.json").read_text())
    assert without_clocks(record) == without_clocks(one_thread)


@needs_ray
def test_a_ray_study_stopped_then_resumed_equals_the_uninterrupted_one(local_ray, one_thread, tmp_path,
                                                                      monkeypatch, capsys):
    record = StudyRecorder.record

    def ctrl_c_after_the_first(self, *args):  # a real Ctrl-C, handled by the study's own handler
        record(self, *args)
        if self.done == 1:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "ray"
    with monkeypatch.context() as mp:
        mp.setattr(StudyRecorder, "record", ctrl_c_after_the_first)
        with pytest.raises(Interrupted, match="the Ray tasks cancelled; on resume the points under way train again"):
            study("shots", "mnist", cluster="ray", out=out, verbose=False, **TINY)
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    first = json.loads((out / "study.json").read_text())
    assert 1 <= len(first["phases"]) < 10
    base = next(name for name in first["phases"] if name.startswith("baseA"))  # (the longest units go first)
    capsys.readouterr()
    study("shots", "mnist", cluster="ray", resume=out, verbose=True, **TINY)
    said = " ".join(capsys.readouterr().out.split())
    # The finished source network was read here and sent with its unit's task, not trained again.
    assert re.search(rf"\] {re.escape(base)}: test accuracy [0-9.]+ \(finished before\)", said), said
    assert without_clocks(json.loads((out / "study.json").read_text())) == without_clocks(one_thread)


@needs_ray
def test_the_cli_starts_a_local_ray_cluster_and_sigterm_leaves_the_study_resumable(tmp_path):
    """No cluster to join: the study starts a local one and stops it; SIGTERM (what `timeout` and
    Slurm send) still reaches the study's own handler, although ray.init sets one of its own."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="tk-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    out = tmp_path / "cli"
    args = ["study", "shots", "mnist", "--shots", "3,all", "--seeds", "2", "--limit", "200", "--epochs", "2",
            "--min-steps", "6", "--cluster", "ray"]
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not handing_out_units(out):  # connected: the tasks are being handed out
            assert proc.poll() is None and time.monotonic() < deadline, "no Ray tasks in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        said, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 143, err
    assert re.search(r"Ray: 1 node, \d+ CPUs", said), said
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert f"the Ray tasks cancelled; on resume the points under way train again from their start); what was " \
           f"recorded is in {out}. Resume with:" in err, err  # no checkpoint is claimed
    assert err.strip().splitlines()[-1].endswith(f"--cluster ray --resume {out}"), err


@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason='needs pip install "transferkit[cluster]"')
def test_a_study_as_submitit_jobs_gives_the_points_of_one_process(one_thread, tmp_path):
    """--cluster slurm where there is no SLURM: submitit's local processes, one job a unit (2 units here)."""
    out = tmp_path / "slurm"
    study("shots", "mnist", cluster="slurm", out=out, verbose=False, **{**TINY, "shots": "all", "arms": "transfer"})
    record = json.loads((out / "study.json").read_text())
    assert record["distributed"]["cluster"] == "slurm" and record["distributed"]["threads_per_job"] == 1
    assert list(record["points"]) == ["transfer/shots=all/seed=0", "transfer/shots=all/seed=1"]
    for name in ("baseA/seed=0", "transfer/shots=all/seed=0", "baseA/seed=1", "transfer/shots=all/seed=1"):
        assert without_clocks(record["phases"][name]) == without_clocks(one_thread["phases"][name]), name
    for name, point in record["points"].items():
        assert without_clocks(point) == without_clocks(one_thread["points"][name]), name
    assert (out / "weights" / "baseA-seed=1.safetensors").is_file()  # sent back with the job's result
    assert not (out / "slurm" / "unit-job.pickle").exists()


def handing_out_units(out: Path) -> bool:
    try:
        return json.loads((out / "status.json").read_text()).get("phase") == "points as Ray tasks"
    except (OSError, ValueError):  # not written yet, or being replaced
        return False


@pytest.mark.parametrize("args, says", [
    (["--cluster", "pbs"], "--cluster pbs: unknown; give ray (RAY_ADDRESS's cluster, else `ray start`'s on this "
                           "machine, else a new local one), ray://HOST:PORT (a remote head) or slurm (submitit)"),
    (["--cluster", "ray://"], "--cluster ray://: unknown; give ray"),
    (["--cluster", "ray", "--jobs", "2"], "--jobs 2 with --cluster ray: the cluster's CPUs decide how many units "
                                          "train at once (one CPU and one thread each); drop --jobs"),
    (["--cluster", "ray", "--backbone", "resnet18"], "--cluster ray with --backbone: a backbone study trains its "
                                                     "points in one process (drop --cluster)"),
    pytest.param(["--cluster", "ray://127.0.0.1:1"], "--cluster ray://127.0.0.1:1: nothing answers at "
                 "ray://127.0.0.1:1 (", marks=needs_ray),  # a wrong address: before the folder, not after
])
def test_bad_cluster_options_are_one_line(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "shots", "mnist", "--limit", "100", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before a study folder exists


@pytest.mark.parametrize("cluster, module", [("ray", "ray"), ("ray://head:10001", "ray"), ("slurm", "submitit")])
def test_without_the_extra_the_cluster_option_says_how_to_install_it(tmp_path, monkeypatch, capsys, cluster, module):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` fails as where it is not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "shots", "mnist", "--limit", "100", "--cluster", cluster])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    what = "Ray" if module == "ray" else "submitit"
    assert err == f'error: --cluster {cluster} needs {what}: pip install "transferkit[cluster]"'
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("message", [
    "not a tuple", ("trained",), ("started", 7), ("trained", "pid 1", ("baseA/seed=9", {}, None, [1], False), None),
    ("trained", "pid 1", ("transfer/shots=3/seed=0", {}, None, [1], False), ("../../elsewhere", None, [], {})),
    ("finished", "pid 1"),
])
def test_a_message_that_is_none_of_the_units_trainings_is_one_line_and_records_nothing(message):
    from transferkit.experiments.executors import StudyWork
    from transferkit.experiments.shipped_unit import record_message
    from transferkit.experiments.study_plan import Point, Unit

    unit = Unit(0, "baseA", (Point("transfer", 0, shots=3),))
    work = StudyWork([unit], None, None, None, None)  # nothing of the study is touched for such a message
    with pytest.raises(UserError, match=r"^unit 0 \(baseA/seed=0, transfer/shots=3/seed=0\): its worker sent a "
                                        r"message that is none of its trainings'"):
        record_message(message, 0, work)
