"""Small data made by the tests themselves (MNIST-shaped arrays, npz files, IDX and image folders), and runs
interrupted in process at a chosen step (signalled_at)."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist (the README's `-n 2`) each worker trains with cores / workers threads and hands that on to the
# processes it starts (OMP_NUM_THREADS): two workers of two threads on two cores would oversubscribe them, and
# OpenMP's threads then wait on each other far longer than they compute. Every comparison a test makes is between
# trainings with the same thread count, so the numbers a test checks do not change.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def make_arrays(n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images, each label drawn on the image as a bright block so the classes are learnable."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n, dtype=np.uint8) % 10
        x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(y):
            x[i, 2 + 2 * label : 6 + 2 * label, 4:24] = 255
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return arrays


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return make_arrays()


@pytest.fixture
def npz_file(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    return path


COLOURS = {"amber": (230, 160, 20), "blue": (30, 60, 220), "cyan": (20, 200, 210), "green": (40, 190, 40)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """train/ and test/ folders of 16 px images: a coloured square on noise, one colour per class (COLOURS)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shapes") / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                img[4:12, 4:12] = colour
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


def write_sklearn_digits(root: Path, per_class: int | None = None, size: int = 8,
                         classes: int = 10) -> Path:
    """scikit-learn's digits (1,797 real 8x8 handwritten digits, UCI) as one folder of class folders of PNGs at
    `size` px, `per_class` images of each of the first `classes` digits (None: all): with no val/ or test/, a
    validation split is held out of them (issue 28's digits case, at a small scale)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == c)[:per_class]):
            Image.fromarray(images[index]).resize((size, size), Image.Resampling.BILINEAR).save(root / str(c) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def sk_digits(tmp_path_factory) -> Path:
    """scikit-learn's digits, 40 of each of the 10 classes at 16 px (write_sklearn_digits)."""
    return write_sklearn_digits(tmp_path_factory.mktemp("sk_digits") / "digits", 40, 16)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """4 digits x 30 real images, 32 px PNG class folders (no val/: finetune holds out --val-fraction)."""
    return write_sklearn_digits(tmp_path_factory.mktemp("digits") / "digits", per_class=30, size=32, classes=4)


@contextlib.contextmanager
def signalled_at(check: int, sig: int = signal.SIGINT) -> Iterator[None]:
    """Runs started inside get a real `sig` (Ctrl-C's SIGINT, or SIGTERM) sent to this process at their
    `check`-th stop check (one after every training step, one at the end of every epoch): an interruption at
    a chosen step, in process, without a subprocess's start-up or a race against its clock. What only a real
    kill -9 shows (nothing written at the end) keeps one subprocess test per lifecycle."""
    from transferkit.experiments import runtime

    real = runtime.stop_on_interrupt

    @contextlib.contextmanager
    def counted() -> Iterator:
        with real() as should_stop:
            calls = itertools.count(1)

            def stop_check() -> bool:
                if next(calls) == check:
                    os.kill(os.getpid(), sig)  # handled (by the run's own handler) before the next line runs
                return should_stop()

            yield stop_check

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "stop_on_interrupt", counted)
        yield


@pytest.fixture(scope="session")
def split_run(tmp_path_factory) -> Path:
    """A finished `transferkit run mnist` with all three phases (400 images per split, 2 epochs), made once per
    session for the tests that read a whole split run (results.json, history.csv, figures, report). Read only."""
    from transferkit.cli import main

    out = tmp_path_factory.mktemp("split") / "mnist-run"
    main(["run", "mnist", "--limit", "400", "--epochs", "2", "--out", str(out)])
    return out


# The one tiny finished `run mnist` most tests that need a run folder read (or change a copy of).
TINY_RUN = ["run", "mnist", "--limit", "200", "--epochs", "1", "--no-scratch", "--quiet"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished `transferkit run mnist` (200 images per split, 1 epoch, no scratch), made once per session.
    Read it only: a test that writes into a run folder (an export, a cache, damage) takes tiny_run_copy."""
    from transferkit.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    main([*TINY_RUN, "--out", str(out)])
    return out


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A copy of tiny_run of this test's own, to change."""
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path / "tiny-run"))


DEPLOY_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="session")
def deploy_photos(tmp_path_factory) -> Path:
    """The deploy tests' photos (export, int8, serve): 3 classes of 8 noisy colour photos each, of varied
    sizes (the aspect-kept resize and crop matter). Read only."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos") / "photos"
    for c, color in DEPLOY_COLOURS.items():
        (root / c).mkdir(parents=True)
        for i in range(8):
            rng = np.random.default_rng(i + sum(color))
            pixels = np.array(color, dtype=np.int16) + rng.integers(-70, 70, (30 + 3 * i, 44 - i, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / c / f"{i}.jpg")
    return root


def tiny_finetune(photos: Path, tmp_path_factory, epochs: int = 1) -> Path:
    """A finetune run of `photos` (ResNet-18 from random weights, 32 px, batch 4), in a folder of its own."""
    from transferkit.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        out = tmp_path_factory.mktemp("runs") / "ft"
        main(["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
              "--epochs", str(epochs), "--batch-size", "4", "--quiet", "--out", str(out)])
    return out


def cli_in_process(*args: str) -> tuple[int, str]:
    """`transferkit ARGS` run in this process: its exit status and what it wrote to stderr."""
    import io

    from transferkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return code, err.getvalue()
