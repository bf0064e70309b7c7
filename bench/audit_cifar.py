"""Benchmark: `transferkit audit` against known corruptions (issue 32's ground truth).

    python bench/audit_cifar.py                  # 5 classes x 500 images, as the issue asks
    python bench/audit_cifar.py --per-class 100  # a quick look

From CIFAR-10's JPEGs (../shared/data/cifar10-jpg.zip, or --zip): 5 classes, `--per-class` training images each
split 80/20 into train/ and val/, and 100 test images per class in test/. Then, with a fixed seed: 5% of the
training images relabelled to another class (filed under its folder), 20 training images copied into val/ (7 as the
same file, 7 re-encoded at JPEG quality 60, 6 resized to 40 x 40), and 10 images of classes outside the set filed
under the set's classes. Runs the audit (one process, timed) and reports the precision and recall of each finding
against the planted corruptions. With --finetune, `transferkit finetune` (no options) twice, on the folder as it is
and with `--exclude` of every file the audit flagged, each scored by `transferkit predict` on the clean test/.
Writes bench/out/audit_cifar.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

import transferkit

CLASSES = ("airplane", "automobile", "bird", "cat", "ship")
OUTSIDE = ("deer", "frog", "horse", "truck", "dog")


def build(zip_path: Path, root: Path, per_class: int, seed: int) -> dict:
    """The corrupted folder under `root`, and what was planted (paths relative to it)."""
    rng = np.random.default_rng(seed)
    planted = {"relabelled": [], "leaked": [], "outside": []}
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()

        def files(split: str, c: str, n: int) -> list[str]:
            return sorted(f for f in names if f.startswith(f"cifar10/{split}/{c}/") and f.endswith(".jpg"))[:n]

        train = []
        for c in CLASSES:
            chosen = files("train", c, per_class)
            order = rng.permutation(len(chosen))
            n_val = len(chosen) // 5
            for k, i in enumerate(order):
                split = "val" if k < n_val else "train"
                (root / split / c).mkdir(parents=True, exist_ok=True)
                target = root / split / c / Path(chosen[i]).name
                target.write_bytes(z.read(chosen[i]))
                if split == "train":
                    train.append((target, c))
            for f in files("test", c, 100):
                (root / "test" / c).mkdir(parents=True, exist_ok=True)
                (root / "test" / c / Path(f).name).write_bytes(z.read(f))
        picks = rng.permutation(len(train))
        relabel, leak = picks[: len(train) // 20], picks[len(train) // 20: len(train) // 20 + 20]
        for i in leak:  # before relabelling moves any file
            source, c = train[i]
            kind = ("copy", "requality", "resize")[min(int(np.searchsorted([7, 14], list(leak).index(i), "right")), 2)]
            target = root / "val" / c / f"leak-{source.stem}.jpg"
            if kind == "copy":
                target.write_bytes(source.read_bytes())
            else:
                img = Image.open(source).convert("RGB")
                img = img.resize((40, 40), Image.Resampling.BILINEAR) if kind == "resize" else img
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=60 if kind == "requality" else 90)
                target.write_bytes(buf.getvalue())
            planted["leaked"].append({"val": str(target.relative_to(root)), "train": str(source.relative_to(root)),
                                      "how": kind})
        for i in relabel:
            source, c = train[i]
            wrong = CLASSES[(CLASSES.index(c) + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
            target = root / "train" / wrong / f"relabelled-{c}-{source.name}"
            source.rename(target)
            planted["relabelled"].append(str(target.relative_to(root)))
        for k in range(10):
            f = files("train", OUTSIDE[k % len(OUTSIDE)], 1000)[600 + k]
            c = CLASSES[k % len(CLASSES)]
            target = root / "train" / c / f"outside-{OUTSIDE[k % len(OUTSIDE)]}-{Path(f).name}"
            target.write_bytes(z.read(f))
            planted["outside"].append(str(target.relative_to(root)))
    return planted


def score(found: set[str], truth: set[str]) -> dict:
    hit = len(found & truth)
    return {"found": len(found), "planted": len(truth), "hit": hit,
            "precision": round(hit / len(found), 3) if found else None, "recall": round(hit / len(truth), 3)}


def finetuned(root: Path, tmp: Path, issues: Path) -> dict:
    """Test accuracy of `finetune` with no options, on the folder as it is and without every flagged file."""
    everything = tmp / "exclude-all.csv"
    with issues.open() as f, everything.open("w", newline="") as g:
        rows = list(csv.DictReader(f))
        writer = csv.DictWriter(g, rows[0].keys())
        writer.writeheader()
        writer.writerows({**r, "action": "exclude"} for r in rows)  # as a user who accepted every finding
    record = {}
    for name, extra in (("as_is", []), ("excluded", ["--exclude", str(everything)])):
        run = tmp / f"ft-{name}"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transferkit", "finetune", str(root), "--out", str(run), "-q", *extra],
                       check=True)
        seconds = time.perf_counter() - start
        shown = subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), str(root / "test"), "--json"],
                               check=True, capture_output=True, text=True)
        predictions = json.loads(shown.stdout)
        right = [Path(p["path"]).parent.name == p["predictions"][0]["class"] for p in predictions if p["predictions"]]
        results = json.loads((run / "results.json").read_text())
        record[name] = {"test_accuracy": round(sum(right) / len(right), 4), "test_images": len(right),
                        "train_images": results["dataset"]["train_samples"],
                        "val_images": results["dataset"]["val_samples"],
                        "excluded": len(results["dataset"].get("excluded", [])), "seconds": round(seconds, 1)}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.zip")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--near-threshold", type=float, default=0.80)
    parser.add_argument("--pixel-threshold", type=float, default=0.99)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar5"
        planted = build(args.zip, root, args.per_class, args.seed)
        start = time.perf_counter()
        result = transferkit.audit(root, out=Path(tmp) / "audit", image_size=args.image_size, seed=args.seed,
                                   near_threshold=args.near_threshold, pixel_threshold=args.pixel_threshold)
        seconds = time.perf_counter() - start
        tuned = finetuned(root, Path(tmp), result.out_dir / "issues.csv") if args.finetune else None
    f = result.findings
    pairs = {tuple(sorted(i["path"] for i in p["images"])): (p["feature_similarity"], p["pixel_correlation"])
             for p in f["near_duplicates"]}
    leaked = {p["val"] for p in planted["leaked"]}
    wrong = set(planted["relabelled"]) | set(planted["outside"])
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    None),
        "per_class": args.per_class, "images": result.results["data"]["images"], "seconds": round(seconds, 1),
        "audit_seconds": result.results["seconds"],
        "leakage": score({leak["images"][1]["path"] for leak in f["leakage"]}, leaked),
        "leakage_by_kind": {how: score({leak["images"][1]["path"] for leak in f["leakage"]},
                                       {p["val"] for p in planted["leaked"] if p["how"] == how})["recall"]
                            for how in ("copy", "requality", "resize")},
        "label_issues_relabelled": score({i["path"] for i in f["label_issues"]}, set(planted["relabelled"])),
        # The ranking's head: of the first as many images as were planted wrong, how many were.
        "label_issues_top_planted": score({i["path"] for i in f["label_issues"][:len(wrong)]}, wrong),
        "label_issues_any_planted": score({i["path"] for i in f["label_issues"]}, wrong),
        "outliers_outside": score({o["path"] for o in f["outliers"]}, set(planted["outside"])),
        "outside_found_by_either": score({i["path"] for i in f["label_issues"]} | {o["path"] for o in f["outliers"]},
                                         set(planted["outside"])),
        # How far the planted copies stand from the closest distinct pairs: the thresholds' margin.
        "planted_pairs": {p["val"]: pairs.get(tuple(sorted((p["train"], p["val"])))) for p in planted["leaked"]},
        "closest_other_pairs": sorted((v for k, v in pairs.items() if not set(k) & leaked), reverse=True)[:5],
        "finetune": tuned,
        "probe_accuracy": result.results["thresholds"]["probe_accuracy"], "counts": result.results["counts"],
    }
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "audit_cifar.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
