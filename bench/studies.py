"""Benchmark: a shots study against the same points run as separate `transferkit run` commands, and the freeze
study, in one run on this machine.

    python bench/studies.py            # MNIST 0-4 -> 5-9: shots 1,2,5,10,20,50,100,all x 5 seeds x 2 arms
    python bench/studies.py --quick    # a smoke run on 2,000 images, 2 shot counts x 2 seeds

The separate commands are what a user would type today: one `transferkit run mnist --shots N --seed S` per
shot count and seed, each training its own source network and both arms. They train small shot counts for
fewer steps than the study's minimum (run has no such minimum), so equal work would cost them more than
measured here: the ratio understates the study's saving. Running all of them would take hours; the bench runs a
sample (`--sample`, default 4) and extrapolates to the whole grid, saying so. Timings vary on shared machines:
compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferkit.reporting.environment import cpu_model
from transferkit.training import cpu_flags

SHOTS = "1,2,5,10,20,50,100,all"


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: transferkit {' '.join(args)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 images, 2 shot counts x 2 seeds")
    parser.add_argument("--sample", type=int, default=4, help="separate commands actually run (extrapolated)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    shots, seeds, extra = (("10,all", 2, ["--limit", "2000"]) if args.quick else (SHOTS, 5, []))
    n_shots = len(shots.split(","))
    print(f"CPU: {cpu_model()}; flags: {', '.join(sorted(f for f in cpu_flags() if f.startswith(('avx', 'amx'))))}")
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "shots"
        shots_seconds = timed(["study", "shots", "mnist", "--shots", shots, "--seeds", str(seeds), *extra,
                               "--out", str(study), "--quiet"])
        record = json.loads((study / "study.json").read_text())
        # The same points as separate runs: each trains a source network, then transfer and scratch.
        grid = [(n, s) for s in range(seeds) for n in shots.split(",")]
        sample = grid[:: max(1, len(grid) // args.sample)][: args.sample]
        separate = []
        for n, s in sample:
            shot = [] if n == "all" else ["--shots", n]
            separate.append(timed(["run", "mnist", *shot, "--seed", str(s), *extra, "--out", str(Path(tmp) / f"{n}-{s}")]))
        separate_total = sum(separate) / len(separate) * len(grid)
        freeze_seconds = timed(["study", "freeze", "mnist", "--seeds", "3" if not args.quick else "2", *extra,
                                "--out", str(Path(tmp) / "freeze"), "--quiet"])
    by_arm: dict[str, list[float]] = {}
    for p in record["points"].values():
        by_arm.setdefault(p["arm"], []).append(p["seconds"])
    print(f"shots study ({n_shots} shot counts x {seeds} seeds x 2 arms): {shots_seconds:.0f} s wall")
    print(f"separate `transferkit run` commands: {len(sample)} of {len(grid)} run, mean {sum(separate) / len(separate):.0f} s "
          f"each, extrapolated {separate_total:.0f} s")
    print(f"ratio: the separate commands take {separate_total / shots_seconds:.2f}x the study's wall time "
          "(below 1: the study was slower; it trains small shot counts to its minimum of steps, run does not)")
    for arm, seconds in by_arm.items():
        print(f"  {arm}: {sum(seconds) / len(seconds):.1f} s per point (training, validation and checkpoints)")
    print(f"freeze study: {freeze_seconds:.0f} s wall")


if __name__ == "__main__":
    main()
