"""Run the query service (the front door): ``python -m ragmesh.query``."""

from __future__ import annotations

import asyncio

from ragmesh.kit import config
from ragmesh.kit.channels import open_channel
from ragmesh.kit.clients import EmbeddingClient, GenerationClient, RetrievalClient
from ragmesh.kit.jobqueue import JobQueue, connect
from ragmesh.kit.server import ServiceSpec, configure_telemetry, run
from ragmesh.query import http
from ragmesh.query.budget import TokenBudget
from ragmesh.query.cache import RedisCache
from ragmesh.query.service import AskPipeline
from ragmesh.query.servicer import SERVICE_NAME, register


def build(settings: config.Settings, pipeline: AskPipeline, queue: JobQueue) -> ServiceSpec:
    """The query service as a host plug-in (used by ``__main__`` and by tests)."""

    async def load() -> None:
        return None  # nothing to load: peers are reached per call, Redis is best-effort

    return ServiceSpec(
        name="query",
        service_names=(SERVICE_NAME,),
        register=register(settings.query, pipeline, queue),
        load=load,
    )


def main() -> None:
    settings = config.load()
    p = settings.peers
    p.require("embedding_addr", "retrieval_addr", "generation_addr", "redis_url")
    configure_telemetry(settings.server, "query")

    async def serve() -> None:
        channels = [
            open_channel(p.embedding_addr, default_timeout=p.call_timeout),
            open_channel(p.retrieval_addr, default_timeout=p.call_timeout),
            open_channel(p.generation_addr, default_timeout=p.stream_timeout),
        ]
        redis = connect(p.redis_url, p.redis_timeout)
        cache = connect(p.cache_url, p.redis_timeout) if p.cache_url else redis
        pipeline = AskPipeline(
            settings.query,
            EmbeddingClient(channels[0]),
            RetrievalClient(channels[1]),
            GenerationClient(channels[2], p.stream_timeout),
            RedisCache(cache),
            first_token_delay=settings.server.fault_delay,
            budget=TokenBudget(cache, settings.query.tenant_tokens_per_minute),
        )
        queue = JobQueue(redis, settings.ingest.stream, settings.ingest.job_ttl)
        web = None
        if settings.query.http_port >= 0:  # the OpenAI-compatible API, beside gRPC
            web, _ = await http.start(settings.query, pipeline, settings.server.host)
        try:
            await run(settings.server, build(settings, pipeline, queue))
        finally:
            if web is not None:
                await web.cleanup()
            for channel in channels:
                await channel.close(grace=None)
            await redis.aclose()
            if cache is not redis:
                await cache.aclose()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
