"""Benchmark: images per second of `transferkit predict` before and after its fast path (issue 28), on the same
images in one run: the baseline commit, the PyTorch fast path (fp32), and `--engine onnxruntime` (the run's
model exported once into the run folder's cache/, which the first call builds).

    python bench/predict.py                      # 64 images, baseline 65fab96 (main before the fast path)
    python bench/predict.py --images 128 --repeat 3
    python bench/predict.py --quick              # smoke run: 16 images, one repeat
    python bench/predict.py --baseline <commit>
    python bench/predict.py --int8               # also `transferkit export --int8`: fp32 vs int8 files (issue 31)

The baseline's code is checked out with `git worktree add` into a temporary folder. A finetune run is made
there (EfficientNet-Lite0's ImageNet weights, a head trained for one epoch on 3 CIFAR-10 classes of
../shared/data/cifar10-jpg.zip, 40 training images each), so both versions read a folder the older one wrote.
The same image files (CIFAR-10 test JPEGs, 32 px, enlarged to 256 and cropped to 224 as the run's
preprocessing says) are then predicted by each version in a process of its own, the versions taking turns
--repeat times; each figure is the best of its turns and counts `transferkit.predict` whole (loading the
model, reading and decoding the files, the network), and again less a separate load of the model ("after
loading"). The first call of each process (2 images: imports, kernels, and for --engine onnxruntime the
ONNX cache it builds once) is timed apart. The top-1 classes of the two are compared.

With --int8 the run gets 100 validation images a class (so one image is 0.33 accuracy points), is exported
with `transferkit.export(run, int8=True)` (calibrated on its 120 training images; --max-drop not applied, so the
figures are recorded whatever they are, and whether the default 1 point would have passed is printed), and
the fp32 and int8 files are two more versions in the turns (`transferkit.predict` on each file). The export's
own comparison (fp32 and int8 accuracy on the validation images, same top-1, file sizes, ONNX Runtime's
images/s at batch 1 and 32, the two taking turns in one process) is printed as a second table.

The machine (CPU model, cores, AVX2/AVX-512/VNNI/AMX flags, load average) is printed with the table: on a shared
machine the absolute figures move with the load, the ratio of two versions timed in turns much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the clone, or beside the folder of worktrees a clone's worktrees sit in
DEFAULT_DATA = next((d for d in (REPO.parent / "shared", REPO.parent.parent / "shared") if d.is_dir()),
                    REPO.parent / "shared") / "data" / "cifar10-jpg.zip"
CLASSES = ("cat", "dog", "horse")
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")

TIMER = """
import json, sys, time
import transferkit
try:
    from transferkit.inference.predict import image_files, load_classifier
except ImportError:  # the baseline's layout: predict lived in experiments/
    from transferkit.experiments.predict import image_files, load_classifier
run, folder, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kwargs:  # this version's options (the baseline has none of them): its ONNX cache notice not printed
    kwargs["notice"] = lambda _: None
files = image_files([folder])
start = time.perf_counter()
transferkit.predict(run, files[:2], **kwargs)  # warm-up: imports, kernels, ONNX cache
warmup = time.perf_counter() - start
start = time.perf_counter()
rows = transferkit.predict(run, files, **kwargs)
seconds = time.perf_counter() - start
start = time.perf_counter()  # loading the model alone, as predict loads it (the baseline has no engine option)
load_classifier(run, "fp32", kwargs["engine"], kwargs["notice"]) if "engine" in kwargs else load_classifier(run)
load = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "load": load, "warmup": warmup, "images": len(files),
                  "top1": [r.top[0][0] if r.top else None for r in rows]}))
"""


def machine() -> dict:
    """The CPU as /proc/cpuinfo names it, its flags of interest, cores and the load when measured."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags],
            "load_average": [round(x, 1) for x in os.getloadavg()]}


EXPORT = """
import json, sys, transferkit
result = transferkit.export(sys.argv[1], int8=True, max_drop=100.0)  # recorded whatever the drop
fp32 = transferkit.export(sys.argv[1])
print(json.dumps({"int8": str(result.path), "fp32": str(fp32.path), "figures": result.int8.to_dict()}))
"""


