"""Run an ingest worker: ``python -m ragmesh.ingest``.

The worker has no API of its own; it serves gRPC health (SERVING once it joined the consumer
group) and metrics so Kubernetes probes and Prometheus treat it like every other service.
"""

from __future__ import annotations

import asyncio
import os
import socket

from ragmesh.ingest.worker import IngestWorker
from ragmesh.kit import config
from ragmesh.kit.channels import open_channel
from ragmesh.kit.clients import EmbeddingClient, RetrievalClient
from ragmesh.kit.jobqueue import JobQueue, connect
from ragmesh.kit.server import ServiceSpec, configure_telemetry, run


def build(worker: IngestWorker) -> ServiceSpec:
    """The worker as a host plug-in: health reports SERVING once consuming, and
    NOT_SERVING if the worker's loop ever ends on its own (an unexpected error)."""
    stop = asyncio.Event()
    task: list[asyncio.Task[None]] = []

    async def load() -> None:
        task.append(asyncio.get_running_loop().create_task(worker.run(stop)))
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait((task[0], ready), return_when=asyncio.FIRST_COMPLETED)
        if not worker.ready.is_set():  # the loop failed before joining the group
            ready.cancel()
            task[0].result()

    async def close() -> None:
        stop.set()
        if task:  # a loop that already failed was logged by the host's watch
            await asyncio.gather(task[0], return_exceptions=True)

    async def watch() -> None:
        await task[0]

    return ServiceSpec(
        name="ingest",
        service_names=(),
        register=lambda s: None,
        load=load,
        close=close,
        watch=watch,
    )


def main() -> None:
    settings = config.load()
    settings.peers.require("embedding_addr", "retrieval_addr", "redis_url")
    configure_telemetry(settings.server, "ingest")
    consumer = settings.ingest.consumer or f"{socket.gethostname()}-{os.getpid()}"

    async def serve() -> None:
        p = settings.peers
        embedding = open_channel(p.embedding_addr, default_timeout=p.call_timeout)
        # Writes go to the writer when the replicas are readers (Kubernetes: retrieval-writer).
        retrieval = open_channel(p.retrieval_writer_addr, default_timeout=p.call_timeout)
        # Blocking stream reads wait up to 1 s; the socket timeout leaves room for them.
        redis = connect(p.redis_url, p.redis_timeout, read_timeout=p.redis_timeout + 2.0)
        queue = JobQueue(redis, settings.ingest.stream, settings.ingest.job_ttl)
        worker = IngestWorker(
            settings.ingest,
            queue,
            EmbeddingClient(embedding),
            RetrievalClient(retrieval),
            consumer,
        )
        try:
            await run(settings.server, build(worker))
        finally:
            await embedding.close(grace=None)
            await retrieval.close(grace=None)
            await redis.aclose()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
