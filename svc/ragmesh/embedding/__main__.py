"""Run the embedding service: ``python -m ragmesh.embedding``."""

from __future__ import annotations

import asyncio

from ragmesh.embedding.service import EmbeddingService
from ragmesh.embedding.servicer import SERVICE_NAME, register
from ragmesh.kit import config, cpus
from ragmesh.kit.server import ServiceSpec, configure_telemetry, run


def build(service: EmbeddingService) -> ServiceSpec:
    """The embedding service as a host plug-in (used by ``__main__`` and by tests)."""

    async def load() -> None:
        await asyncio.to_thread(service.load)
        service.start()

    return ServiceSpec(
        name="embedding",
        service_names=(SERVICE_NAME,),
        register=register(service),
        load=load,
        close=service.close,
        health=service.health,
    )


def main() -> None:
    settings = config.load()
    configure_telemetry(settings.server, "embedding")
    cpus.size_pools(settings.server.compute_threads, "torch")
    asyncio.run(run(settings.server, build(EmbeddingService(settings.embedding))))


if __name__ == "__main__":
    main()
