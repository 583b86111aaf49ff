"""The retrieval service layer: the chunk store (the index engine) behind worker threads.

Two stores keep the same contract. The embedded FAISS store (:mod:`ragmesh.retrieval.store`)
is not safe for concurrent writes and reads, so every operation runs under one lock, on one
dedicated thread (searches still use FAISS's own OpenMP threads): the event loop stays free
to accept calls meanwhile. A search expected to take less than the hop to that thread and
back (HNSW, IVF, small flat indexes: a fraction of a millisecond) runs on the event loop
instead, when no write holds the lock. FAISS replicas share one index directory: the writer
owns the log and snapshots, readers follow them (and refuse writes). The Milvus store
(:mod:`ragmesh.retrieval.milvus`) is a client of a Milvus server: its calls run in parallel
on a few threads, and every replica writes. No grpc here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from ragmesh.kit import callcontext
from ragmesh.kit.config import RetrievalSettings
from ragmesh.kit.domain import Hit, Matrix
from ragmesh.kit.errors import (
    Fenced,
    IndexBehind,
    ModelMismatch,
    NotReady,
    ReadOnlyReplica,
    quoted,
)
from ragmesh.kit.tracing import tracer
from ragmesh.retrieval import lease, requests
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.lexical import Fusion
from ragmesh.retrieval.milvus import MilvusStore
from ragmesh.retrieval.store import ChunkIn, ChunkStore

T = TypeVar("T")
log = logging.getLogger(__name__)

INLINE_SEARCH_S = 0.0005  # searches expected to be shorter run on the event loop
CLIENT_THREADS = 8  # a store whose calls may run in parallel (Milvus) gets this many


SEARCH_SECONDS = Histogram(
    "ragmesh_retrieval_search_seconds",
    "Time of one (batched) index search, in seconds.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
RESULTS = Histogram(
    "ragmesh_retrieval_results",
    "Hits returned per query vector.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100),
)
INDEX_CHUNKS = Gauge("ragmesh_retrieval_index_chunks", "Chunks in the index.")
INDEX_VERSION = Gauge("ragmesh_retrieval_index_version", "Index version (writes applied).")
CAUGHT_UP = Counter(
    "ragmesh_retrieval_catch_ups_total",
    "Searches with a min_index_version this replica had not applied yet, served after it did.",
)
BEHIND = Counter(
    "ragmesh_retrieval_behind_total",
    "Searches refused (UNAVAILABLE): the replica did not reach their min_index_version in time.",
)
CATCH_UP_POLL_S = 0.01  # how often a waiting Search looks at the log again
SNAPSHOT_SWITCH_S = 0.0005  # the GIL switch interval while a snapshot is written
# a snapshot goes on at normal priority once a write has waited SNAPSHOT_HURRY_S for it, or
# after SNAPSHOT_IDLE_S at idle priority (a core never idle must not starve it)
SNAPSHOT_HURRY_S = 2.0
SNAPSHOT_IDLE_S = 30.0
CATCH_UP_MARGIN_S = 0.1  # the refusal's time to reach a caller before its deadline


@dataclass(frozen=True)
class IndexInfo:
    """What GetIndexInfo reports."""

    count: int
    dimension: int
    kind: str
    device: str
    version: int
    model: str


class Store(Protocol):
    """What the service needs of a chunk store (FAISS's or Milvus's)."""

    follows_log: bool  # a reader catches up by applying the writer's log
    concurrent: bool  # calls may run in parallel
    params: IndexParams
    dim: int
    version: int
    model: str  # the embedding model the index records ("": none yet)

    @property
    def count(self) -> int: ...
    @property
    def device(self) -> str: ...
    def counted(self) -> int: ...
    def open(self, writable: bool = True) -> None: ...
    def refresh(self) -> int: ...
    def close(self) -> None: ...
    def check(self, chunks: Sequence[ChunkIn]) -> None: ...
    def record_model(self, model: str) -> None: ...
    def refresh_model(self) -> None: ...
    def upsert(self, tenant: str, chunks: Sequence[ChunkIn], vectors: Matrix) -> int: ...
    def delete(self, tenant: str, chunk_ids: Sequence[str], document_ids: Sequence[str]) -> int: ...
    def search(
        self,
        tenant: str,
        queries: Matrix,
        top_k: int,
        where: Mapping[str, str],
        min_version: int = 0,
        texts: Sequence[str] = (),
    ) -> list[list[Hit]]: ...


def index_params(settings: RetrievalSettings) -> IndexParams:
    return IndexParams(
        kind=settings.kind,
        dim=settings.dim,
        device=settings.device,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_search=settings.hnsw_ef_search,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
    )


def fusion(settings: RetrievalSettings) -> Fusion:
    return Fusion(settings.dense_weight, settings.lexical_weight, settings.hybrid_candidates)


def faiss_store(settings: RetrievalSettings) -> ChunkStore:
    """The embedded FAISS store the settings describe (not opened)."""
    return ChunkStore(
        settings.index_dir, index_params(settings), settings.snapshot_every, fusion(settings)
    )


def store_for(settings: RetrievalSettings) -> Store:
    """The chunk store the settings describe (not opened)."""
    if settings.backend == "milvus":
        return MilvusStore(
            settings.milvus_uri,
            settings.milvus_token,
            settings.milvus_collection,
            index_params(settings),
            settings.milvus_consistency,
            fusion(settings),
        )
    return faiss_store(settings)


def _idle_priority() -> None:
    """Run the calling thread only when nothing else wants its core (Linux SCHED_IDLE: a
    search that wakes preempts it at once); where that cannot be had, as it is."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as e:
        log.info("the snapshot thread keeps its priority: %s", e)


