"""Run folders made once per session for the report tests: a split run and a finetune run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main


def noisy_photos(root: Path, per_class: int = 8) -> Path:
    """Three colour classes under heavy noise: learnable, yet with mistakes to show."""
    rng = np.random.default_rng(0)
    for name, color in {"amber": (200, 140, 40), "olive": (130, 140, 50), "teal": (40, 140, 130)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 70, (24, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            (root / name / f"{i}.png").write_bytes(buf.getvalue())
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return noisy_photos(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory, photos) -> Path:
    out = tmp_path_factory.mktemp("report") / "finetune-run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        main(["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
              "--epochs", "2", "--unfreeze-epochs", "1", "--batch-size", "8", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def shots_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "shots-study"
    main(["study", "shots", "mnist", "--shots", "2,all", "--seeds", "2", "--limit", "200", "--epochs", "1",
          "--min-steps", "4", "--out", str(out), "--quiet"])
    return out
