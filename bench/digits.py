"""Benchmark: the first folder a user brings, issue 28's digits case, at full scale.

    python bench/digits.py             # all 1,797 of scikit-learn's digits (needs scikit-learn)
    python bench/digits.py --per-class 40

scikit-learn's bundled digits (1,797 real 8x8 handwritten digits, UCI) written as 32x32 PNG class folders, split
70/30 stratified into train/ and a held-out folder. Then, from one process run:
- `transferkit finetune train/` with no options (the default backbone, training length and baselines), timed;
- `transferkit predict RUN held/`, its accuracy on the held-out images and images/s;
- a linear probe (transferkit's, the same as rank's) on the default backbone's frozen features of train/, scored
  on held/: the accuracy the fine-tuned network should reach at least;
- an SVC on the raw 8x8 pixels (scikit-learn's defaults), the cheap reference a practitioner would try first.
Writes bench/out/digits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferkit.config import DEFAULT_BACKBONE
from transferkit.data import load_folder
from transferkit.data.preprocess import InputTransform
from transferkit.models import BackboneClassifier, load_backbone_weights
from transferkit.reporting.environment import cpu_model
from transferkit.scores import probe_accuracy
from transferkit.training import cpu_flags, images_to_tensor


def write_digits(out: Path, per_class: int | None, seed: int = 0) -> tuple[Path, Path, dict]:
    """train/ and held/ folders of 32x32 PNGs, 70/30 stratified (and both again as probe/train/, probe/val/, the
    layout the probe reads as two splits); and the raw 8x8 arrays of both for the SVC."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    if per_class is not None:
        index = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    train, held = train_test_split(index, test_size=0.3, stratify=digits.target[index], random_state=seed)
    for split, chosen, probe_split in (("train", train, "train"), ("held", held, "val")):
        for i in chosen:
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
            for folder in (out / split / str(digits.target[i]), out / "probe" / probe_split / str(digits.target[i])):
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i:04d}.png")
    raw = {"train": (digits.data[train], digits.target[train]), "held": (digits.data[held], digits.target[held])}
    return out / "train", out / "held", raw


def held_out_accuracy(predictions: list[dict]) -> float:
    """Share of held-out images whose top class is their folder's name."""
    right = [Path(p["path"]).parent.name == p["predictions"][0]["class"] for p in predictions if p["predictions"]]
    return sum(right) / len(right)


@torch.no_grad()
def probe_on_frozen_features(folder: Path, backbone: str) -> float:
    """transferkit's linear probe on the backbone's frozen features: fit on folder/train, scored on folder/val."""
    model = BackboneClassifier(backbone, 2)
    pre = load_backbone_weights(model, "imagenet")
    transform, features = InputTransform(pre.crop, pre.mean, pre.std), model.features.eval()

    data = load_folder(folder, image_size=pre.resize, channels=3, cover=True)

    def encode(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.splits[split]
        x = images_to_tensor(x, scale=False)
        return torch.cat([features(transform(x[i : i + 64])) for i in range(0, len(x), 64)]), torch.from_numpy(y)

    (xt, yt), (xh, yh) = encode("train"), encode("val")
    return probe_accuracy(xt, yt.long(), xh, yh.long())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=None, help="at most this many digits per class")
    args = parser.parse_args()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "flags": flags}
    print(f"machine: {machine['cpu']}, {machine['threads']} threads, {' '.join(flags)}")
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, held, raw = write_digits(tmp / "digits", args.per_class)
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
        run = tmp / "finetune"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transferkit", "finetune", str(train), "--out", str(run)], check=True,
                       env=env)
        finetune_seconds = time.perf_counter() - start
        results = json.loads((run / "results.json").read_text())
        start = time.perf_counter()
        shown = subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), str(held), "--json"],
                               check=True, env=env, capture_output=True, text=True)
        predict_seconds = time.perf_counter() - start
        predictions = json.loads(shown.stdout)
        probe = probe_on_frozen_features(tmp / "digits" / "probe", DEFAULT_BACKBONE)
        from sklearn.svm import SVC

        start = time.perf_counter()
        svc = SVC().fit(*raw["train"]).score(*raw["held"])
        svc_seconds = time.perf_counter() - start
    report.update({
        "images": {"train": int(len(raw["train"][1])), "held": int(len(raw["held"][1]))},
        "finetune": {"seconds": round(finetune_seconds, 1), "held_out_accuracy": held_out_accuracy(predictions),
                     "baselines": results.get("baselines"),
                     "stopping": {name: phase.get("stopping") for name, phase in results["phases"].items()}},
        "predict": {"seconds": round(predict_seconds, 1),
                    "images_per_second_with_start": round(len(predictions) / predict_seconds, 1)},
        "probe_on_frozen_features": probe, "svc_on_pixels": {"accuracy": svc, "seconds": round(svc_seconds, 2)},
    })
    print(json.dumps(report, indent=2))
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "digits.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
