"""Benchmark: a shots study against the same points run as separate `transferkit run` commands, and the freeze
study, in one run on this machine; and `--jobs` compared (one process with every thread against one process
per core with one thread each), which chose the studies' default --jobs (one process per usable core).

    python bench/studies.py            # MNIST 0-4 -> 5-9: shots 1,2,5,10,20,50,100,all x 5 seeds x 2 arms
    python bench/studies.py --quick    # a smoke run on 2,000 images, 2 shot counts x 2 seeds
    python bench/studies.py --jobs-only --repeats 2   # only the --jobs comparison (a small shots study)
    python bench/studies.py --no-jobs --keep bench/out  # the studies without it, their folders kept
    python bench/studies.py --cluster --quick           # in process, --jobs N and Ray (a local cluster), compared

The studies run with the default --jobs. The separate commands are what a user would type today: one
`transferkit run mnist --shots N --seed S` per shot count and seed, each training its own source network and
both arms, one after another with every thread. They train small shot counts for fewer steps than the study's
minimum (run has no such minimum), so equal work would cost them more than measured here: the ratio
understates the study's saving. Running all of them would take hours; the bench runs a sample (`--sample`,
default 4: `all` and small shot counts spread over the seeds) and extrapolates to the whole grid by shot count
(a shot count not sampled costs what the sampled small ones did: a command's time is its source network's and
its scratch phase's, which only `all` makes long), saying so. Each section prints its figures as soon as it is
done, so a bench stopped half-way has told what it measured.

The --jobs comparison runs the same small shots study (`--shots 10,100 --seeds 2 --limit 4000`) alternately as
1 process x every thread and as one process per core x 1 thread, `--repeats` times each, and compares the
wall times run by run (the ratio of neighbours, then the median: timings drift 20% and more from minute to
minute on shared machines), and the points' accuracies between the two (the thread count changes float sums).

--cluster runs one small shots study three ways in this process, one after another: in this process (every
thread), in one worker process per core (--jobs N) and as Ray tasks on a local Ray cluster of one CPU per core
(--cluster ray, the cluster started before the clock and timed apart). For each: the wall time, the trainings'
own seconds (study.json's train_seconds, summed), and the engine's overhead per unit, (wall x processes -
training seconds) / units: what the processes spent on anything but training (starting, receiving the data,
sending results back, waiting for the next unit), per unit handed out.
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
from pathlib import Path

from transferkit.reporting.environment import cpu_model
from transferkit.training import cpu_flags
from transferkit.training.batches import usable_cores

SHOTS = "1,2,5,10,20,50,100,all"
JOBS_STUDY = ["study", "shots", "mnist", "--shots", "10,100", "--seeds", "2", "--limit", "4000", "--quiet"]
JOBS_STUDY_QUICK = ["study", "shots", "mnist", "--shots", "3,all", "--seeds", "2", "--limit", "400", "--epochs", "2",
                    "--min-steps", "20", "--quiet"]


def timed(args: list[str], threads: int | None = None) -> float:
    """Wall seconds of one `transferkit` command; `threads` sets OMP_NUM_THREADS (torch's threads) for it."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: transferkit {' '.join(args)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def compare_jobs(tmp: Path, repeats: int, study: list[str]) -> None:
    """The same small shots study as 1 process x every thread and as `cores` processes x 1 thread, alternated."""
    cores = usable_cores()
    print(f"--jobs comparison: transferkit {' '.join(study)}, {repeats} x each, alternated")
    one, many, points = [], [], {}
    for r in range(repeats):
        for jobs, wall in ((1, one), (cores, many)):
            out = tmp / f"jobs{jobs}-{r}"
            wall.append(timed([*study, "--jobs", str(jobs), "--out", str(out)], threads=cores))
            points[jobs] = json.loads((out / "study.json").read_text())["points"]
            print(f"  run {r + 1}: {jobs} process(es) x {cores // jobs} thread(s): {wall[-1]:.1f} s", flush=True)
    ratios = [a / b for a, b in zip(one, many, strict=True)]
    print(f"  1 x {cores} threads: median {statistics.median(one):.1f} s; {cores} x 1 thread: median "
          f"{statistics.median(many):.1f} s; 1 process takes {statistics.median(ratios):.2f}x the {cores} processes' "
          f"time (run by run: {', '.join(f'{x:.2f}' for x in ratios)})")
    differences = [abs(points[1][k]["test_accuracy"] - points[cores][k]["test_accuracy"]) for k in points[1]]
    same = sum(points[1][k]["test_loss"] == points[cores][k]["test_loss"] for k in points[1])
    print(f"  points: {same} of {len(differences)} with the same test loss to the bit; test accuracy differs by "
          f"{max(differences) * 100:.2f} points at most (mean {statistics.mean(differences) * 100:.3f})")


def compare_engines(tmp: Path, quick: bool) -> None:
    """The same small shots study in this process, in --jobs <cores> processes and as Ray tasks (--cluster)."""
    try:
        import ray
    except ImportError:
        raise SystemExit('--cluster needs Ray: pip install -c constraints.txt ".[cluster]"') from None
    import transferkit
    from transferkit.experiments.study import study_units
    from transferkit.experiments.study_plan import StudyConfig

    options = ({"shots": "3,all", "seeds": 2, "limit": 400, "epochs": 2, "min_steps": 20} if quick
               else {"shots": "10,100", "seeds": 2, "limit": 4000})
    cores = usable_cores()
    shots = tuple(0 if n == "all" else int(n) for n in options["shots"].split(","))
    units = len(study_units(StudyConfig("shots", seeds=options["seeds"], shots=shots)))
    print(f"engines: transferkit.study('shots', 'mnist', {', '.join(f'{k}={v!r}' for k, v in options.items())}): "
          f"{units} units", flush=True)
    points = {}
    for name, how, processes in (("in process", {"jobs": 1}, 1), (f"--jobs {cores}", {"jobs": cores}, cores),
                                 ("Ray", {"cluster": "ray"}, cores)):
        if "cluster" in how:
            start = time.perf_counter()
            ray.init(address="local", num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1",
                     object_store_memory=256 << 20, logging_level="warning")
            print(f"  (a local Ray cluster of {cores} CPUs started in {time.perf_counter() - start:.1f} s)")
        load = Path("/proc/loadavg").read_text().split()[0]
        start = time.perf_counter()
        try:
            transferkit.study("shots", "mnist", out=tmp / f"engine-{processes}-{len(points)}", verbose=False,
                              **options, **how)
        finally:
            if "cluster" in how:
                ray.shutdown()
        wall = time.perf_counter() - start
        record = json.loads((tmp / f"engine-{processes}-{len(points)}" / "study.json").read_text())
        training = sum(phase["train_seconds"] for phase in record["phases"].values())
        threads = record["distributed"]["threads_per_job"]
        points[name] = record["points"]
        print(f"  {name} ({processes} x {threads} thread(s)): {wall:.1f} s wall, {training:.1f} s training, overhead "
              f"{(wall * processes - training) / units:.2f} s per unit (load average {load} at its start)", flush=True)
    same = sum(points["Ray"][k]["test_loss"] == points[f"--jobs {cores}"][k]["test_loss"] for k in points["Ray"])
    print(f"  Ray and --jobs {cores} (1 thread each): {same} of {len(points['Ray'])} points with the same test loss "
          "to the bit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 images, 2 shot counts x 2 seeds")
    parser.add_argument("--sample", type=int, default=4, help="separate commands actually run (extrapolated)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side of the --jobs comparison")
    parser.add_argument("--jobs-only", action="store_true", help="only the --jobs comparison")
    parser.add_argument("--no-jobs", action="store_true", help="skip the --jobs comparison")
    parser.add_argument("--no-freeze", action="store_true", help="skip the freeze study")
    parser.add_argument("--cluster", action="store_true", help="only in process, --jobs and Ray compared")
    parser.add_argument("--keep", type=Path, help="write the studies' folders here (default: a temporary folder)")
    args = parser.parse_args()
    shots, seeds, extra = (("10,all", 2, ["--limit", "2000"]) if args.quick else (SHOTS, 5, []))
    print(f"CPU: {cpu_model()}; {usable_cores()} usable cores; flags: "
          f"{', '.join(sorted(f for f in cpu_flags() if f.startswith(('avx', 'amx'))))}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; studies with the default --jobs "
          f"(one process per usable core)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.cluster:
            compare_engines(tmp, args.quick)
            return
        if not args.no_jobs:
            compare_jobs(tmp, args.repeats, JOBS_STUDY_QUICK if args.quick else JOBS_STUDY)
        if args.jobs_only:
            return
        print(f"transferkit study shots mnist --shots {shots} --seeds {seeds} {' '.join(extra)}", flush=True)
        shots_seconds = timed(["study", "shots", "mnist", "--shots", shots, "--seeds", str(seeds), *extra,
                               "--out", str(tmp / "shots"), "--quiet"])
        describe("shots", shots_seconds, tmp / "shots")
        # The same points as separate runs: each trains a source network, then transfer and scratch.
        grid = [(n, s) for s in range(seeds) for n in shots.split(",")]
        separate: dict[str, list[float]] = {}
        for n, s in sample_commands(shots.split(","), seeds, args.sample):
            shot = [] if n == "all" else ["--shots", n]
            seconds = timed(["run", "mnist", *shot, "--seed", str(s), *extra, "--out", str(tmp / f"run-{n}-{s}")])
            separate.setdefault(n, []).append(seconds)
            print(f"  transferkit run mnist {' '.join(shot)} --seed {s}: {seconds:.0f} s", flush=True)
        small = [t for n, times in separate.items() if n != "all" for t in times] or sum(separate.values(), [])
        separate_total = sum(statistics.mean(separate.get(n) or small) for n, _ in grid)
        print(f"separate `transferkit run` commands: {sum(map(len, separate.values()))} of {len(grid)} run, "
              f"extrapolated by shot count to {separate_total:.0f} s")
        print(f"ratio: the separate commands take {separate_total / shots_seconds:.2f}x the shots study's wall time "
              "(below 1: the study was slower; it trains small shot counts to its minimum of steps, run does not)",
              flush=True)
        if args.no_freeze:
            return
        freeze_seeds = "3" if not args.quick else "2"
        print(f"transferkit study freeze mnist --seeds {freeze_seeds} {' '.join(extra)}", flush=True)
        freeze_seconds = timed(["study", "freeze", "mnist", "--seeds", freeze_seeds, *extra,
                                "--out", str(tmp / "freeze"), "--quiet"])
        describe("freeze", freeze_seconds, tmp / "freeze")


def sample_commands(shots: list[str], seeds: int, k: int) -> list[tuple[str, int]]:
    """`k` (shot count, seed) commands to time: `all` first (the one long kind), then the other shot counts
    spread evenly, the seeds taken in turn."""
    small = [n for n in shots if n != "all"]
    chosen = ["all"] * ("all" in shots) + [small[round(i * (len(small) - 1) / max(1, k - 2))] for i in range(k - 1)]
    commands = [(n, i % seeds) for i, n in enumerate(chosen[:k])] if small else [("all", i % seeds) for i in range(k)]
    return list(dict.fromkeys(commands))  # each once: a small grid has fewer than k


def describe(kind: str, wall: float, folder: Path) -> None:
    """A study's wall time, its processes, and its training seconds per point by arm (and cut)."""
    record = json.loads((folder / "study.json").read_text())
    points, processes = record["points"], record["distributed"]
    print(f"{kind} study: {wall:.0f} s wall ({processes.get('jobs', 1)} process(es) x "
          f"{processes.get('threads_per_job', '?')} thread(s)), {len(points)} points ({wall / len(points):.1f} s wall "
          "per point, source networks included); training seconds per point by arm, as its process measured them:")
    by_arm: dict[str, list[float]] = {}
    for p in points.values():  # the freeze study by cut too: a frozen arm's cost depends on it
        by_arm.setdefault(p["arm"] if p.get("cut") is None else f"{p['arm']} at cut {p['cut']}", []).append(p["seconds"])
    for arm, seconds in by_arm.items():
        print(f"  {arm}: {statistics.mean(seconds):.1f} s per point ({min(seconds):.1f} to {max(seconds):.1f})")
    sources = [v["train_seconds"] for k, v in record["phases"].items() if k.startswith("baseA/")]
    if sources:
        print(f"  baseA (source network, one per seed): {statistics.mean(sources):.1f} s each", flush=True)


if __name__ == "__main__":
    main()
