"""Dynamic batching: images that arrive together, from any number of requests, go through the model as one
batch (at most `max_batch` images, the first of them waiting at most `max_wait_s` for the batch to fill).

A CNN on a CPU or GPU classifies many images in one pass for little more than the cost of one, so under load
a batcher answers more requests per second than a forward pass per request. The queue is bounded in images
(`max_queue`): what does not fit is refused at once (the caller answers 503), so memory stays bounded whatever
the load. The model runs off the event loop, in `parallel` threads of its own: with 2 or more, the next batch
fills and runs while one is in the model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The queue cannot take a request's images now; `queued` images are waiting."""

    def __init__(self, queued: int, asked: int, limit: int):
        super().__init__(f"{queued} images are waiting for the model and {asked} more would pass --max-queue {limit}")
        self.queued, self.asked, self.limit = queued, asked, limit


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    since: float


class Batcher:
    """Batches of items (decoded images) for `run`, which takes a list of them and returns one result per item,
    in order. Use inside a running event loop: `start()`, `submit()` from request handlers, `close()`."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch: int, max_wait_s: float, max_queue: int,
                 parallel: int = 1):
        self._run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.parallel = parallel
        self._running: set[asyncio.Task] = set()
        self._waiting: deque[_Waiting] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._model = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="transferkit-model")
        self.batches = 0  # batches run so far, and the images in them (for /health)
        self.images = 0

    @property
    def queued(self) -> int:
        """Images waiting for the model (not those whose request gave up, which leave at the next batch)."""
        return sum(1 for w in self._waiting if not w.future.done())

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="transferkit-batcher")

    async def close(self) -> None:
        """Finish what is queued, then stop (the model's thread too)."""
        while (self._waiting or self._running) and self._task is not None and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for waiting in self._waiting:  # only when the batcher's task died
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("the server stopped before the model ran"))
        self._model.shutdown(wait=True)

    def submit(self, items: list[Any]) -> list[asyncio.Future]:
        """Queue a request's items together, or raise QueueFull without queuing any."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        queued = self.queued
        if queued + len(items) > self.max_queue:
            raise QueueFull(queued, len(items), self.max_queue)
        loop, now = asyncio.get_running_loop(), time.monotonic()
        futures = [loop.create_future() for _ in items]
        self._waiting.extend(_Waiting(item, future, now) for item, future in zip(items, futures, strict=True))
        self._wake.set()
        return futures

    async def _serve(self) -> None:
        free = asyncio.Semaphore(self.parallel)
        while True:
            await free.acquire()  # a model thread is free: the next batch forms now, while others run
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._forward(batch))
            self._running.add(task)
            task.add_done_callback(lambda t: (self._running.discard(t), free.release()))

    async def _forward(self, batch: list[_Waiting]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._model, self._run, [w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the model gave {len(results)} results for {len(batch)} images")
        except Exception as e:  # noqa: BLE001 - each waiting request answers for itself; the batcher goes on
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
            return
        self.batches, self.images = self.batches + 1, self.images + len(batch)
        for w, result in zip(batch, results, strict=True):
            if not w.future.done():  # a request that timed out has cancelled its futures
                w.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        """Up to max_batch waiting items, once the batch is full or its first item has waited max_wait_s."""
        while True:
            self._drop_cancelled()
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            left = self._waiting[0].since + self.max_wait_s - time.monotonic()
            if len(self._waiting) >= self.max_batch or left <= 0:
                return [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    def _drop_cancelled(self) -> None:
        """Items whose request gave up (its timeout) leave the queue before they cost a forward pass."""
        if any(w.future.done() for w in self._waiting):
            self._waiting = deque(w for w in self._waiting if not w.future.done())
