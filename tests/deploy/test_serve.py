"""transferkit serve (issue 30): the API through an in-process client gives predict's very answers, batches
requests that arrive together, refuses each kind of bad request with its status and one line of JSON, drains on
SIGTERM; the page classifies an upload in headless Chromium. Every server a test starts, the test stops."""

import asyncio
import contextlib
import io
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_finetune
from PIL import Image

import transferkit
from transferkit import UserError, predict
from transferkit.cli import main
from transferkit.config import ServeConfig


def _need(module: str):
    # CI installs the serve extra (README's test command), so there a missing package is a failure.
    return __import__(module) if os.environ.get("CI") else pytest.importorskip(module)


httpx = _need("httpx")
_need("fastapi")
_need("uvicorn")

from transferkit.deploy.app import create_app  # noqa: E402 - after the extra is known to be installed
from transferkit.deploy.serve import load_served, serve_engine  # noqa: E402
from transferkit.deploy.server import running  # noqa: E402


@pytest.fixture(scope="module")
def photos(deploy_photos):
    return deploy_photos  # conftest's, made once a session


@pytest.fixture(scope="module")
def tuned(photos, tmp_path_factory):
    return tiny_finetune(photos, tmp_path_factory, epochs=2)


@pytest.fixture(scope="module")
def files(photos):
    return sorted(photos.rglob("*.jpg"))


def app_for(source, **options):
    return create_app(load_served(source, ServeConfig(**{"engine": "pytorch", **options}), notice=lambda _: None))


@contextlib.asynccontextmanager
async def in_process(app):
    """An httpx client that calls the application in this process, its lifespan (the batcher) running."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve.test") as c:
            yield c


def call(app, *requests):
    """Send the requests [(method, path, keyword arguments)] at once; their responses in order."""
    async def go():
        async with in_process(app) as client:
            return await asyncio.gather(*(client.request(m, p, **kw) for m, p, kw in requests))
    return asyncio.run(go())


def multipart(paths):
    return {"files": [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]}


def jpeg(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims width x height pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def expected(source, paths, **options):
    """transferkit predict's --json answer for the files, with the uploaded names as paths."""
    return [{**p.to_dict(), "path": Path(p.path).name}
            for p in predict(source, paths, notice=lambda _: None, **options)]


def test_answers_are_predicts_for_files_and_raw_bodies(tuned, files):
    app = app_for(tuned, top_k=2)
    several, raw, top3 = call(app, ("POST", "/predict", multipart(files[:7])),
                              ("POST", "/predict", {"content": files[9].read_bytes()}),
                              ("POST", "/predict?top_k=3", multipart(files[:1])))
    assert several.status_code == 200 and several.json() == expected(tuned, files[:7], top_k=2, engine="pytorch")
    assert raw.json() == [{**expected(tuned, files[9:10], top_k=2, engine="pytorch")[0], "path": "body"}]
    assert top3.json() == expected(tuned, files[:1], top_k=3, engine="pytorch")


def test_onnx_runtime_on_the_fly_and_an_exported_file_answer_as_predict(tuned, files, tmp_path):
    config = ServeConfig()
    assert serve_engine(tuned, config) == "onnxruntime"  # auto: the export extra is installed here
    app = create_app(load_served(tuned, config, notice=lambda _: None))  # exports into RUN_DIR/cache once
    (answer,) = call(app, ("POST", "/predict", multipart(files[:5])))
    assert answer.json() == expected(tuned, files[:5], engine="onnxruntime")
    onnx_file = shutil.copy(tuned / "cache" / "model.onnx", tmp_path / "model.onnx")  # an exported file
    app = create_app(load_served(onnx_file, config, notice=lambda _: None))
    (answer, metadata) = call(app, ("POST", "/predict", multipart(files[:5])), ("GET", "/metadata", {}))
    assert answer.json() == expected(onnx_file, files[:5])
    assert metadata.json()["engine"] == "onnxruntime" and metadata.json()["class_names"] == ["blue", "green", "red"]


