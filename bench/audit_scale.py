"""Benchmark: the audit's checks at issue 32's scale, 50,000 images x 1,280 features, on the CPU.

    python bench/audit_scale.py               # 50,000 x 1,280, 10 classes
    python bench/audit_scale.py --images 5000

Features drawn as 10 Gaussian classes (the feature pass itself is timed by the other benchmarks: it depends on the
backbone and the image size, not on the checks). Times the blocked neighbour search (never an N x N matrix), the
5-fold out-of-fold probes and cleanlab's find_label_issues, and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from transferkit.experiments import audit_checks as checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.images)
    centres = rng.normal(0, 1, (args.classes, args.features)).astype(np.float32)
    features = torch.from_numpy(centres[labels] + rng.normal(0, 3, (args.images, args.features)).astype(np.float32))
    flipped = rng.choice(args.images, args.images // 50, replace=False)
    labels[flipped] = (labels[flipped] + 1) % args.classes
    seconds = {}
    t = time.perf_counter()
    indices, similarities = checks.nearest_neighbours(features)
    seconds["neighbours"] = time.perf_counter() - t
    t = time.perf_counter()
    thumbs = rng.normal(0, 1, (args.images, 256)).astype(np.float32)
    near = checks.near_duplicates(indices, similarities, thumbs, [str(i) for i in range(args.images)], 0.80, 0.99)
    scores, fence = checks.outlier_scores(similarities)
    seconds["near_duplicates_and_outliers"] = time.perf_counter() - t
    t = time.perf_counter()
    probabilities = checks.out_of_fold_probabilities(features, labels, args.classes, 5, 0)
    seconds["out_of_fold_probes"] = time.perf_counter() - t
    t = time.perf_counter()
    found = checks.label_issues(labels, probabilities)
    seconds["find_label_issues"] = time.perf_counter() - t
    hits = len({i for i, _, _ in found} & set(flipped.tolist()))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    print(json.dumps({"images": args.images, "features": args.features, "cpu": cpu, "threads": torch.get_num_threads(),
                      "seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "candidate_pairs_above_0.80": int((similarities >= 0.80).sum()),
                      "near_duplicates": len(near), "outliers": int((scores > fence).sum()), "flipped": len(flipped), "found": len(found), "flipped_found": hits}, indent=2))


if __name__ == "__main__":
    main()
