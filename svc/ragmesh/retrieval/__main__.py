"""Run the retrieval service: ``python -m ragmesh.retrieval``."""

from __future__ import annotations

import asyncio

from ragmesh.kit import config, cpus
from ragmesh.kit.server import ServiceSpec, configure_telemetry, run
from ragmesh.retrieval.service import RetrievalService
from ragmesh.retrieval.servicer import SERVICE_NAME, register


def build(service: RetrievalService) -> ServiceSpec:
    """The retrieval service as a host plug-in (used by ``__main__`` and by tests)."""
    return ServiceSpec(
        name="retrieval",
        service_names=(SERVICE_NAME,),
        register=register(service),
        load=service.open,
        close=service.close,
        health=service.health,
    )


def main() -> None:
    settings = config.load()
    configure_telemetry(settings.server, "retrieval")
    cpus.size_pools(settings.server.compute_threads, "faiss")
    asyncio.run(run(settings.server, build(RetrievalService(settings.retrieval))))


if __name__ == "__main__":
    main()
