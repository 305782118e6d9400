"""Dynamic batching: texts of concurrent requests are merged into forward passes under a token budget.

Requests (already tokenized) are split into one item per text and put on a queue. One worker thread
takes whatever is queued (waiting at most `max_wait_ms` for more once it has something), sorts the
items by length so that each forward pass pads little, cuts them into batches of at most
`max_batch_size` texts and `max_batch_tokens` padded tokens — starting a new batch rather than let
padding exceed `max_padding` of the real tokens (padding is pure waste: a batch of one 250-token text
and seven 12-token texts costs as much as eight 250-token texts) — runs the backend and scatters each row
back to its request's slot. A request's future resolves, on its own event loop, when its last row is
in: callers get their rows in their input order however the texts were grouped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("eft.serving.batcher")


class Overloaded(Exception):
    """More texts queued than the server accepts; the client should retry later."""


class Closed(Exception):
    """The batcher is shutting down."""


class _Request:
    __slots__ = ("future", "loop", "out", "remaining", "failed")

    def __init__(self, future: asyncio.Future, loop: asyncio.AbstractEventLoop, n: int, dim: int):
        self.future = future
        self.loop = loop
        self.out = np.empty((n, dim), dtype=np.float32)
        self.remaining = n
        self.failed = False


_STOP = object()


def _resolve(req: _Request) -> None:
    if not req.future.done():
        req.future.set_result(req.out)


def _fail(req: _Request, exc: BaseException) -> None:
    if not req.future.done():
        req.future.set_exception(exc)


class DynamicBatcher:
    def __init__(self, backend: Any, max_batch_tokens: int = 16384, max_batch_size: int = 64,
                 max_wait_ms: float = 2.0, max_queue: int = 8192, metrics: Any = None, max_padding: float = 0.25):
        self.backend = backend
        self.dim = int(backend.info.dimension)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_queue = int(max_queue)
        self.max_padding = max(0.0, float(max_padding))
        self.metrics = metrics
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ caller side (event loop)
    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="eft-batcher", daemon=True)
            self._thread.start()

    async def embed(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings for already-tokenized texts, rows in input order."""
        n = len(ids)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            # One request bigger than the queue limit is still served when the queue is empty.
            if self._pending and self._pending + n > self.max_queue:
                raise Overloaded(f"{self._pending} texts are queued (limit {self.max_queue})")
            self._pending += n
            req = _Request(loop.create_future(), loop, n, self.dim)
            for i, row in enumerate(ids):
                self._q.put((req, i, row))
        self._gauge()
        return await req.future

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop taking work, finish everything queued, then end the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending)

    def _done(self, n: int) -> None:
        with self._lock:
            self._pending -= n
        self._gauge()

    def _run(self) -> None:
        collect_items = 4 * self.max_batch_size
        collect_tokens = 4 * self.max_batch_tokens
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            items = [first]
            tokens = len(first[2])
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(items) < collect_items and tokens < collect_tokens:
                try:
                    it = self._q.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        it = self._q.get(timeout=left)
                    except queue.Empty:
                        break
                if it is _STOP:
                    stop = True
                    break
                items.append(it)
                tokens += len(it[2])
            try:
                self._process(items)
            except BaseException:  # pragma: no cover - _process reports errors to the callers itself
                log.exception("batcher worker error")
            if stop:
                return

    def _process(self, items: list[tuple[_Request, int, Sequence[int]]]) -> None:
        live = [it for it in items if not (it[0].failed or it[0].future.done())]
        if len(live) < len(items):
            self._done(len(items) - len(live))
        live.sort(key=lambda it: len(it[2]))
        batch: list[tuple[_Request, int, Sequence[int]]] = []
        real = 0
        for it in live:
            width = len(it[2])  # ascending: the newcomer is the longest, the batch's padded width
            padded = (len(batch) + 1) * width
            if batch and (padded > self.max_batch_tokens or len(batch) >= self.max_batch_size
                          or padded > (1.0 + self.max_padding) * (real + width)):
                self._forward(batch)
                batch, real = [], 0
            batch.append(it)
            real += width
        if batch:
            self._forward(batch)

    def _forward(self, batch: list[tuple[_Request, int, Sequence[int]]]) -> None:
        keep = [it for it in batch if not it[0].failed]
        if len(keep) < len(batch):
            self._done(len(batch) - len(keep))
        batch = keep
        if not batch:
            return
        rows = [it[2] for it in batch]
        t0 = time.perf_counter()
        try:
            emb = self.backend.embed(rows)
        except Exception as exc:  # the backend's failure goes to every caller of this batch
            log.exception("inference failed for a batch of %d texts", len(rows))
            for req in {id(it[0]): it[0] for it in batch}.values():
                req.failed = True
                req.loop.call_soon_threadsafe(_fail, req, exc)
            self._done(len(batch))
            return
        seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.observe_batch(len(rows), sum(len(r) for r in rows), len(rows) * max(len(r) for r in rows),
                                       seconds)
        for k, (req, i, _) in enumerate(batch):
            req.out[i] = emb[k]
            req.remaining -= 1
            if req.remaining == 0:
                req.loop.call_soon_threadsafe(_resolve, req)
        self._done(len(batch))
