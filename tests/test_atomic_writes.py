"""A full disk never leaves a finished artifact truncated: the previous version stays whole."""

import errno
import os

import pytest

from transferkit import UserError
from transferkit.config import ModelConfig
from transferkit.models import SeedCNN
from transferkit.reporting import save_model, write_text_atomic
from transferkit.reporting.artifacts import load_model


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_text_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_text_atomic(path, '{"old": true}\n')
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(UserError, match="No space left on device.*previous version is kept"):
        write_text_atomic(path, '{"new": true}\n')
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_weights_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    save_model(tmp_path, "source", model, list("abcde"), {})
    before = (tmp_path / "source.safetensors").read_bytes()
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        save_model(tmp_path, "source", SeedCNN(ModelConfig(), 1, (28, 28), 5), list("abcde"), {})
    assert (tmp_path / "source.safetensors").read_bytes() == before
    monkeypatch.undo()
    load_model(tmp_path / "source.safetensors")