def test_batching_runs_concurrent_requests_together_with_the_same_answers(tuned, files):
    # fp32: in bf16 an image's probabilities move by about 1e-3 with the batch it is in (in predict too)
    app = app_for(tuned, max_batch=16, max_wait_ms=300, precision="fp32")

    async def go():
        async with in_process(app) as client:
            answers = await asyncio.gather(*(client.post("/predict", **multipart([f])) for f in files[:8]))
            return answers, (await client.get("/health")).json()

    answers, health = asyncio.run(go())
    assert health["images"] == 8 and health["batches"] < 4  # 8 requests, in one or two batches
    for answer, want in zip(answers, expected(tuned, files[:8], engine="pytorch", precision="fp32"), strict=True):
        (got,) = answer.json()
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
        assert np.allclose([p["probability"] for p in got["predictions"]],
                           [p["probability"] for p in want["predictions"]], atol=1e-5)


def test_metadata_health_page_and_openapi(tuned):
    metadata, health, page, spec, missing = call(app_for(tuned), ("GET", "/metadata", {}), ("GET", "/health", {}),
                                                 ("GET", "/", {}), ("GET", "/openapi.json", {}),
                                                 ("GET", "/nowhere", {}))
    meta = metadata.json()
    assert meta["class_names"] == ["blue", "green", "red"] and meta["input"]["shape"] == ["batch", 32, 32, 3]
    assert meta["preprocessing"]["crop"] == 32 and meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["run"]["experiment"] == "finetune" and meta["run"]["backbone"] == "resnet18"
    assert meta["run"]["validation"]["phase"] == "frozen" and 0 <= meta["run"]["validation"]["accuracy"] <= 1
    assert "calibration" in meta["run"] and meta["engine"] == "pytorch" and meta["limits"]["max_images"] == 32
    assert health.json()["status"] == "ok"
    assert page.status_code == 200 and "<input id=\"file\"" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http://", "").lower().split("<script>")[0]  # no external styles/fonts
    assert "/predict" in spec.json()["paths"] and "multipart/form-data" in str(spec.json()["paths"]["/predict"])
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_every_limit_is_its_status_and_one_line_of_json(tuned, files):
    small = {"max_body_mb": 0.05, "max_images": 3, "max_pixels": 1_000_000}
    cases = {
        "body": ("POST", "/predict", {"content": b"\xff" * 60_000}),
        "count": ("POST", "/predict", multipart(files[:4])),
        "pixels": ("POST", "/predict", {"content": png_claiming(2000, 1000)}),
        "bomb": ("POST", "/predict", {"files": [("file", ("bomb.png", png_claiming(100_000, 100_000)))]}),
        "not_image": ("POST", "/predict", {"files": [("file", ("notes.txt", b"hello, not a picture"))]}),
        "damaged": ("POST", "/predict", {"content": files[0].read_bytes()[:-400]}),
        "empty": ("POST", "/predict", {"content": b""}),
        "no_files": ("POST", "/predict", {"data": {"note": "x"}, "files": {}}),
        "bad_form": ("POST", "/predict", {"content": b"--x\r\nbroken", "headers": {
            "content-type": "multipart/form-data; boundary=zz"}}),
        "top_k": ("POST", "/predict?top_k=zero", {"content": jpeg()}),
        "method": ("GET", "/predict", {}),
    }
    answers = dict(zip(cases, call(app_for(tuned, **small), *cases.values()), strict=True))
    status = {name: a.status_code for name, a in answers.items()}
    assert status == {"body": 413, "count": 413, "pixels": 413, "bomb": 413, "not_image": 422, "damaged": 422,
                      "empty": 422, "no_files": 422, "bad_form": 422, "top_k": 422, "method": 405}
    for name, answer in answers.items():
        body = answer.json()
        assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"], name
    assert "--max-body-mb" in answers["body"].json()["error"]
    assert "--max-images 3" in answers["count"].json()["error"]
    assert "2000 x 1000 px" in answers["pixels"].json()["error"] and "--max-pixels" in answers["pixels"].json()["error"]
    assert answers["bomb"].json()["error"].startswith("bomb.png: Image size (10000000000 pixels) exceeds limit")
    assert answers["not_image"].json()["error"].startswith("notes.txt: not an image")
    assert answers["damaged"].json()["error"].startswith("body: a damaged image")


