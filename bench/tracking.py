"""Benchmark: what --track tensorboard and --track mlflow cost a training, beside the same run untracked.

    python bench/tracking.py                      # run mnist --limit 2000 --epochs 2, 2 rounds
    python bench/tracking.py --limit 5000 --rounds 3

In one process, `rounds` times in turn: the split experiment untracked, then tracked by both (TensorBoard in the
run folder, MLflow on a file store under a temporary folder). Two figures, both ratios within this run:
- the time spent inside the trackers' per-epoch calls (epoch figures and each phase's final metrics), timed
  around them, as a share of the training seconds of the epochs (history.csv's `seconds`): what tracking costs
  an epoch, free of run-to-run noise;
- the tracked runs' training seconds over the untracked runs' (sums over rounds): the same cost with noise.
The end of a run (figures and MLflow artifacts, after the last epoch) is timed on its own. Writes
bench/out/tracking.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

import transferkit
from transferkit.reporting import tracking
from transferkit.reporting.environment import cpu_model
from transferkit.training import cpu_flags


def timed(counter: dict, key: str, method):
    """`method` that adds its seconds to counter[key]."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            counter[key] += time.perf_counter() - start
    return call


def train_seconds(results: dict) -> float:
    return sum(r["seconds"] for p in results["phases"].values() for r in p["history"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    counter = {"epoch": 0.0, "finish": 0.0}
    tracking.Tracking.epoch = timed(counter, "epoch", tracking.Tracking.epoch)
    tracking.Tracking.phase_done = timed(counter, "epoch", tracking.Tracking.phase_done)
    tracking.Tracking.finish = timed(counter, "finish", tracking.Tracking.finish)
    untracked, tracked, epochs = 0.0, 0.0, 0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("error")  # a tracker that failed would make the figures meaningless
        uri = (Path(tmp) / "mlruns").as_uri()
        for round_ in range(args.rounds):
            for track in ((), ("tensorboard", f"mlflow={uri}")):
                result = transferkit.run_split("mnist", limit=args.limit, epochs=args.epochs, verbose=False,
                                               out=Path(tmp) / f"run-{round_}-{len(track)}", track=track)
                seconds = train_seconds(result.results)
                if track:
                    tracked += seconds
                    epochs += sum(len(p["history"]) for p in result.results["phases"].values())
                else:
                    untracked += seconds
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    report = {
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "flags": flags},
        "run": f"transferkit run mnist --limit {args.limit} --epochs {args.epochs}, {args.rounds} rounds",
        "tracked_epochs": epochs,
        "tracking_seconds_per_epoch": round(counter["epoch"] / epochs, 5),
        "tracking_share_of_epoch": round(counter["epoch"] / tracked, 5),
        "tracked_over_untracked_training_seconds": round(tracked / untracked, 4),
        "finish_seconds_per_run": round(counter["finish"] / args.rounds, 3),
    }
    print(json.dumps(report, indent=2))
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "tracking.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
