"""`transferkit serve`'s application: a loaded model behind HTTP (FastAPI).

Four steps, as LitServe and BentoML lay a served model out: set up (the model loaded once, through predict's
load_classifier), decode a request (off the event loop, in a thread per core, its limits checked first), predict
a batch (batching.Batcher: images of concurrent requests run together), encode the answer (predict --json's
fields). Every refusal is an HTTP status with one line of JSON, {"error": "..."}; nothing a client sends can
show it a traceback or stop the server.
"""


import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ServeConfig
from ..inference import Classifier, Prediction
from ..inference.predict import BATCH_PIXELS, batch_probabilities, top_classes
from .batching import Batcher, QueueFull
from .images import Refused, decode_request_image
from .page import PAGE, PAGE_POLICY

LOG = logging.getLogger("transferkit.serve")
RETRY_AFTER_S = 1  # what a refused client is told to wait: a batch takes milliseconds to tens of milliseconds


@dataclass
class Served:
    """A model ready to serve: the classifier, what /metadata says, and the options it runs with."""

    source: Path
    classifier: Classifier
    metadata: dict
    config: ServeConfig
    engine: str

    @property
    def max_batch(self) -> int:
        """--max-batch, within predict's pixel bound on a batch (32 images at 224 px)."""
        crop = self.classifier.crop
        return max(1, min(self.config.max_batch, BATCH_PIXELS // (crop[0] * crop[1])))


def create_app(served: Served):
    """The FastAPI application for a loaded model: GET /, POST /predict, GET /health, GET /metadata and
    /openapi.json."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    config, classifier = served.config, served.classifier
    state = {"in_flight": 0, "started": time.time()}
    live: dict = {}  # the batcher and the decoding threads of the server's life (each start makes its own)

    @asynccontextmanager
    async def lifespan(app):
        live["decoding"] = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="transferkit-decode")
        live["batcher"] = Batcher(lambda views: batch_probabilities(classifier, views, config.tta), served.max_batch,
                                  config.max_wait_ms / 1000, config.max_queue, config.parallel)
        live["batcher"].start()
        try:
            yield
        finally:  # the server has drained its requests (uvicorn waits for them) before this runs
            await live["batcher"].close()
            live["decoding"].shutdown(wait=True)

    # /docs and /redoc load Swagger's scripts from a CDN, which an offline machine cannot reach: the OpenAPI
    # description itself is served at /openapi.json.
    app = FastAPI(title="transferkit serve", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_RequestLog)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused):
        return error(e.status, str(e), e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):  # a bug: its traceback goes to the log, not the client
        LOG.exception("error while answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(e).__name__}); the server's log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health", summary="Whether the server is up, and its queue")
    async def health():
        batcher = live["batcher"]
        return {"status": "ok", "queued_images": batcher.queued, "requests_in_flight": state["in_flight"],
                "batches": batcher.batches, "images": batcher.images,
                "uptime_s": round(time.time() - state["started"], 3)}

    @app.get("/metadata", summary="The model: classes, input, preprocessing, the run it came from")
    async def metadata():
        limits = {k: getattr(config, k) for k in ("max_body_mb", "max_images", "max_pixels", "max_queue",
                                                  "max_concurrent", "timeout_s")}
        batching = {"max_batch": served.max_batch, "max_wait_ms": config.max_wait_ms, "parallel": config.parallel}
        return {**served.metadata, "tta": config.tta, "batching": batching, "limits": limits}

    @app.post("/predict", summary="Classify one or several images", openapi_extra=_PREDICT_BODY,
              responses={413: {"description": "a body, image count or image too large"},
                         422: {"description": "not an image, a damaged image, or a bad option"},
                         503: {"description": "the queue is full or the model did not answer in time; "
                                              "retry after Retry-After seconds"}})
    async def predict(request: Request, top_k: int | None = None) -> list[dict]:
        """Images as multipart/form-data files (any field names, several allowed) or one image as the raw
        body. Answers predict --json's list: {path, error, predictions: [{class, probability}]} per image."""
        k = config.top_k if top_k is None else top_k
        if k < 1:
            raise Refused(422, f"top_k must be at least 1, got {k}")
        if state["in_flight"] >= config.max_concurrent:
            raise Refused(503, f"{state['in_flight']} requests are in flight (--max-concurrent "
                               f"{config.max_concurrent}); retry later", {"Retry-After": str(RETRY_AFTER_S)})
        state["in_flight"] += 1
        try:
            return await asyncio.wait_for(_answer(request, k), timeout=config.timeout_s)
        except asyncio.TimeoutError:
            raise Refused(503, f"no answer within --timeout {config.timeout_s:g} s (the upload was too slow or the "
                               "server is overloaded); retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
        finally:
            state["in_flight"] -= 1

    async def _answer(request: Request, k: int) -> list[dict]:
        from .uploads import request_images

        images = await request_images(request, config.max_body_bytes, config.max_images)
        request.state.images = len(images)
        loop = asyncio.get_running_loop()
        views = await asyncio.gather(*(loop.run_in_executor(
            live["decoding"], decode_request_image, classifier, data, name, config.max_pixels, config.tta)
            for name, data in images))
        try:
            futures = live["batcher"].submit(list(views))
        except QueueFull as e:
            raise Refused(503, f"{e}; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
        try:
            probs = await asyncio.gather(*futures)
        except asyncio.CancelledError:  # the timeout: the images leave the queue unrun
            for f in futures:
                f.cancel()
            raise
        tops = top_classes(np.stack(probs), classifier.class_names, k)
        return [Prediction(name, top).to_dict() for (name, _), top in zip(images, tops, strict=True)]

    return app


class _RequestLog:
    """One log line per request: method, path, status, images, milliseconds (uvicorn's access log is off)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            images = (scope.get("state") or {}).get("images", 0)
            LOG.info("%s %s %d %d images %.1f ms", scope["method"], scope["path"], status[0], images,
                     (time.perf_counter() - started) * 1000)


_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
        "type": "string", "format": "binary"}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _version() -> str:
    from .. import __version__

    return __version__
