"""The ingest worker: queued document → chunks → Embed → Upsert → progress + ack. No grpc here.

Each document is its job's tenant's: its chunks are upserted into that tenant. A deletion
entry removes the tenant's chunks of one document.

At-least-once: an entry is acknowledged only after its chunks were upserted; entries a dead
worker left pending are claimed after ``claim_idle_ms``; chunk ids are stable, so work done
twice overwrites itself. A dependency outage leaves the entry pending and is retried with
backoff; a document that is invalid (or keeps killing workers) is counted failed.

No single entry can stop the worker: a malformed entry, or one whose processing raises
something unexpected, is failed with ``last_error`` and acknowledged (logged with its
traceback). An unexpected error outside one entry ends :meth:`IngestWorker.run` with that
error, so the host reports NOT_SERVING and Kubernetes restarts the pod.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePosixPath

from prometheus_client import Counter, Gauge

from ragmesh.ingest.parsers import Page, Unreadable, parse
from ragmesh.kit import tracing
from ragmesh.kit.config import IngestSettings
from ragmesh.kit.domain import ChunkRecord, Purpose
from ragmesh.kit.errors import InvalidArgument, ModelMismatch, RagmeshError
from ragmesh.kit.jobqueue import Entry, JobQueue
from ragmesh.kit.peers import Embedder, Retriever
from ragmesh.kit.text import TextChunk, chunk, chunk_id, in_context, summary

log = logging.getLogger(__name__)

DOCUMENTS = Counter("ragmesh_ingest_documents_total", "Documents processed.", ["outcome"])
CHUNKS = Counter("ragmesh_ingest_chunks_total", "Chunks upserted.")
DELETED = Counter("ragmesh_ingest_deleted_chunks_total", "Chunks removed by DeleteDocument.")
PENDING = Gauge(
    "ragmesh_ingest_queue_pending", "Stream entries delivered to a worker, not yet acknowledged."
)
LAG = Gauge("ragmesh_ingest_queue_lag", "Stream entries not yet delivered to any worker.")
RETRIES = Counter("ragmesh_ingest_retries_total", "Documents left pending after an outage.")


def _on_page(metadata: dict[str, str], page: str) -> dict[str, str]:
    return {**metadata, "page": page} if page else metadata


class IngestWorker:
    """One consumer in the ingest group."""

    def __init__(
        self,
        settings: IngestSettings,
        queue: JobQueue,
        embedder: Embedder,
        retriever: Retriever,
        consumer: str,
        block_ms: int = 1000,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.embedder = embedder
        self.retriever = retriever
        self.consumer = consumer
        self.block_ms = block_ms  # longest wait for a new entry (under the socket timeout)
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; outages back off and retry."""
        backoff = 0.2
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.queue.ensure_group()
                    self.ready.set()
                    log.info("ingest worker %s consuming %s", self.consumer, self.queue.stream)
                await self.step()
                backoff = 0.2
            except RagmeshError as e:
                RETRIES.inc()
                log.warning("ingest paused %.1fs: %s", backoff, e)
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

    async def step(self) -> int:
        """Process one batch: own pending entries first, then claimed ones, then new ones."""
        entries = await self.queue.read(self.consumer, 8, 0, pending=True)
        if not entries:
            entries = await self.queue.claim(self.consumer, self.settings.claim_idle_ms, 8)
        if not entries:
            entries = await self.queue.read(self.consumer, 1, self.block_ms, pending=False)
        for entry in entries:
            await self._guarded(entry)
        pending, lag = await self.queue.backlog()
        PENDING.set(pending)
        LAG.set(lag)
        return len(entries)

    async def _guarded(self, entry: Entry) -> None:
        """Process one entry; only a dependency outage (RagmeshError) propagates."""
        try:
            await self.process(entry)
        except RagmeshError:
            raise
        except Exception as e:
            log.exception("document %s failed unexpectedly", entry.document.document_id)
            DOCUMENTS.labels("failed").inc()
            await self._fail(
                entry, f"{entry.document.document_id}: internal error ({type(e).__name__})"
            )

    async def _fail(self, entry: Entry, error: str) -> None:
        if entry.job_id:
            await self.queue.finish(entry, False, 0, error)
        else:
            await self.queue.discard(entry)

    async def process(self, entry: Entry) -> None:
        """Ingest one document; raises RagmeshError (not InvalidArgument) to retry later.

        It runs under the Ingest call's request id, in its trace (``ingest.document`` span).
        """
        attributes: dict[str, str | int] = {
            "ragmesh.job_id": entry.job_id,
            "ragmesh.document_id": entry.document.document_id,
            "ragmesh.deliveries": entry.deliveries,
        }
        with tracing.resume(entry.trace, "ingest.document", attributes):
            await self._process(entry)

    async def _process(self, entry: Entry) -> None:
        doc = entry.document
        if entry.problem:
            DOCUMENTS.labels("failed").inc()
            log.warning("%s: failed and acknowledged", entry.problem)
            await self._fail(entry, entry.problem)
            return
        if entry.deliveries > self.settings.max_deliveries:
            DOCUMENTS.labels("failed").inc()
            await self.queue.finish(
                entry, False, 0, f"{doc.document_id}: gave up after {entry.deliveries} deliveries"
            )
            return
        await self.queue.start(entry.job_id)
        if entry.delete:
            await self._delete(entry)
            return
        try:
            parsed = parse(doc.content, doc.media_type) if doc.content else None
        except Unreadable as e:
            DOCUMENTS.labels("failed").inc()
            log.warning("document %s unreadable: %s", doc.document_id, e)
            await self.queue.finish(entry, False, 0, f"{doc.document_id}: {e}")
            return
        pages = parsed.pages if parsed is not None else (Page(0, doc.text),)
        title = doc.title
        if parsed is not None and not title:  # the file's own title, else its name
            title = parsed.title or PurePosixPath(doc.source or doc.document_id).stem
        about = summary(next((p.text for p in pages if p.text.strip()), ""))
        metadata = {
            k: v for k, v in (("title", title), ("source", doc.source), ("summary", about)) if v
        }
        metadata.update(doc.metadata)
        pieces: list[TextChunk] = []
        page_of: list[str] = []  # the page of each piece ("" without pages)
        for page in pages:  # a PDF's pages are chunked apart: a chunk is on one page
            for c in chunk("", page.text, self.settings.chunk_chars, self.settings.overlap_chars):
                index = len(pieces)
                pieces.append(TextChunk(chunk_id(doc.document_id, index), index, c.text))
                page_of.append(str(page.number) if page.number else "")
        version = 0  # the index version this document's last write reached
        try:
            step = self.settings.embed_batch
            for start in range(0, len(pieces), step):
                batch = pieces[start : start + step]
                embedded = await self.embedder.embed(
                    [in_context(title, about, c.text) for c in batch], Purpose.DOCUMENT
                )
                version = await self.retriever.upsert(
                    entry.tenant,
                    [
                        ChunkRecord(
                            c.chunk_id,
                            doc.document_id,
                            c.text,
                            {**metadata, "page": page_of[c.index]}
                            if page_of[c.index]
                            else metadata,
                            v,
                        )
                        for c, v in zip(batch, embedded.vectors, strict=True)
                    ],
                    embedded.model,
                )
            previous = await self.queue.previous_chunks(entry.tenant, doc.document_id)
            if previous > len(pieces):  # the document shrank: drop its old tail
                stale = [chunk_id(doc.document_id, i) for i in range(len(pieces), previous)]
                _, version = await self.retriever.delete(entry.tenant, chunk_ids=stale)
            await self.queue.set_chunks(entry.tenant, doc.document_id, len(pieces))
        except (InvalidArgument, ModelMismatch) as e:
            DOCUMENTS.labels("failed").inc()
            log.warning("document %s rejected: %s", doc.document_id, e)
            await self.queue.finish(entry, False, len(pieces), f"{doc.document_id}: {e}")
            return
        CHUNKS.inc(len(pieces))
        DOCUMENTS.labels("done").inc()
        await self.queue.finish(entry, True, len(pieces), index_version=version)

    async def _delete(self, entry: Entry) -> None:
        """Remove the tenant's chunks of one document; the job counts the chunks removed."""
        document_id = entry.document.document_id
        removed, version = await self.retriever.delete(entry.tenant, document_ids=[document_id])
        await self.queue.set_chunks(entry.tenant, document_id, 0)
        DELETED.inc(removed)
        DOCUMENTS.labels("deleted").inc()
        log.info("document %s deleted: %d chunks", document_id, removed)
        await self.queue.finish(entry, True, removed, index_version=version)