def test_a_streamed_body_past_the_limit_is_413(tuned):
    async def chunks():
        for _ in range(10):
            yield b"\0" * 10_000  # no Content-Length: the limit is counted as the body arrives

    (answer,) = call(app_for(tuned, max_body_mb=0.05), ("POST", "/predict", {"content": chunks()}))
    assert answer.status_code == 413 and "more than" in answer.json()["error"]


def test_a_full_queue_and_too_many_requests_are_503_with_retry_after(tuned, files):
    async def go(app, first, second):
        async with in_process(app) as client:
            waiting = asyncio.create_task(client.post("/predict", **first))
            await asyncio.sleep(0.3)  # the first request's images wait in the queue for the batch to fill
            refused = await client.post("/predict", **second)
            return await waiting, refused

    app = app_for(tuned, max_queue=4, max_images=4, max_batch=16, max_wait_ms=1000)
    served, refused = asyncio.run(go(app, multipart(files[:3]), multipart(files[3:5])))
    assert served.status_code == 200 and len(served.json()) == 3
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "--max-queue 4" in refused.json()["error"]
    app = app_for(tuned, max_concurrent=1, max_batch=16, max_wait_ms=1000)
    served, refused = asyncio.run(go(app, multipart(files[:1]), multipart(files[1:2])))
    assert served.status_code == 200 and refused.status_code == 503 and "--max-concurrent 1" in refused.json()["error"]


def test_a_request_past_its_timeout_is_503_and_leaves_the_queue(tuned, files):
    async def go(app):
        async with in_process(app) as client:
            late = await client.post("/predict", **multipart(files[:2]))
            return late, (await client.get("/health")).json()

    late, health = asyncio.run(go(app_for(tuned, timeout_s=0.2, max_batch=16, max_wait_ms=2000)))
    assert late.status_code == 503 and "--timeout 0.2 s" in late.json()["error"] and late.headers["retry-after"]
    assert health["queued_images"] == 0 and health["requests_in_flight"] == 0


def test_a_slow_upload_is_cut_off_at_the_timeout(tuned):
    """A client that announces a body and sends it slowly (or never) holds no slot past --timeout."""
    import socket

    with running(app_for(tuned, timeout_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b"\xff" * 100)
            started, answer = time.monotonic(), b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 503") and b"--timeout 0.5 s" in answer


def test_each_request_is_one_log_line(tuned, files, caplog):
    with caplog.at_level("INFO", logger="transferkit.serve"):
        call(app_for(tuned), ("POST", "/predict", multipart(files[:2])), ("POST", "/predict", {"content": b"x"}))
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "transferkit.serve")
    assert lines[0].startswith("POST /predict 200 2 images ") and lines[0].endswith(" ms")
    assert lines[1].startswith("POST /predict 422 1 images ")


def test_bad_options_and_sources_are_one_line(tuned, tmp_path):
    with pytest.raises(UserError, match="--max-images 40 is more than --max-queue 8"):
        ServeConfig(max_images=40, max_queue=8)
    with pytest.raises(UserError, match="--max-pixels must be between 1 and 89478485"):
        ServeConfig(max_pixels=10**9)
    with pytest.raises(UserError, match="no such run folder or file"):
        load_served(tmp_path / "missing", ServeConfig())
    with running(app_for(tuned)) as url:  # a port in use is refused before the model loads
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(SystemExit) as stop:
            main(["serve", str(tuned), "--port", str(port)])
        assert stop.value.code == 2


