"""Benchmark: `transferkit rank --verify` on CIFAR-10's target classes (dog, frog, horse, ship, truck).

    python bench/rank.py                    # 200 training + 100 test images per class, EfficientNet-Lite0/1/2
    python bench/rank.py --per-class 40     # a quick run
    python bench/rank.py --layers           # + each backbone's stages (the README's tables)
    python bench/rank.py --digits           # the README's second data set: MNIST digits 0-9 as PNG folders

Prints, from one process run: the whole `transferkit rank --verify` command (a child process with a fresh cache
directory, so the feature passes really compute), its feature pass in images per second beside a plain forward of
the same backbone (timm, eval, no_grad, fp32, batch 32: what a user would write), and the seconds LogME, kNN and
the probe take on 25,000 x 1,280 features. Results are also written to bench/out/rank.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferkit.data import load_folder
from transferkit.data.preprocess import InputTransform
from transferkit.models import BackboneClassifier, load_backbone_weights
from transferkit.reporting.environment import cpu_model
from transferkit.scores import knn_accuracy, logme, probe_accuracy
from transferkit.training import cpu_flags, images_to_tensor

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TARGETS = ("dog", "frog", "horse", "ship", "truck")
LITES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def cifar_targets(archive: Path, out: Path, per_class: int, test_per_class: int) -> Path:
    """train/ and test/ folders of the first images of each target class from the CIFAR-10 JPEG zip."""
    wanted = {"train": per_class, "test": test_per_class}
    with zipfile.ZipFile(archive) as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if len(parts) == 4 and parts[2] in TARGETS and parts[3].endswith(".jpg") and int(parts[3][:4]) < wanted[parts[1]]:
                target = out / parts[1] / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    return out


def mnist_digits(npz: Path, out: Path, per_class: int, test_per_class: int) -> Path:
    """train/ and test/ PNG folders of the first images of each digit."""
    mnist = np.load(npz)
    for split, x, y, n in (("train", mnist["x_train"], mnist["y_train"], per_class),
                           ("test", mnist["x_test"], mnist["y_test"], test_per_class)):
        for digit in range(10):
            (out / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(y == digit)[:n]):
                Image.fromarray(x[index]).save(out / split / str(digit) / f"{i:04d}.png")
    return out


def transferkit_rank(folder: Path, out: Path, cache: Path, *options: str) -> tuple[dict, float]:
    """The command a user types, timed as a whole."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "transferkit", "rank", str(folder), "--out", str(out), *options],
                   check=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    return json.loads((out / "results.json").read_text()), time.perf_counter() - start


@torch.no_grad()
def plain_forward(folder: Path, backbone: str, images: int) -> float:
    """Images per second of the backbone as a user would run it: eval, no_grad, fp32, batch 32, NCHW."""
    model = BackboneClassifier(backbone, 2)
    pre = load_backbone_weights(model, "imagenet")
    data = load_folder(folder, image_size=pre.resize, channels=3, cover=True)
    x = images_to_tensor(data.splits["train"][0][:images], scale=False)
    transform, features = InputTransform(pre.crop, pre.mean, pre.std), model.features.eval()
    features(transform(x[:2]))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), 32):
        features(transform(x[i : i + 32]))
    return len(x) / (time.perf_counter() - start)


def scoring_seconds(n: int = 25_000, d: int = 1_280, classes: int = 10, val: int = 5_000) -> dict[str, float]:
    """LogME, kNN and the probe on n x d features: class centres plus noise (so the probe converges as on real
    features rather than on pure noise)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, d, generator=g)
    y, yv = torch.arange(n) % classes, torch.arange(val) % classes
    x, xv = centres[y] + 3 * torch.randn(n, d, generator=g), centres[yv] + 3 * torch.randn(val, d, generator=g)
    seconds = {}
    for name, run in (("logme", lambda: logme(x.numpy(), y.numpy())), ("knn", lambda: knn_accuracy(x, y, xv, yv)),
                      ("probe", lambda: probe_accuracy(x, y, xv, yv))):
        start = time.perf_counter()
        run()
        seconds[name] = round(time.perf_counter() - start, 2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--layers", action="store_true", help="also rank each backbone's stages")
    parser.add_argument("--digits", action="store_true", help="MNIST digits instead of CIFAR-10's targets")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    flags = cpu_flags()
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
               "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))}
    print(f"machine: {machine['cpu']}, {machine['threads']} threads, {' '.join(machine['flags'])}")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine, "runs": {}}
    out_dir = Path(__file__).resolve().parent / "out"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = (mnist_digits(SHARED / "mnist.npz", tmp / "digits", args.per_class, args.test_per_class) if args.digits
                  else cifar_targets(SHARED / "cifar10-jpg.zip", tmp / "cifar10-targets", args.per_class,
                                     args.test_per_class))
        name = "digits" if args.digits else "cifar10-targets"
        results, seconds = transferkit_rank(folder, out_dir / f"rank-{name}", tmp / "cache", "--backbones", LITES,
                                            "--verify", "--epochs", str(args.epochs), "--force")
        report["runs"]["rank --verify"] = {"seconds": round(seconds, 1), "table": results["ranking"],
                                           "kendall_tau": results["kendall_tau"], "candidates": results["candidates"]}
        print(f"transferkit rank --verify ({LITES} + control): {seconds:.1f} s; tau {results['kendall_tau']}")
        if args.layers:
            for backbone in LITES.split(","):
                layered, seconds = transferkit_rank(folder, out_dir / f"rank-{name}-{backbone}-layers", tmp / "cache",
                                                    "--backbones", backbone, "--layers", "--verify", "--epochs",
                                                    str(args.epochs), "--force")
                report["runs"][f"{backbone} --layers"] = {"seconds": round(seconds, 1), "table": layered["ranking"],
                                                          "kendall_tau": layered["kendall_tau"],
                                                          "candidates": layered["candidates"]}
                print(f"{backbone} --layers --verify: {seconds:.1f} s; tau {layered['kendall_tau']}")
        lite0 = next(c for c in results["candidates"] if c["name"] == "efficientnet_lite0")
        plain = plain_forward(folder, "efficientnet_lite0", min(1000, args.per_class * len(TARGETS)))
        report["feature_pass"] = {"transferkit_images_per_second": lite0["feature_pass"]["images_per_second"],
                                  "precision": results["environment"].get("precision"),
                                  "plain_fp32_images_per_second": round(plain, 1)}
        print(f"EfficientNet-Lite0 feature pass: transferkit {lite0['feature_pass']['images_per_second']} img/s "
              f"({results['environment'].get('precision')}), plain timm forward (fp32, batch 32) {plain:.1f} img/s")
    report["scoring_25000x1280"] = scoring_seconds()
    print(f"scores on 25,000 x 1,280 features (10 classes, 5,000 validation): {report['scoring_25000x1280']}")
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"rank{'-digits' if args.digits else ''}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
