"""Benchmark: images per second of `transferkit predict` in PyTorch eager and with the exported ONNX model.

    python bench/predict.py                 # EfficientNet-Lite0 (ImageNet weights), 64 images, batch 1 and 32
    python bench/predict.py --images 256 --repeat 5
    python bench/predict.py --quick         # smoke run: 16 images, one repeat

A finetune run is made first (EfficientNet-Lite0's ImageNet weights, a head trained for one epoch on 3 CIFAR-10
classes of ../shared/data/cifar10-jpg.zip, 40 training images each), then exported to ONNX (checked against
PyTorch, as every export is). The same image files are then predicted by the run folder (PyTorch eager) and
by the .onnx file (ONNX Runtime, CPU), at batch 1 and 32, in this one process: `transferkit.predict` whole (loading
the model, reading and decoding the files included) and the model alone (on the decoded images). Each figure
is the best of --repeat timings, the engines taking turns. Both use the threads they take by default (PyTorch:
one per core; ONNX Runtime: one per physical core). Timings are noisy on shared machines: compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import transferkit
from transferkit.experiments.predict import image_files, load_classifier
from transferkit.reporting.environment import cpu_model
from transferkit.training import cpu_flags

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.zip"
CLASSES = ("cat", "dog", "horse")
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def extract(zip_path: Path, root: Path, images: int) -> Path:
    """3 classes (40 train, 10 val each) for the run, and `images` test files of all classes to predict."""
    with zipfile.ZipFile(zip_path) as z:
        for split, n, folder in (("train", 40, "train"), ("test", 10, "val")):
            for c in CLASSES:
                (root / "photos" / folder / c).mkdir(parents=True)
                for i in range(n):
                    (root / "photos" / folder / c / f"{i:04d}.jpg").write_bytes(z.read(f"cifar10/{split}/{c}/{i:04d}.jpg"))
        tests = sorted(n for n in z.namelist() if n.startswith("cifar10/test/") and n.endswith(".jpg"))
        (root / "new").mkdir()
        for i, name in enumerate(tests[100::max(1, len(tests) // images)][:images]):
            (root / "new" / f"{i:04d}.jpg").write_bytes(z.read(name))
    return root / "new"


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA.resolve()), help="CIFAR-10 as class folders (zip)")
    parser.add_argument("--images", type=int, default=64, help="image files to predict (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per figure, the best kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 images, one repeat")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeat = 16, 1
    import onnxruntime

    flags = cpu_flags()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "flags": [f for f in FLAGS if f in flags], "torch": torch.__version__,
               "onnxruntime": onnxruntime.__version__}
    console.print(f"machine: {machine['cpu']}, {machine['cores']} cores, flags: {' '.join(machine['flags']) or 'none'}"
                  f"; torch {machine['torch']} ({machine['torch_threads']} threads), onnxruntime "
                  f"{machine['onnxruntime']} (its default: a thread per core)")
    record: dict = {"machine": machine, "images": args.images, "repeat": args.repeat,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = f"{tmp}/cache"
        new = extract(Path(args.data), Path(tmp), args.images)
        console.print("finetune: EfficientNet-Lite0, ImageNet weights, 1 epoch on 120 images ...")
        transferkit.finetune(f"{tmp}/photos", backbone="efficientnet_lite0", epochs=1, out=f"{tmp}/run", verbose=False)
        exported = transferkit.export(f"{tmp}/run", "onnx")
        console.print(f"export: checked on {exported.check.summary()}")
        files = image_files([new])
        engines = {"PyTorch eager (run folder)": f"{tmp}/run", "ONNX Runtime (.onnx)": str(exported.path)}
        classifiers = {name: load_classifier(source) for name, source in engines.items()}
        decoded = np.stack([classifiers["PyTorch eager (run folder)"].decode(f.read_bytes()) for f in files])
        for batch in (1, 32):
            timings = {name: {"predict": float("inf"), "model": float("inf")} for name in engines}
            for name in engines:  # warm-up: first calls allocate and pick kernels
                transferkit.predict(engines[name], files[:batch], batch_size=batch)
            for _ in range(args.repeat):  # the engines take turns, so a busy minute hits both
                for name, source in engines.items():
                    model, t = classifiers[name].probabilities, timings[name]
                    t["predict"] = min(t["predict"], timed(lambda: transferkit.predict(source, files, batch_size=batch)))
                    t["model"] = min(t["model"], timed(lambda: [model(decoded[i:i + batch])
                                                                for i in range(0, len(decoded), batch)]))
            for name in engines:
                row = {"engine": name, "batch": batch, **{f"{k}_images_per_second": len(files) / s
                                                           for k, s in timings[name].items()}}
                record["rows"].append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"predict-{'quick' if args.quick else 'full'}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    table = Table(title=f"transferkit predict, {args.images} CIFAR-10 JPEGs (32 px, enlarged to 256, crop 224), "
                        f"EfficientNet-Lite0: images per second")
    for col in ("engine", "batch", "predict img/s", "model img/s", "predict ratio", "model ratio"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for row in record["rows"]:
        eager = next(r for r in record["rows"] if r["batch"] == row["batch"] and r["engine"].startswith("PyTorch"))
        table.add_row(row["engine"], str(row["batch"]), f"{row['predict_images_per_second']:.1f}",
                      f"{row['model_images_per_second']:.1f}",
                      f"{row['predict_images_per_second'] / eager['predict_images_per_second']:.2f}x",
                      f"{row['model_images_per_second'] / eager['model_images_per_second']:.2f}x")
    console.print(table)
    console.print(f"record: {path}")


if __name__ == "__main__":
    main()
