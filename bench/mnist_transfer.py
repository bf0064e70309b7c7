"""Benchmark: transferkit's MNIST transfer experiment against an eager PyTorch port and the machine's ceiling.

    python bench/mnist_transfer.py            # full protocol: 5 + 5 epochs, full data, 3 seeds
    python bench/mnist_transfer.py --quick    # smoke run on a few hundred images

All figures come from one process run on one machine, so the ratios compare like with like. Timings are noisy
on shared machines: compare ratios, and re-run before trusting a small difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import eager_port  # noqa: E402

from transferkit.config import ModelConfig, TrainConfig  # noqa: E402
from transferkit.data import load_mnist, split_by_class  # noqa: E402
from transferkit.models import SeedCNN  # noqa: E402
from transferkit.reporting.environment import cpu_model  # noqa: E402
from transferkit.training import (  # noqa: E402
    TensorBatches,
    autocast,
    cpu_flags,
    images_to_tensor,
    make_optimizer,
    resolve_precision,
    train_one_epoch,
)
from transferkit.training.memory import keep_freed_memory  # noqa: E402

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def machine() -> dict:
    flags = cpu_flags()
    precision = resolve_precision("auto", flags)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "avx512f": "avx512f" in flags, "native_bf16": sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "precision": precision.name, "precision_reason": precision.reason}


def transferkit_run(seed: int, limit: int | None, epochs: int, scratch: bool) -> dict:
    """`transferkit run mnist` as a user runs it, in a child process so its peak memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "transferkit", "run", "mnist", "--seed", str(seed), "--epochs", str(epochs),
               "--out", f"{tmp}/run"] + (["--limit", str(limit)] if limit else []) + ([] if scratch else ["--no-scratch"])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"transferkit run failed: {proc.stderr.read()}")
        results = json.loads(Path(f"{tmp}/run/results.json").read_text())
    results["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return results


def time_layers(autocast_dtype, steps: int = 30) -> dict:
    """The ceiling: forward + backward of the conv layers alone and the dense layers alone, batch 128."""
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    conv = nn.Sequential(*list(model.features.children())[:5])  # conv, relu, conv, relu, pool
    x = torch.rand(128, 1, 28, 28)
    feats = torch.rand(128, 4608, requires_grad=False)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        samples = []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def conv_step():
        with autocast(autocast_dtype):
            out = conv(x)
        out.float().sum().backward()

    def dense_step():
        with autocast(autocast_dtype):
            out = model.classifier(feats)
        out.float().sum().backward()

    k, f = 3, 32
    conv_flops = 128 * 2 * (26 * 26 * f * k * k * 1 * 2 + 24 * 24 * f * k * k * f * 3)  # conv1 fwd+wgrad, conv2 fwd+2 bwd
    t_conv, t_dense = timed(conv_step), timed(dense_step)
    return {"conv_step_s": t_conv, "dense_step_s": t_dense, "conv_gflops": conv_flops / t_conv / 1e9}


def seconds_per_epoch(fraction: float, mnist, autocast_dtype) -> float:
    """One source epoch of transferkit's loop on a fraction of the source training set."""
    split = split_by_class(mnist, list(range(5)))
    n = int(len(split.y_train) * fraction)
    torch.manual_seed(0)
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    optimizer = make_optimizer(list(model.parameters()), TrainConfig())
    batches = TensorBatches(images_to_tensor(split.x_train[:n]), torch.from_numpy(split.y_train[:n]), 128, seed=0)
    start = time.perf_counter()
    train_one_epoch(model, batches, optimizer, autocast_dtype)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 400 images per split, 1 epoch, 1 seed")
    parser.add_argument("--seeds", default="0,1,2", help="seeds for transferkit's accuracy mean (default 0,1,2)")
    parser.add_argument("--bf16-port", choices=("auto", "on", "off"), default="auto",
                        help="time the eager port under bf16 autocast: auto (default) only where the CPU has native "
                             "bf16; emulated bf16 ran 10x slower than fp32 on an AVX2-only CPU")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    args = parser.parse_args()
    limit, epochs = (400, 1) if args.quick else (None, 5)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    info = machine()
    console.print(f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}, "
                  f"AVX-512 {'yes' if info['avx512f'] else 'no'}, native bf16: {', '.join(info['native_bf16']) or 'no'}")
    console.print(f"transferkit precision: {info['precision']} ({info['precision_reason']})")
    autocast_dtype = torch.bfloat16 if info["precision"] == "bf16" else None
    mnist = load_mnist()
    arrays = {k: getattr(mnist, k) for k in ("x_train", "y_train", "x_test", "y_test")}
    record: dict = {"machine": info, "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    console.print("1/5 eager port, fp32 ...")
    record["eager_fp32"] = eager_port.run(arrays, seed=0, epochs=epochs, limit=limit)
    if args.bf16_port == "on" or (args.bf16_port == "auto" and info["native_bf16"]):
        console.print("2/5 eager port, bf16 autocast ...")
        record["eager_bf16"] = eager_port.run(arrays, seed=0, epochs=epochs, limit=limit, bf16=True)
    else:
        console.print("2/5 eager port, bf16 autocast: skipped (no native bf16; --bf16-port on to time it anyway)")
    console.print(f"3/5 transferkit run mnist, seeds {seeds} ...")
    record["transferkit"] = {s: transferkit_run(s, limit, epochs, scratch=(s == seeds[0])) for s in seeds}
    # From here on this process runs transferkit's own code, so it gets transferkit's allocator setting
    # (after the eager port, which runs as a user's script would).
    keep_freed_memory()
    console.print("4/5 layer ceiling ...")
    record["ceiling"] = time_layers(autocast_dtype)
    console.print("5/5 cost growth ...")
    fractions = (0.05, 0.1) if args.quick else (0.25, 0.5, 1.0)
    record["epoch_seconds"] = {f: seconds_per_epoch(f, mnist, autocast_dtype) for f in fractions}
    report(record, epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mnist_transfer-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    console.print(f"record: {path}")


def report(record: dict, epochs: int) -> None:
    first = next(iter(record["transferkit"].values()))
    tk = first["phases"]
    table = Table(title="MNIST 0-4 -> 5-9, per phase (seed 0)", title_justify="left")
    for col in ("run", "source s", "transfer s", "source+transfer s", "speed-up", "source acc", "transfer acc",
                "source img/s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    base = record["eager_fp32"]
    base_total = base["source"]["train_seconds"] + base["transfer"]["train_seconds"]
    n_source = tk["source"]["train_samples"] * epochs
    rows = [("eager port fp32", base), ("eager port bf16", record.get("eager_bf16")),
            ("transferkit", {p: tk[p] for p in ("source", "transfer")})]
    for name, r in rows:
        if r is None:
            continue
        total = r["source"]["train_seconds"] + r["transfer"]["train_seconds"]
        table.add_row(name, f"{r['source']['train_seconds']:.1f}", f"{r['transfer']['train_seconds']:.1f}",
                      f"{total:.1f}", f"{base_total / total:.2f}x", f"{r['source']['test_accuracy']:.4f}",
                      f"{r['transfer']['test_accuracy']:.4f}", f"{n_source / r['source']['train_seconds']:.0f}")
    console.print(table)
    if "scratch" in tk:
        console.print(f"transferkit scratch control: {tk['scratch']['train_seconds']:.1f} s, "
                      f"acc {tk['scratch']['test_accuracy']:.4f}")
    accs = {p: [r["phases"][p]["test_accuracy"] for r in record["transferkit"].values()] for p in ("source", "transfer")}
    console.print("transferkit over seeds " + ", ".join(map(str, record["transferkit"])) + ": " + "; ".join(
        f"{p} mean {statistics.mean(v):.4f} (min {min(v):.4f}, max {max(v):.4f})" for p, v in accs.items()))
    console.print(f"peak RSS of `transferkit run mnist`: {first['peak_rss_mb']:.0f} MB")
    c = record["ceiling"]
    steps = epochs * -(-tk["source"]["train_samples"] // 128)
    ceiling_s = steps * (c["conv_step_s"] + c["dense_step_s"])
    console.print(f"ceiling: conv layers {c['conv_step_s'] * 1000:.1f} ms/step ({c['conv_gflops']:.0f} GFLOP/s fwd+bwd), "
                  f"dense layers {c['dense_step_s'] * 1000:.1f} ms/step -> source phase floor {ceiling_s:.1f} s; "
                  f"transferkit's source phase reaches {ceiling_s / tk['source']['train_seconds']:.2f} of it")
    console.print("cost growth, seconds per source epoch: " + ", ".join(
        f"{int(float(f) * 100)}% of the data {s:.1f} s" for f, s in record["epoch_seconds"].items()))


if __name__ == "__main__":
    main()
