"""Dynamic micro-batching: concurrent requests are coalesced into one encode call.

Requests queue up; a single worker takes the first one and whatever else is queued, waits
at most ``max_wait`` for more (up to ``max_batch`` texts), runs the encode in a worker
thread so the event loop stays free, and routes each slice of the result back to its
caller. While one encode runs, new requests accumulate, so batches grow with load. The
worker lingers for more only after a batch of several callers: a lone caller (the usual
question embedding) is not made to wait for company that is not coming, while callers
of a large batch, answered together, are gathered again into one batch. Each caller
waits in an ``embedding.batch`` span that records the size and encode time of the batch
it joined. No grpc here.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import trace
from prometheus_client import Counter, Histogram

from ragmesh.kit.domain import Matrix
from ragmesh.kit.errors import Overloaded
from ragmesh.kit.tracing import tracer

K = TypeVar("K")
EncodeFn = Callable[[Sequence[str], K], Matrix]


BATCH_TEXTS = Histogram(
    "ragmesh_embedding_batch_texts",
    "Texts per encode call (the micro-batch size).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ENCODE_SECONDS = Histogram(
    "ragmesh_embedding_encode_seconds",
    "Time of one encode call, in seconds.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TEXTS = Counter("ragmesh_embedding_texts_total", "Texts embedded (rate: texts per second).")


@dataclass
class _Pending(Generic[K]):
    texts: Sequence[str]
    key: K
    future: asyncio.Future[Matrix] = field(repr=False)
    span: trace.Span = field(default=trace.INVALID_SPAN, repr=False)


@dataclass
class BatchStats:
    """Counters for tests and metrics."""

    batches: int = 0
    texts: int = 0
    largest: int = 0


class MicroBatcher(Generic[K]):
    """Coalesces concurrent ``embed`` calls that share a key (e.g. purpose) into one encode."""

    def __init__(
        self, encode: EncodeFn[K], *, max_batch: int, max_wait_s: float, max_queued: int
    ) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._queue: asyncio.Queue[_Pending[K]] = asyncio.Queue()
        self._queued_texts = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._worker: asyncio.Task[None] | None = None
        self._linger = False  # the last batch had several callers
        self.stats = BatchStats()

    async def embed(self, texts: Sequence[str], key: K) -> Matrix:
        """Embed ``texts``; raises Overloaded when too many texts are already waiting."""
        if self._queued_texts + len(texts) > self.max_queued:
            raise Overloaded(f"embedding queue full: {self._queued_texts} texts waiting")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            # a context of its own: the worker serves every caller, not the first one
            self._worker = loop.create_task(self._run(), context=contextvars.Context())
        future: asyncio.Future[Matrix] = loop.create_future()
        self._queued_texts += len(texts)
        with tracer.start_as_current_span("embedding.batch") as span:
            span.set_attribute("ragmesh.embedding.texts", len(texts))
            await self._queue.put(_Pending(texts, key, future, span))
            return await future

    def healthy(self) -> bool:
        """False once the worker task ended on its own (it only ends when closed)."""
        return self._worker is None or not self._worker.done()

    async def close(self) -> None:
        """Stop the worker and fail whatever is still queued."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(Overloaded("embedding service shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> list[_Pending[K]]:
        first = await self._queue.get()
        batch = [first]
        size = len(first.texts)
        deadline = time.monotonic() + (self.max_wait_s if self._linger else 0.0)
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._linger = len(batch) > 1
            self._queued_texts -= sum(len(p.texts) for p in batch)
            live = [p for p in batch if not p.future.done()]  # callers that gave up are dropped
            for key in dict.fromkeys(p.key for p in live):
                group = [p for p in live if p.key == key]
                texts = [t for p in group for t in p.texts]
                started = time.perf_counter()
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode, texts, key)
                except Exception as e:  # the encode failed: every caller in the group sees it
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                seconds = time.perf_counter() - started
                ENCODE_SECONDS.observe(seconds)
                BATCH_TEXTS.observe(len(texts))
                for p in group:  # each caller's span tells what its texts rode in
                    p.span.set_attribute("ragmesh.embedding.batch_texts", len(texts))
                    p.span.set_attribute("ragmesh.embedding.encode_ms", round(seconds * 1000, 3))
                TEXTS.inc(len(texts))
                self.stats.batches += 1
                self.stats.texts += len(texts)
                self.stats.largest = max(self.stats.largest, len(texts))
                offset = 0
                for p in group:
                    n = len(p.texts)
                    if not p.future.done():
                        p.future.set_result(vectors[offset : offset + n])
                    offset += n
