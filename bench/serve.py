"""Benchmark: `transferkit serve` under a bounded loopback load (issue 30), batching on and off, against the same
model behind a plain one-request-one-forward handler as a user would write it, in one run; then the same load
with 5% hostile requests mixed in.

    python bench/serve.py                    # 2,000 requests from 32 concurrent clients per server
    python bench/serve.py --requests 500 --clients 16
    python bench/serve.py --quick            # smoke run: 200 requests from 8 clients

A finetune run is made in a temporary folder (EfficientNet-Lite0's ImageNet weights, a head trained for one
epoch on 3 CIFAR-10 classes of ../shared/data/cifar10-jpg.zip, 40 training images each) and exported to ONNX;
every server serves that model.onnx (ONNX Runtime, fp32), each in a process of its own on 127.0.0.1 and a free
port:

- `transferkit serve model.onnx` with its defaults (--max-batch 32, --max-wait-ms 5, --parallel 1: one batch in
  the model at a time), with --parallel 2 (the next batch runs while one is in the model), and with --max-batch
  1 (batching off);
- plain: FastAPI's `def predict(file: UploadFile)`, decoding the upload and running the model on it alone, in
  FastAPI's thread pool (uvicorn's defaults), as the tutorials write it;
- hostile: the defaults, with 5% of the requests hostile (a body past --max-body-mb, not an image, a PNG whose
  header claims 100,000 x 100,000 pixels, a truncated JPEG): every good request must still get its right class.

All servers are up at once (an idle one costs no CPU) and take turns: the load goes to each in turn, --rounds
times, and a server's figures are its best round's, so that a change in a shared machine's load falls on all.
The load is an httpx async client in this process (`--clients` tasks, `--requests` in all, then it stops),
sending CIFAR-10 test JPEGs enlarged to 256 px (a few kB each); each answer's top-1 class is checked against
`transferkit predict` on the same files. Only loopback addresses are ever sent traffic. The server's resident
memory is read from /proc before and after each load. On a machine with few cores the load client takes a share
of the CPU from the server: the figures are for this machine, which the table names, and the ratios between
servers (measured in one run) travel better than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = next((d for d in (REPO.parent / "shared", REPO.parent.parent / "shared") if d.is_dir()),
                    REPO.parent / "shared") / "data" / "cifar10-jpg.zip"
CLASSES = ("cat", "dog", "horse")
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")

PLAIN_SERVER = '''
import socket, sys
import numpy as np, uvicorn
from fastapi import FastAPI, UploadFile
from transferkit.inference.predict import load_classifier

classifier = load_classifier(sys.argv[1])  # the exported model in ONNX Runtime, decoded as predict decodes
app = FastAPI()

@app.post("/predict")
def predict(file: UploadFile):  # one request, one forward pass, in FastAPI's thread pool
    probs = classifier.probabilities(classifier.decode(file.file.read())[None])[0]
    order = np.argsort(-probs)[:3]
    return [{"path": file.filename, "error": None, "predictions": [
        {"class": classifier.class_names[i], "probability": round(float(probs[i]), 6)} for i in order]}]

sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(2048)
print(f"serving plain on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
'''


def machine() -> dict:
    name, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags],
            "load_average": [round(x, 1) for x in os.getloadavg()]}


def make_files(zip_path: Path, root: Path, images: int) -> list[Path]:
    """3 CIFAR-10 classes (40 train, 10 val each) for the run in root/photos, and `images` test files of all
    classes enlarged to 256 px in root/new (a camera-sized upload costs its decode)."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as z:
        for split, n, folder in (("train", 40, "train"), ("test", 10, "val")):
            for c in CLASSES:
                (root / "photos" / folder / c).mkdir(parents=True)
                for i in range(n):
                    (root / "photos" / folder / c / f"{i:04d}.jpg").write_bytes(z.read(f"cifar10/{split}/{c}/{i:04d}.jpg"))
        tests = sorted(n for n in z.namelist() if n.startswith("cifar10/test/") and n.endswith(".jpg"))
        (root / "new").mkdir()
        files = []
        for i, name in enumerate(tests[100::max(1, len(tests) // images)][:images]):
            with Image.open(io.BytesIO(z.read(name))) as img:
                files.append(root / "new" / f"{i:04d}.jpg")
                img.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR).save(files[-1], quality=90)
    return files


def make_model(root: Path) -> Path:
    """The exported model.onnx of a fresh EfficientNet-Lite0 finetune run on root/photos."""
    import transferkit

    print("finetune: EfficientNet-Lite0, ImageNet weights, 1 epoch on 120 images; export to ONNX ...", flush=True)
    tuned = transferkit.finetune(str(root / "photos"), backbone="efficientnet_lite0", epochs=1,
                                 out=str(root / "run"), verbose=False)
    return transferkit.export(tuned.run_dir, "onnx").path


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    """A server process, once it prints the URL it listens on (always 127.0.0.1)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("serving "):
            url = line.rsplit(" on ", 1)[1].strip()
            assert url.startswith("http://127.0.0.1:"), url  # loopback only
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # never fills
            return process, url
    process.kill()
    raise SystemExit(f"the server did not start: {command}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png_claiming(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


async def load(url: str, bodies: list[tuple[str, bytes]], want: dict[str, str], requests: int, clients: int,
               hostile_every: int = 0) -> dict:
    """`requests` POST /predict from `clients` concurrent clients; latency and correctness of the good ones."""
    import httpx

    hostile = [("big.jpg", b"\xff\xd8" + b"\0" * (17 * 1024 * 1024)), ("notes.txt", b"not an image at all"),
               ("bomb.png", png_claiming(100_000, 100_000)), ("cut.jpg", bodies[0][1][: len(bodies[0][1]) // 2])]
    counter, latencies, wrong, refused, hostile_status = iter(range(requests)), [], 0, 0, {}

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal wrong, refused
        for n in counter:
            bad = hostile_every and n % hostile_every == hostile_every - 1
            name, body = hostile[(n // hostile_every) % len(hostile)] if bad else bodies[n % len(bodies)]
            started = time.perf_counter()
            try:
                answer = await c.post("/predict", files={"file": (name, body)})
                status = answer.status_code
            except httpx.HTTPError as e:  # a server may close the connection on a body it refuses
                status = type(e).__name__
            if bad:
                hostile_status[status] = hostile_status.get(status, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                refused += 1
            elif answer.json()[0]["predictions"][0]["class"] != want[name]:
                wrong += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    good = len(latencies)
    return {"requests": requests, "good": good, "wrong": wrong, "refused": refused, "seconds": round(wall, 2),
            "requests_per_second": round(good / wall, 1), "p50_ms": round(1000 * latencies[good // 2], 1),
            "p99_ms": round(1000 * latencies[min(good - 1, int(good * 0.99))], 1),
            "hostile": {str(k): v for k, v in sorted(hostile_status.items(), key=str)}}


def _per_batch(url: str) -> float | None:
    """The mean images per forward pass a transferkit server ran (its /health); None for the plain one."""
    import httpx

    health = httpx.get(f"{url}/health", timeout=10)
    if health.status_code != 200:
        return None
    return round(health.json()["images"] / max(1, health.json()["batches"]), 2)


def run_in_turns(servers: dict, bodies, want, args) -> list[dict]:
    """Every server up at once (idle ones cost no CPU); the load sent to each in turn, --rounds times, so that
    a change in the machine's load falls on all of them. A server's figures are its best round's; wrong and
    refused answers are summed over all rounds."""
    started = {name: start(command) for name, (command, _) in servers.items()}
    try:
        before = {}
        for name, (process, url) in started.items():
            asyncio.run(load(url, bodies, want, 2 * args.clients, args.clients))  # warm-up: kernels, pools
            before[name] = rss_mb(process.pid)
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (_, url) in started.items():
                rounds[name].append(asyncio.run(load(url, bodies, want, args.requests // args.rounds, args.clients,
                                                     servers[name][1])))
        rows = []
        for name, (process, url) in started.items():
            best = max(rounds[name], key=lambda r: r["requests_per_second"])
            hostile: dict[str, int] = {}
            for r in rounds[name]:
                for status, n in r["hostile"].items():
                    hostile[status] = hostile.get(status, 0) + n
            rows.append({**best, "server": name, "rounds": len(rounds[name]),
                         "round_requests_per_second": [r["requests_per_second"] for r in rounds[name]],
                         "good": sum(r["good"] for r in rounds[name]), "wrong": sum(r["wrong"] for r in rounds[name]),
                         "refused": sum(r["refused"] for r in rounds[name]), "hostile": hostile,
                         "rss_before_mb": round(before[name], 1), "rss_after_mb": round(rss_mb(process.pid), 1),
                         "alive": process.poll() is None, "images_per_batch": _per_batch(url)})
            print(f"{name}: {json.dumps(rows[-1])}", flush=True)
        return rows
    finally:
        for process, _ in started.values():
            process.terminate()
        for process, _ in started.values():
            process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA.resolve()), help="CIFAR-10 as class folders (zip)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per server (default 2000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--rounds", type=int, default=8, help="turns per server, the requests split over them")
    parser.add_argument("--model", default=None, help="an exported .onnx to serve instead of a fresh run's")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 requests from 8 clients")
    parser.add_argument("--out", default="bench/out", help="folder for the JSON record (default bench/out)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.clients, args.rounds = 200, 8, 2
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags: {' '.join(info['flags']) or 'none'}, "
          f"load average {info['load_average']}", flush=True)
    import transferkit

    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(args.data), Path(tmp), 64)
        model = Path(args.model) if args.model else make_model(Path(tmp))
        want = {f.name: p.top[0][0] for f, p in zip(files, transferkit.predict(model, files, notice=lambda _: None),
                                                    strict=True)}
        bodies = [(f.name, f.read_bytes()) for f in files]
        serve = [sys.executable, "-m", "transferkit", "serve", str(model), "--port", "0"]
        servers = {"transferkit serve (defaults: --max-batch 32, --max-wait-ms 5, --parallel 1)": (serve, 0),
                   "transferkit serve --parallel 2": (serve + ["--parallel", "2"], 0),
                   "transferkit serve --max-batch 1 (batching off)": (serve + ["--max-batch", "1"], 0),
                   "plain handler (one request, one forward)": ([sys.executable, "-c", PLAIN_SERVER, str(model)], 0),
                   "transferkit serve (defaults), 5% hostile requests": (serve, 20)}
        rows = run_in_turns(servers, bodies, want, args)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
              "requests": args.requests, "clients": args.clients, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    base = next(r for r in rows if r["server"].startswith("plain"))["requests_per_second"]
    print(f"\n{args.requests} requests ({args.rounds} rounds, servers in turns) from {args.clients} concurrent clients, "
          f"one 256 px JPEG each, EfficientNet-Lite0 (ONNX Runtime, fp32), on {info['cpu']} ({info['cores']} cores)")
    print("| server | requests/s (best round) | vs plain | p50 ms | p99 ms | images per batch | wrong | refused | "
          "memory before -> after (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['server']} | {r['requests_per_second']:.1f} | {r['requests_per_second'] / base:.2f}x | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['images_per_batch'] or '-'} | {r['wrong']} | {r['refused']} | "
              f"{r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} |")
    hostile = rows[-1]
    print(f"hostile requests' answers: {hostile['hostile']}; good ones wrong: {hostile['wrong']}, refused: "
          f"{hostile['refused']}; server alive after: {hostile['alive']}")
    print(f"machine load average now {[round(x, 1) for x in os.getloadavg()]}")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
