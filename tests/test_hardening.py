"""Options and text that once went wrong: bounded worker processes, user text printed as data."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit import UserError
from transferkit.cli import main
from transferkit.training.batches import usable_cores, worker_count


def test_workers_beyond_the_usable_cores_are_capped_with_a_warning():
    # --workers 100000 once forked DataLoader workers (0.5 GB each) until the out-of-memory killer fired.
    with pytest.warns(UserWarning, match=rf"--workers 100000: this process may use {usable_cores()} core"):
        assert worker_count(100000) == usable_cores()
    assert worker_count(None) == usable_cores() and worker_count(0) == 0
    with pytest.raises(UserError, match="--workers must be 0 or more, got -1"):
        worker_count(-1)


def _folder(root: Path, classes: tuple[str, ...]) -> Path:
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (60 * i, 40 * j, 20)).save(buf, format="PNG")
                (root / split / c / f"{j}.png").write_bytes(buf.getvalue())
    return root


def test_names_that_look_like_markup_are_printed_as_they_are(tmp_path, monkeypatch, capsys):
    # rich read '[/x]' in a path as a closing tag (an error after the run completed) and '[bold]' as a style
    # (the class name vanished from the output).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _folder(tmp_path / "set [/x]", ("[bold]", "b", "c", "d"))
    out = tmp_path / "run [/x]"
    main(["run", str(root), "--epochs", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "[bold]" in printed and str(root) in printed and f"run folder: {out}" in printed
    assert json.loads((out / "status.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("content, says", [
    ("[]", "must hold a JSON object, got list"),
    ("{}", "config is missing"),
    ('{"config": {}, "phases": {"source": {"classes": "0,1"}}}', "phases.source.classes must be a list of strings"),
    ('{"config": {}, "phases": {"source": {"classes": ["0"], "train_samples": 1, "test_samples": 1, "epochs": 1, '
     '"train_seconds": 1, "test_accuracy": "high"}}}', "phases.source.test_accuracy must be a finite number"),
])
def test_results_json_of_the_wrong_shape_is_one_line_in_report_and_compare(tmp_path, tiny_run_copy, capsys, content,
                                                                          says):
    run = tiny_run_copy
    good = tmp_path / "good"
    import shutil

    shutil.copytree(run, good)
    (run / "results.json").write_text(content)
    for command in (["report", str(run)], ["compare", str(good), str(run), "--out", str(tmp_path / "c.html")]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and says in err and "results.json" in err, err
        assert len(err.strip().splitlines()) == 1


def test_a_damaged_status_json_reads_as_damaged_never_as_a_status(tmp_path):
    from transferkit.reporting.status import read_status

    assert read_status(tmp_path) is None  # no file: not a run folder
    for content in ("[]", "{}", '{"status": 5}', '{"status": "dancing"}', "garbage", '{"status": NaN}', "\xff"):
        (tmp_path / "status.json").write_text(content)
        status = read_status(tmp_path)
        assert status["status"] == "damaged" and "status.json" in status["detail"], content
    (tmp_path / "status.json").write_text('{"status": "complete"}')
    assert read_status(tmp_path) == {"status": "complete"}


def test_a_running_status_whose_process_is_gone_reads_as_stale(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from transferkit.reporting.status import read_status, write_status

    write_status(tmp_path, "running", phase="source")  # this process: alive
    assert read_status(tmp_path)["status"] == "running"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "status.json").write_text(json.dumps(
            {"status": "running", "phase": "source", "host": socket.gethostname(), "pid": child.pid}))
        assert read_status(tmp_path)["status"] == "running"
        child.kill()  # a zombie until reaped: already gone for the reader
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it is one (not reaped): no race
        assert read_status(tmp_path)["status"] == "stale"
        child.wait()
        status = read_status(tmp_path)
        assert status["status"] == "stale" and "--resume" in status["detail"] and status["phase"] == "source"
    finally:
        child.kill()
        child.wait()
    # another host's run cannot be judged from here: it stays running
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "host": "elsewhere", "pid": child.pid}))
    assert read_status(tmp_path)["status"] == "running"


def test_checkpoint_metadata_of_the_wrong_type_is_refused_in_one_line(tmp_path):
    import torch

    from transferkit.training import TensorBatches
    from transferkit.training.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
    from transferkit.training.loop import FitState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = TensorBatches(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2, seed=0)
    checkpoints = Checkpointer(tmp_path / "checkpoint.safetensors")
    checkpoints.save("p", model, optimizer, batches, FitState(), 1.0)
    tensors, meta = load_checkpoint(checkpoints.path)
    meta["fit"]["epoch"] = "two"
    save_checkpoint(checkpoints.path, tensors, meta)
    with pytest.raises(UserError, match=r"fit\.epoch must be an integer from 0 up, got 'two'"):
        checkpoints.restore("p", model, optimizer, batches)


@pytest.mark.parametrize("tamper, says", [
    (lambda a: a.update(class_names=np.asarray(["x", "y", "z", "w"])), "other classes than the folder's"),
    (lambda a: [a.pop(k) for k in ("x_val", "y_val")], "other splits than the folder's"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "inconsistent arrays"),
    (lambda a: a.update(x_train=255 - a["x_train"]), "content that does not match its digest"),
    (lambda a: a.pop("digest"), "unreadable"),
])
def test_a_cache_entry_that_does_not_prove_it_belongs_is_rebuilt(tmp_path, tamper, says):
    import warnings

    import numpy as np

    from transferkit.data import load_folder

    root = _folder(tmp_path / "set", ("ant", "bee", "cat", "dog"))
    cache = tmp_path / "cache"
    first = load_folder(root, cache_dir=cache)
    [entry] = cache.glob("*.npz")
    with np.load(entry) as npz:
        arrays = dict(npz)
    tamper(arrays)
    np.savez(entry, **arrays)  # well-formed, but not what the folder decodes to
    with pytest.warns(UserWarning, match=rf"cache entry discarded \({says}\)"):
        again = load_folder(root, cache_dir=cache)
    assert again.class_names == first.class_names
    for split, (x, y) in first.splits.items():
        assert np.array_equal(again.splits[split][0], x) and np.array_equal(again.splits[split][1], y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is good again
        load_folder(root, cache_dir=cache)


def test_a_crash_after_the_run_folder_exists_says_failed_not_running(tmp_path, monkeypatch):
    # Anything between creating the folder and the first phase (drawing the samples figure, here) used to leave
    # status.json at running / setup for ever.
    import transferkit.experiments.split as split

    def broken(*args, **kwargs):
        raise RuntimeError("the figure could not be drawn")

    monkeypatch.setattr(split, "samples_figure", broken)
    with pytest.raises(RuntimeError):
        split.run_split("mnist", limit=100, epochs=1, out=tmp_path / "run", verbose=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "the figure could not be drawn" in status["error"]


def test_the_pixel_limit_warning_names_the_file(tiny_run, tmp_path, monkeypatch):
    # Pillow warns (decodes) between its pixel limit and twice it, and refuses beyond: a 40 x 40 image under a
    # limit of 1,000 pixels stands for an image of 89 to 179 million pixels. Its warning named no file.
    from PIL import Image as PILImage

    from transferkit.data import load_folder
    from transferkit.inference import predict

    root = _folder(tmp_path / "set", ("ant", "bee", "cat", "dog"))
    PILImage.new("RGB", (40, 40), (9, 9, 9)).save(root / "train" / "ant" / "huge.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(PILImage.DecompressionBombWarning, match=r"ant/huge\.png: Image size \(1600 pixels\) exceeds"):
        load_folder(root, image_size=8)
    run = tiny_run
    with pytest.warns(PILImage.DecompressionBombWarning, match=r"huge\.png: Image size \(1600 pixels\) exceeds"):
        [p] = predict(run, [root / "train" / "ant" / "huge.png"])
    assert p.error is None
