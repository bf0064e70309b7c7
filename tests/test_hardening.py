"""Options and text that once went wrong: bounded worker processes, user text printed as data."""

import io
import json
from pathlib import Path

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
