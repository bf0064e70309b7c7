"""Benchmark: class weights, temperature scaling and test-time augmentation on an imbalanced folder.

    python bench/imbalance.py                # EfficientNet-Lite0 (ImageNet weights), 3 seeds
    python bench/imbalance.py --quick        # 1 seed, fewer validation and test images

The folder is built from ../shared/data/cifar10-jpg.zip: train/ holds dog, frog, horse, ship and truck with
500, 200, 50, 20 and 10 images (the first of each class), val/ the next 100 of each (held out from training:
the temperature is fitted there), and the test images of those classes are read from the zip's test/ split,
which `finetune` never sees. For every seed, `transferkit finetune` runs with `--class-weights none` and
`auto` (frozen backbone, a new head, 5 epochs); each saved model is then measured on the test images with the
probabilities `transferkit predict` prints (calibrated), the same without the temperature, and with `--tta`.
Prints a Markdown table, mean +- standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from transferkit import finetune
from transferkit.inference.predict import load_classifier
from transferkit.reporting.environment import cpu_model
from transferkit.training import cpu_flags
from transferkit.training.metrics import class_metrics, reliability
from transferkit.training.predictions import confusion_matrix
from transferkit.training.tta import mirrored

CLASSES = {"dog": 500, "frog": 200, "horse": 50, "ship": 20, "truck": 10}
ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.zip"


def build_folder(zip_path: Path, root: Path, val: int, test: int) -> list[tuple[bytes, int]]:
    """train/ and val/ of the imbalanced folder written under `root`; the test images returned (bytes, label)."""
    tests = []
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(z.namelist())
        for label, (name, n) in enumerate(CLASSES.items()):
            train = [f for f in names if f.startswith(f"cifar10/train/{name}/") and f.endswith(".jpg")]
            for split, files in (("train", train[:n]), ("val", train[n:n + val])):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                for f in files:
                    (root / split / name / Path(f).name).write_bytes(z.read(f))
            held = [f for f in names if f.startswith(f"cifar10/test/{name}/") and f.endswith(".jpg")][:test]
            tests += [(z.read(f), label) for f in held]
    return tests


def measure(run_dir: Path, tests: list[tuple[bytes, int]]) -> dict:
    """Balanced accuracy, macro-F1, accuracy and ECE of a run's model on the test images, as predict sees them."""
    classifier = load_classifier(run_dir)
    t = json.loads((run_dir / "weights" / "model.json").read_text()).get("temperature", 1.0)
    images = np.stack([classifier.decode(data) for data, _ in tests])
    labels = np.array([label for _, label in tests])
    calibrated = np.concatenate([classifier.probabilities(images[i:i + 64]) for i in range(0, len(images), 64)])
    flipped = np.concatenate([classifier.probabilities(mirrored(images[i:i + 64], 2))
                              for i in range(0, len(images), 64)])
    raw = calibrated.astype(np.float64) ** t  # softmax(z / t) ** t is proportional to softmax(z)
    raw /= raw.sum(1, keepdims=True)
    k = len(CLASSES)

    def scores(p: np.ndarray) -> dict:
        m = class_metrics(confusion_matrix(labels, p.argmax(1), k))
        return {"balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
                "accuracy": float((p.argmax(1) == labels).mean())}

    return {**scores(calibrated), "ece_before": reliability(raw, labels)["ece"],
            "ece_after": reliability(calibrated, labels)["ece"], "temperature": t,
            "tta": scores((calibrated + flipped) / 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 50 validation and 100 test images per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--zip", type=Path, default=ZIP)
    args = parser.parse_args()
    seeds, val, test = (1, 50, 100) if args.quick else (args.seeds, 100, 200)
    flags = ", ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))))
    print(f"CPU: {cpu_model()}; flags: {flags}", flush=True)
    rows: dict[str, list[dict]] = {"none": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imbalanced"
        tests = build_folder(args.zip, root, val, test)
        for seed in range(seeds):
            for weights in rows:
                out = Path(tmp) / f"{weights}-{seed}"
                finetune(root, backbone="efficientnet_lite0", epochs=5, seed=seed, class_weights=weights,
                         out=out, verbose=False)
                rows[weights].append(measure(out, tests))
                r = rows[weights][-1]
                print(f"seed {seed} class weights {weights}: balanced accuracy {r['balanced_accuracy']:.4f}, "
                      f"macro-F1 {r['macro_f1']:.4f}, ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f} "
                      f"(T {r['temperature']:.3f}), TTA balanced accuracy {r['tta']['balanced_accuracy']:.4f}",
                      flush=True)

    def cell(values: list[float], scale: float = 100, digits: int = 1) -> str:
        values = np.asarray(values) * scale
        spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
        return f"{values.mean():.{digits}f}{spread}"

    print(f"\n{len(tests)} test images ({test} per class), {seeds} seed(s), mean ± standard deviation, in percent\n")
    print("| class weights | balanced accuracy | macro-F1 | accuracy | ECE before | ECE after (T) | TTA: balanced accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for weights, runs in rows.items():
        print(f"| {weights} | {cell([r['balanced_accuracy'] for r in runs])} | {cell([r['macro_f1'] for r in runs])} | "
              f"{cell([r['accuracy'] for r in runs])} | {cell([r['ece_before'] for r in runs])} | "
              f"{cell([r['ece_after'] for r in runs])} ({cell([r['temperature'] for r in runs], 1, 2)}) | "
              f"{cell([r['tta']['balanced_accuracy'] for r in runs])} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