def extract(zip_path: Path, root: Path, images: int, val: int = 10) -> Path:
    """3 classes (40 train, `val` val each) for the run, and `images` test files of all classes to predict
    (only timed: some may be validation images too)."""
    with zipfile.ZipFile(zip_path) as z:
        for split, n, folder in (("train", 40, "train"), ("test", val, "val")):
            for c in CLASSES:
                (root / "photos" / folder / c).mkdir(parents=True)
                for i in range(n):
                    (root / "photos" / folder / c / f"{i:04d}.jpg").write_bytes(z.read(f"cifar10/{split}/{c}/{i:04d}.jpg"))
        tests = sorted(n for n in z.namelist() if n.startswith("cifar10/test/") and n.endswith(".jpg"))
        (root / "new").mkdir()
        for i, name in enumerate(tests[100::max(1, len(tests) // images)][:images]):
            (root / "new" / f"{i:04d}.jpg").write_bytes(z.read(name))
    return root / "new"


def python(src: Path, code: str, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(src)}, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"a timing process failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA.resolve()), help="CIFAR-10 as class folders (zip)")
    parser.add_argument("--baseline", default="65fab96", help="the commit to compare with (default 65fab96)")
    parser.add_argument("--images", type=int, default=64, help="image files to predict (default 64)")
    parser.add_argument("--repeat", type=int, default=2, help="turns per version, the best kept (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 images, one turn")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    parser.add_argument("--int8", action="store_true", help="also export --int8: the fp32 and int8 files compared")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeat = 16, 1
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags: {' '.join(info['flags']) or 'none'}, "
          f"load average {info['load_average']}")
    record: dict = {"machine": info, "baseline": args.baseline, "images": args.images, "repeat": args.repeat,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(base), args.baseline],
                       check=True)
        try:
            env = {**os.environ, "XDG_CACHE_HOME": f"{tmp}/cache"}
            new = extract(Path(args.data), Path(tmp), args.images, val=100 if args.int8 else 10)
            print("finetune (baseline's code): EfficientNet-Lite0, ImageNet weights, 1 epoch on 120 images ...")
            python(base / "src", "import sys, transferkit; transferkit.finetune(sys.argv[1], backbone='efficientnet_lite0', "
                   "epochs=1, out=sys.argv[2], verbose=False); print('ok')", f"{tmp}/photos", f"{tmp}/run", env=env)
            versions = {f"before ({args.baseline})": (base / "src", {}, f"{tmp}/run"),
                        "pytorch fast path (fp32)": (REPO / "src", {"precision": "fp32", "engine": "pytorch"},
                                                     f"{tmp}/run"),
                        "--engine onnxruntime": (REPO / "src", {"engine": "onnxruntime"}, f"{tmp}/run")}
            if {"avx512_bf16", "amx_bf16"} & set(info["flags"]):  # predict's default (auto) is bf16 on such CPUs
                versions["pytorch fast path (bf16)"] = (REPO / "src", {"precision": "bf16", "engine": "pytorch"},
                                                        f"{tmp}/run")
            if args.int8:
                print("export --int8 (and the fp32 file) ...")
                exported = json.loads(python(REPO / "src", EXPORT, f"{tmp}/run", env=env))
                record["int8"] = exported["figures"]
                versions["exported fp32 .onnx"] = (REPO / "src", {"engine": "onnxruntime"}, exported["fp32"])
                versions["exported int8 .onnx"] = (REPO / "src", {"engine": "onnxruntime"}, exported["int8"])
            best: dict[str, dict] = {}
            for _ in range(args.repeat):  # the versions take turns, so a busy minute hits both
                for name, (src, kwargs, model) in versions.items():
                    got = json.loads(python(src, TIMER, model, str(new), json.dumps(kwargs), env=env))
                    first_warmup = best.get(name, got)["warmup"]  # the first turn's: it builds the ONNX cache
                    if name not in best or got["seconds"] < best[name]["seconds"]:
                        best[name] = got
                    best[name]["warmup"] = max(first_warmup, got["warmup"])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    old = next(iter(best.values()))
    record["rows"] = [{"version": name, "images_per_second": r["images"] / r["seconds"], "seconds": r["seconds"],
                       "images_per_second_after_loading": r["images"] / max(r["seconds"] - r["load"], 1e-9),
                       "ratio_after_loading": (old["seconds"] - old["load"]) / max(r["seconds"] - r["load"], 1e-9),
                       "first_call_seconds": r["warmup"], "ratio": old["seconds"] / r["seconds"],
                       "same_top1": sum(a == b for a, b in zip(old["top1"], r["top1"], strict=True))} for name, r in best.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"predict-{'quick' if args.quick else 'full'}{'-int8' if args.int8 else ''}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"transferkit predict, {args.images} CIFAR-10 JPEGs (32 px, enlarged to 256, crop 224), EfficientNet-Lite0, "
          f"best of {args.repeat}")
    print("| version | images/s (whole call) | ratio | images/s after loading | ratio | same top-1 | first call (2 "
          "images) s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in record["rows"]:
        print(f"| {row['version']} | {row['images_per_second']:.1f} | {row['ratio']:.1f}x | "
              f"{row['images_per_second_after_loading']:.1f} | {row['ratio_after_loading']:.1f}x | "
              f"{row['same_top1']} of {args.images} | {row['first_call_seconds']:.1f} |")
    if args.int8:
        print_int8(record["int8"])
    print(f"machine load average now {[round(x, 1) for x in os.getloadavg()]}")
    print(f"record: {path}")


def print_int8(figures: dict) -> None:
    """The export's own comparison of its fp32 and int8 files, as a table."""
    speed = figures["images_per_second"]
    print(f"export --int8: {figures['compared']} validation images, calibrated on {figures['calibration']['images']} "
          f"training images; CPU {figures['cpu']['cpu']}, int8 flags {' '.join(figures['cpu']['flags']) or 'none'}")
    print("| file | size MB | accuracy | same top-1 as fp32 | images/s batch 1 | images/s batch 32 |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("fp32", "int8"):
        same = "-" if name == "fp32" else f"{figures['same_top1']} of {figures['compared']}"
        print(f"| {name} | {figures[name + '_bytes'] / 1e6:.2f} | {figures[name + '_accuracy']:.3f} | {same} | "
              f"{speed[name]['1']:.0f} | {speed[name]['32']:.0f} |")
    print(f"int8 / fp32 images/s: batch 1 {speed['int8']['1'] / speed['fp32']['1']:.2f}x, batch 32 "
          f"{speed['int8']['32'] / speed['fp32']['32']:.2f}x; accuracy drop {figures['accuracy_drop_points']:.1f} "
          f"points ({'within' if figures['accuracy_drop_points'] <= 1.0 else 'beyond'} the default --max-drop 1)")


if __name__ == "__main__":
    main()
