"""Benchmark: training images per second of `transferkit run mnist` in 1 process and under torchrun in N.

    python bench/distributed.py                  # 1 and 2 processes, 4000 images per split, 2 epochs
    python bench/distributed.py --procs 1,2,4 --limit 10000

Every run has the same global batch (128) and runs as a user runs it: one process with a thread per core, or
torchrun's processes with one thread each (torchrun's default). With no more cores than that, expect no
speed-up on a CPU: the point there is that the distributed path is correct; the speed-up comes with one
process per GPU, or per machine.
Images per second are a phase's training images over its train_seconds (validation included, as recorded).
Timings are noisy on shared machines: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
GLOBAL_BATCH = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, limit: int, epochs: int) -> dict:
    """One `transferkit run mnist --no-scratch` on `procs` processes; its results.json."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "transferkit", "run", "mnist", "--limit", str(limit), "--epochs", str(epochs), "--no-scratch",
                "--batch-size", str(GLOBAL_BATCH // procs), "--out", f"{tmp}/run"]
        if procs > 1:  # loopback only: gloo on this machine's CPUs
            args = ["-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
                    "--master-port", str(free_port()), *args]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(f"{tmp}/run/results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="process counts to time (default 1,2)")
    parser.add_argument("--limit", type=int, default=4000, help="images per split (default 4000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per phase (default 2)")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    args = parser.parse_args()
    console.print(f"machine: {os.cpu_count()} cores; global batch {GLOBAL_BATCH}, {args.limit} images per split, "
                  f"{args.epochs} epochs")
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
              "limit": args.limit, "epochs": args.epochs, "runs": {}}
    table = Table(title="transferkit run mnist (source + transfer)", title_justify="left")
    for col in ("processes", "batch per process", "source img/s", "transfer img/s", "source acc", "transfer acc"):
        table.add_column(col, justify="right")
    for procs in (int(p) for p in args.procs.split(",")):
        console.print(f"{procs} process(es) ...")
        results = run(procs, args.limit, args.epochs)
        phases = results["phases"]
        rate = {p: phases[p]["train_samples"] * phases[p]["epochs"] / phases[p]["train_seconds"] for p in phases}
        record["runs"][procs] = {"images_per_second": rate, "distributed": results["distributed"],
                                 "test_accuracy": {p: phases[p]["test_accuracy"] for p in phases}}
        table.add_row(str(procs), str(results["distributed"]["batch_size_per_rank"]), f"{rate['source']:.0f}",
                      f"{rate['transfer']:.0f}", f"{phases['source']['test_accuracy']:.4f}",
                      f"{phases['transfer']['test_accuracy']:.4f}")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"distributed-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"record: {path}")


if __name__ == "__main__":
    main()
