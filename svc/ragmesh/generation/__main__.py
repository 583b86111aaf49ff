"""Run the generation service: ``python -m ragmesh.generation``."""

from __future__ import annotations

import asyncio

from ragmesh.generation.factory import create_engine
from ragmesh.generation.service import GenerationService
from ragmesh.generation.servicer import SERVICE_NAME, register
from ragmesh.kit import config, cpus
from ragmesh.kit.server import ServiceSpec, configure_telemetry, run


def build(service: GenerationService) -> ServiceSpec:
    """The generation service as a host plug-in (used by ``__main__`` and by tests)."""
    return ServiceSpec(
        name="generation",
        service_names=(SERVICE_NAME,),
        register=register(service),
        load=service.engine.load,
        close=service.engine.close,
        health=service.engine.health,
    )


def main() -> None:
    settings = config.load()
    configure_telemetry(settings.server, "generation")
    cpus.size_pools(settings.server.compute_threads, "torch")
    engine = create_engine(settings.generation, settings.embedding)
    service = GenerationService(
        settings.generation, engine, first_token_delay=settings.server.fault_delay
    )
    asyncio.run(run(settings.server, build(service)))


if __name__ == "__main__":
    main()