def test_a_loopback_server_survives_hostile_requests_mixed_in(tuned, files):
    """A short bounded load on a real loopback server (bench/serve.py measures the long one): 40 requests from
    8 clients, one in five hostile; every good one gets predict's class, the server is healthy after."""
    want = [p["predictions"][0]["class"] for p in expected(tuned, files, engine="pytorch")]
    hostile = [{"content": png_claiming(100_000, 100_000)}, {"content": b"not an image"},
               {"content": b"\0" * 300_000}, {"content": files[0].read_bytes()[:200]}]

    async def client(url, worker, out):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            for i in range(5):
                n = worker * 5 + i
                if n % 5 == 4:
                    out.append(("hostile", (await c.post("/predict", **hostile[n % 4])).status_code))
                else:
                    answer = await c.post("/predict", **multipart([files[n % len(files)]]))
                    out.append((n % len(files), answer.json()[0]["predictions"][0]["class"] if answer.status_code == 200
                                else answer.status_code))

    async def load(url):
        out = []
        await asyncio.gather(*(client(url, w, out) for w in range(8)))
        async with httpx.AsyncClient(base_url=url) as c:
            return out, (await c.get("/health")).json()

    with running(app_for(tuned, max_body_mb=0.25, max_wait_ms=20)) as url:
        assert url.startswith("http://127.0.0.1:")
        out, health = asyncio.run(load(url))
    good = [(i, got) for i, got in out if i != "hostile"]
    assert len(good) == 32 and all(got == want[i] for i, got in good)
    assert sorted({s for i, s in out if i == "hostile"}) == [413, 422]
    assert health["status"] == "ok" and health["queued_images"] == 0


def _start(tuned, *options):
    """`transferkit serve` in a process of its own on a free loopback port; (process, url, stderr lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(transferkit.__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(tuned), "--port", "0",
                                "--engine", "pytorch", *options], stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline, seen = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("serving "):
            return process, line.split(" on ")[-1].strip(), lines, seen
    process.kill()
    raise AssertionError(f"the server did not start: {''.join(seen)}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_answer_the_requests_in_flight_then_stop(tuned, files, stop):
    process, url, lines, seen = _start(tuned, "--max-wait-ms", "1500", "--max-batch", "64")
    try:
        answers: list = []

        def send(f):
            answers.append(httpx.post(f"{url}/predict", timeout=30, **multipart([f])))

        senders = [threading.Thread(target=send, args=(f,)) for f in files[:4]]
        for t in senders:
            t.start()
        time.sleep(0.6)  # the four wait in the batcher (1.5 s for the batch to fill)
        process.send_signal(stop)
        for t in senders:
            t.join(timeout=30)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.json()[0]["path"] for a in answers} == {f.name for f in files[:4]}
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert "loopback only" in text and f"{stop.name}: finishing the requests in flight" in text
    assert text.rstrip().endswith("stopped") and "Traceback" not in text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


@contextlib.contextmanager
def _chromium():
    """Headless Chromium through Selenium, as the report's browser test drives it (tests/reporting)."""
    def missing(what):
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run should have installed it")
        pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver; pip install '.[test]')")

    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        missing("chromium / chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_classifies_an_upload_in_chromium(tuned, files, tmp_path):
    with _chromium() as driver, running(app_for(tuned)) as url:
        driver.get(url + "/")
        driver.find_element("css selector", "#file").send_keys(str(files[5]))
        deadline = time.monotonic() + 30
        while not driver.find_element("css selector", "#top-class").text and time.monotonic() < deadline:
            time.sleep(0.1)
        shown = driver.find_element("css selector", "#top-class").text
        rows = driver.find_elements("css selector", "#result tbody tr")
        model = driver.find_element("css selector", "#model").text
        driver.save_screenshot(str(tmp_path / "serve-page.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert shown == expected(tuned, [files[5]], engine="pytorch")[0]["predictions"][0]["class"]
    assert len(rows) == 3 and "3 classes" in model and "validation accuracy" in model
    assert errors == [] and all(r.startswith(url) for r in resources)


def test_without_the_extra_the_command_names_the_pip_line(tuned, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(SystemExit) as stop:
        main(["serve", str(tuned), "--port", "0"])
    assert stop.value.code == 2
    assert 'needs the optional package uvicorn, which is not installed: pip install "transferkit[serve]"' in \
        capsys.readouterr().err