def _advance(steps: Iterator[None], stop: threading.Event | None) -> bool:
    """Advance ``steps`` to their end (True) or until ``stop`` is set (False), the
    interpreter handing the GIL over every 0.5 ms instead of 5 meanwhile: a search that
    needs it beside a snapshot waits that much at most."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SNAPSHOT_SWITCH_S)
    try:
        for _ in steps:
            if stop is not None and stop.is_set():
                return False
        return True
    finally:
        sys.setswitchinterval(previous)


class RetrievalService:
    """Async front of a :class:`ChunkStore`."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.store = store_for(settings)
        self.limits = requests.Limits(
            max_top_k=settings.max_top_k,
            max_queries=settings.max_queries,
            max_chunks=settings.max_chunks,
            max_chunk_chars=settings.max_chunk_chars,
        )
        self.backend = settings.backend
        workers = CLIENT_THREADS if self.store.concurrent else 1
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="index")
        self._serial = not self.store.concurrent  # one call at a time, under the lock
        self._lock = threading.Lock()
        # writes pass one at a time, and not while a snapshot is written (on its own thread,
        # beside searches: it only reads the index)
        self._writes = asyncio.Lock()
        # snapshots are written at idle priority, finished at normal priority when hurried
        self._idle = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="snapshot-idle", initializer=_idle_priority
        )
        self._snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._hurry = threading.Event()
        self._snapshot: asyncio.Future[None] | None = None
        if isinstance(self.store, ChunkStore):
            self.store.deferred_snapshots = True
        self._per_query_s = 0.0  # running mean of one query's search time
        self._open = False
        self.writable = settings.role == "writer"
        # several writer candidates on one FAISS directory: the lease holder writes
        self._faiss_store = self.store if isinstance(self.store, ChunkStore) else None
        self._candidate: lease.Candidate | None = None
        if self.writable and self._faiss_store is not None and settings.lease_seconds:
            self._candidate = lease.Candidate(
                self._faiss_store,
                settings.lease_seconds,
                self._run,
                self._became_writer,
                self._step_down,
            )
            self.writable = False  # until it holds the lease
        self._refresh_s = settings.refresh_ms / 1000
        self._catch_up_s = settings.catch_up_seconds
        self._follower: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            if not self._serial:
                return fn()
            with self._lock:
                return fn()

        # the call's context (its deadline) travels to the thread
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, locked)

    async def _write(self, fn: Callable[[], T]) -> T:
        """A write on the index thread; then, when one is due, a snapshot on its own thread
        that later writes wait for and searches do not."""
        hurry = None
        if self._snapshot is not None and not self._snapshot.done():
            hurry = asyncio.get_running_loop().call_later(SNAPSHOT_HURRY_S, self._hurry.set)
        # (set while this write runs, it is cleared before the next snapshot starts)
        try:
            async with self._writes:
                result = await self._run(fn)
                store, pending = self._faiss_store, self._snapshot
                if store is not None and store.snapshot_due and (pending is None or pending.done()):
                    self._snapshot = asyncio.ensure_future(self._write_snapshot())
        finally:
            if hurry is not None:
                hurry.cancel()
        return result

    async def _write_snapshot(self) -> None:
        store = self._faiss_store
        assert store is not None
        async with self._writes:
            if not store.snapshot_due:  # no more (a reopen may have come first)
                return
            loop = asyncio.get_running_loop()
            steps = store.try_snapshot_steps()
            self._hurry.clear()
            idle_for = loop.call_later(SNAPSHOT_IDLE_S, self._hurry.set)
            try:
                if not await loop.run_in_executor(self._idle, _advance, steps, self._hurry):
                    log.info("snapshot hurried: finishing it at normal priority")
                    await loop.run_in_executor(self._snapshots, _advance, steps, None)
            finally:
                idle_for.cancel()

    async def _run_search(self, fn: Callable[[], T], count: int) -> T:
        """Run a search inline when it should be quicker than a thread hop (by the running
        mean of one query's search time), else on the index thread."""
        if (
            self._serial
            and self._per_query_s * count < INLINE_SEARCH_S
            and self._lock.acquire(blocking=False)
        ):
            try:
                return fn()
            finally:
                self._lock.release()
        return await self._run(fn)

    async def open(self) -> None:
        """Load the snapshot and replay the log."""
        await self._run(lambda: self.store.open(self.writable))
        self._open = True
        # Read at scrape time: readers follow the writer's log without a write of their own.
        INDEX_CHUNKS.set_function(lambda: self.store.count)
        INDEX_VERSION.set_function(lambda: self.store.version)
        # readers follow the log; the writer, the generation (reindex.py); Milvus, its count
        self._follower = asyncio.create_task(self._follow())
        if self._candidate is not None:
            await self._candidate.start()

    def _became_writer(self) -> None:
        self.writable = True

    async def _follow_generation(self) -> None:
        """Writer: a reindex switched the index directory to another generation: serve it."""
        store = self._faiss_store
        if store is not None and store.switched():
            async with self._writes:  # not under a snapshot being written
                await self._run(lambda: store.reopen(writable=True))
            log.warning("serving the index generation %s", store.dir.resolve().name)

    def _fenced(self, e: Fenced) -> None:
        """A write refused by the fence: a reindex switched generations (the next refresh
        serves the new one), or another writer took the lease (this one stops)."""
        store = self._faiss_store
        if self._candidate is not None or store is None or not store.switched():
            self._step_down(str(e))

    def _step_down(self, why: str) -> None:
        """A writer taken over from stops; it restarts as a candidate."""
        if not self.writable:
            return
        self.writable = False
        log.error("no longer the index writer: %s; stopping", why)
        os.kill(os.getpid(), signal.SIGTERM)

    async def _follow(self) -> None:
        """FAISS reader: apply the writer's log every refresh interval (Milvus: count the
        collection for the gauge now and then)."""
        while True:
            await asyncio.sleep(self._refresh_s)
            if self.writable and self.store.follows_log:
                await self._follow_generation()
                continue  # the writer writes the log itself
            try:
                await self._run(self.store.refresh)
            except Exception:  # a torn read is retried on the next tick
                log.exception("index refresh failed")

    async def health(self) -> bool:
        """The index is open and, on a reader, the log follower still runs."""
        follower_alive = self._follower is None or not self._follower.done()
        return self._open and follower_alive

    async def close(self) -> None:
        if self._candidate is not None:
            await self._candidate.stop()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        if self._snapshot is not None:
            self._hurry.set()
            await self._snapshot  # a snapshot being written is finished (now), not torn
        if self._open:
            self._open = False
            await self._run(self.store.close)
        self._executor.shutdown(wait=True)
        self._snapshots.shutdown(wait=True)
        self._idle.shutdown(wait=True)

    def _check(self) -> None:
        if not self._open:
            raise NotReady("index not loaded")

    def _check_writable(self) -> None:
        self._check()
        if not self.writable:
            raise ReadOnlyReplica("this retrieval replica is a reader; writes go to the writer")

    async def _check_model_known(self, model: str) -> None:
        """Check ``model`` against the index's, first reading the model another process may
        have recorded while none is known here (a FAISS reader, any Milvus replica; the FAISS
        writer records it itself)."""
        requests.model(model)
        if model and not self.store.model and not (self.writable and self.store.follows_log):
            await self._run(self.store.refresh_model)
        self._check_model(model)

    def _check_model(self, model: str) -> None:
        """Vectors of ``model`` meet an index of its own model (or of none yet)."""
        have = self.store.model
        if model and have and model != have:
            raise ModelMismatch(
                f"embedding_model: the index holds vectors of {quoted(have)} (dimension "
                f"{self.store.dim}), these are of {quoted(model)}; serve the index's model, or "
                "reindex into a new index for the new one (docs/operations.md)"
            )

    async def upsert(
        self, tenant: str, chunks: Sequence[ChunkIn], model: str = ""
    ) -> tuple[int, int]:
        """Durably write ``tenant``'s ``chunks`` (vectors of embedding ``model``); returns
        (count, index version)."""
        self._check_writable()
        requests.tenant(tenant)
        vectors = requests.upsert(chunks, self.limits, self.store.dim)
        self.store.check(chunks)
        await self._check_model_known(model)

        def write() -> int:
            self._check_model(model)  # again, under the lock
            if model and not self.store.model:
                self.store.record_model(model)
            return self.store.upsert(tenant, chunks, vectors)

        try:
            n = await self._write(write)
        except Fenced as e:
            self._fenced(e)
            raise
        return n, self.store.version

    async def delete(
        self, tenant: str, chunk_ids: Sequence[str], document_ids: Sequence[str]
    ) -> tuple[int, int]:
        """Durably delete ``tenant``'s chunks; returns (deleted count, index version)."""
        self._check_writable()
        requests.tenant(tenant)
        requests.delete(chunk_ids, document_ids, self.limits)
        try:
            n = await self._write(lambda: self.store.delete(tenant, chunk_ids, document_ids))
        except Fenced as e:
            self._fenced(e)
            raise
        return n, self.store.version

    async def search(
        self,
        tenant: str,
        count: int,
        dimension: int,
        data: bytes,
        top_k: int,
        where: Mapping[str, str],
        min_version: int = 0,
        model: str = "",
        texts: Sequence[str] = (),
    ) -> tuple[list[list[Hit]], int]:
        """Validate and run a batched search of ``tenant``'s chunks (with query vectors of
        embedding ``model``, and their ``texts`` for the lexical half of hybrid search) on an
        index of at least ``min_version``; returns (hits per query, index version)."""
        self._check()
        requests.tenant(tenant)
        queries = requests.queries(count, dimension, data, top_k, self.limits, self.store.dim)
        requests.query_texts(texts, count, self.limits)
        await self._check_model_known(model)
        if self.store.follows_log and self.store.version < min_version:
            await self._catch_up(min_version)

        def work() -> tuple[list[list[Hit]], int]:
            started = time.perf_counter()
            hits = self.store.search(tenant, queries, top_k, where, min_version, texts)
            seconds = time.perf_counter() - started
            SEARCH_SECONDS.observe(seconds)
            self._per_query_s = 0.9 * self._per_query_s + 0.1 * seconds / count
            for found in hits:
                RESULTS.observe(len(found))
            return hits, max(self.store.version, min_version)

        with tracer.start_as_current_span(f"{self.backend}.search") as span:
            recording = span.is_recording()  # no attribute work when tracing is off
            if recording:
                span.set_attributes(
                    {
                        "ragmesh.search.queries": count,
                        "ragmesh.search.top_k": top_k,
                        "ragmesh.search.hybrid": bool(texts),
                        "ragmesh.index.kind": self.store.params.kind,
                        "ragmesh.index.device": self.store.device,
                    }
                )
            hits, version = await self._run_search(work, count)
            if recording:
                span.set_attribute("ragmesh.search.results", sum(len(h) for h in hits))
                span.set_attribute("ragmesh.index.version", version)
            return hits, version

    async def _catch_up(self, version: int) -> None:
        """Read your writes: apply the writer's log now (a reader), and again every few
        milliseconds, until the index has ``version``; past RAGMESH_SEARCH_CATCH_UP_SECONDS,
        IndexBehind (UNAVAILABLE: the caller's retry may reach a replica that has it)."""
        wait = self._catch_up_s
        caller = callcontext.current()
        left = caller.remaining() if caller is not None else None
        if left is not None:  # answer UNAVAILABLE while the caller still listens
            wait = min(wait, max(0.0, left - CATCH_UP_MARGIN_S))
        deadline = time.monotonic() + wait
        while True:
            if not self.writable:
                await self._run(self.store.refresh)
            if self.store.version >= version:
                CAUGHT_UP.inc()
                return
            if time.monotonic() >= deadline:
                BEHIND.inc()
                raise IndexBehind(
                    f"min_index_version: this replica has applied index version "
                    f"{self.store.version}, not yet {version}"
                )
            await asyncio.sleep(CATCH_UP_POLL_S)

    async def info(self) -> IndexInfo:
        self._check()
        s = self.store
        count = await self._run(s.counted)
        return IndexInfo(count, s.dim, s.params.kind, s.device, s.version, s.model)
